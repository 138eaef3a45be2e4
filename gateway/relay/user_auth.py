"""Users' OAuth tokens checked at the edge (`user_auth:`), before a request may cross the tunnel.
Never logs or echoes a token; never queues a refused request; keeps public keys only.

Owns the check of a covered channel's `Authorization: Bearer <JWT>` (RFC 6750 §2.1; RFC 9068
style claims): the signature by one of the issuer's keys (its JWKS, RFC 7517, kept by `gateway.relay.jwks`:
fetched bounded, without redirects, through `jwks_proxy` or the environment's proxy, refreshed every
`jwks_cache_s` and for an unknown `kid`, never more often than `jwks_refresh_min_s`), `iss`, `aud`
(the channel's public MCP URL unless configured), `exp`/`nbf` with leeway, the required scopes; the
refusal's `WWW-Authenticate` challenge (RFC 6750 §3, `resource_metadata` of RFC 9728 §5.1); and the
audit line (who, channel, method, tool, outcome, duration; no payload). The key sets are built from the
configuration the relay started with; each request's `user_auth` spec is the one of the settings it
was admitted under (a reload may change it while its key set is one of these, `gateway.relay.reload`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any, Final

import jwt
import msgspec
from aiohttp import web

from gateway.config.proxy import choose_proxy
from gateway.protocol.oauth import quoted
from gateway.protocol.wire import Codec
from gateway.relay.config import RelayConfig, UserAuthSpec
from gateway.relay.errors import InsufficientScope, IssuerKeysUnavailable, UserUnauthorized
from gateway.relay.exchange import RequestHead
from gateway.relay.guard import bearer_token
from gateway.relay.jwks import HttpClient, IssuerKeys, JwksUnavailable, UrlSource, refreshed

audit_log = logging.getLogger("gateway.relay.audit")

FETCH_TIMEOUT_S: Final = 10.0
_PRINTABLE: Final = re.compile(r"[^\x21-\x7e]")


class UserAuth:
    """The relay's `user_auth` checks, per tunnel; owns the HTTP client its key sets are fetched with."""

    def __init__(self, config: RelayConfig, codec: Codec) -> None:
        self._codec = codec
        self._client = HttpClient()
        self._keys: dict[tuple[str, str | None], IssuerKeys] = {}
        """Key sets by `UserAuthSpec.key_set()`: tunnels that fetch one issuer's keys the same way share
        them and their fetches; another `jwks_proxy` is another fetcher."""
        for spec in (tunnel.user_auth for tunnel in config.tunnels.values()):
            if spec is not None and spec.key_set() not in self._keys:
                proxy = choose_proxy(spec.jwks_uri, spec.jwks_proxy)  # once: the environment is read at start
                source = UrlSource(spec.jwks_uri, self._client, timeout_s=FETCH_TIMEOUT_S, proxy=proxy)
                self._keys[spec.key_set()] = IssuerKeys(
                    spec.issuer, source, refresh_s=spec.jwks_cache_s, cooldown_s=spec.jwks_refresh_min_s
                )

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the key sets are fetched and refreshed while the relay serves.
        The tasks are owned here (aiohttp may run the two halves in different tasks)."""
        if not self._keys:
            yield
            return
        async with refreshed(self._client, self._keys.values()):
            yield

    async def check(self, request: RequestHead, spec: UserAuthSpec, resource: str, metadata: str) -> str:
        """The subject (`sub`) of the request's valid token for a channel `spec` covers; UserUnauthorized
        or InsufficientScope otherwise. `resource` is the channel's public MCP URL (the default
        audience), `metadata` where its protected resource metadata is (for the challenge)."""
        token = bearer_token(request)
        if token is None:
            challenge = f"Bearer resource_metadata={quoted(metadata)}" + _scope(spec)
            raise UserUnauthorized(challenge=challenge)
        claims = await self._verify(spec, token, spec.audience or [resource])
        if isinstance(claims, str):
            challenge = (
                f'Bearer error="invalid_token", error_description={quoted(claims)}, '
                f"resource_metadata={quoted(metadata)}"
            )
            raise UserUnauthorized(f"the bearer token was refused: {claims}", challenge=challenge)
        granted = _scopes_of(claims)
        if any(scope not in granted for scope in spec.required_scopes):
            challenge = f'Bearer error="insufficient_scope"{_scope(spec)}, resource_metadata={quoted(metadata)}'
            raise InsufficientScope(challenge=challenge, subject=str(claims["sub"]))
        return str(claims["sub"])

    async def _verify(self, spec: UserAuthSpec, token: str, audiences: list[str]) -> dict[str, Any] | str:
        """The token's claims, or why it is refused (words of ours, never the token's).
        IssuerKeysUnavailable when the issuer's keys cannot be had: then it can be neither."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return "the token is not a JWT"
        algorithm = header.get("alg")
        if algorithm not in spec.algorithms:
            return "the token's signing algorithm is not accepted"
        kid = header.get("kid")
        try:
            keys = await self._keys[spec.key_set()].lookup(kid if isinstance(kid, str) else None, algorithm)
        except JwksUnavailable:
            raise IssuerKeysUnavailable() from None
        if not keys:
            return "the token's signing key is not the issuer's"
        refusal = "the token's signature does not verify"
        for key in keys:  # one, unless the token names no `kid`: then the key that verifies it
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[algorithm],
                    issuer=spec.issuer,
                    audience=audiences,
                    leeway=spec.leeway_s,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                return _refusal(exc)
            return claims
        return refusal

    # ------------------------------------------------------------------ audit

    def describe(self, body: bytes | None) -> tuple[str, str]:
        """(method, tool) of a request body for the audit line; `-` where there is none."""
        if body is None:
            return "DELETE", "-"
        try:
            message = self._codec.message(body)
        except msgspec.MsgspecError:
            return "-", "-"
        method = message.method if isinstance(message.method, str) else "-"
        tool = None
        if method == "tools/call" and not isinstance(message.params, msgspec.UnsetType):
            tool = self._codec.string_member(message.params, "name")
        return _printable(method), _printable(tool or "-")


def audit(
    subject: str | None, tunnel_id: str, channel: str, method: str, tool: str, outcome: int, duration_s: float
) -> None:
    """One audit line: who, where, what, how it ended, how long; never a payload or a token."""
    audit_log.info(
        "audit subject=%s tunnel=%s channel=%s method=%s tool=%s outcome=%d duration_ms=%d",
        _printable(subject) if subject is not None else "-",
        tunnel_id,
        channel,
        method,
        tool,
        outcome,
        round(duration_s * 1000),
    )


def _refusal(exc: jwt.PyJWTError) -> str:
    """Why PyJWT refused a correctly signed token, in words of ours (RFC 6750 `error_description`)."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "the token has expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "the token is not valid yet"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "the token is not for this channel"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "the token is from another issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return "the token lacks a required claim"
    return "the token is not valid"


def _scope(spec: UserAuthSpec) -> str:
    return f", scope={quoted(' '.join(spec.required_scopes))}" if spec.required_scopes else ""


def _scopes_of(claims: dict[str, Any]) -> set[str]:
    """RFC 9068 §2.2.3 `scope` (space-separated), or the `scp` list some issuers use."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return set(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return {item for item in scp if isinstance(item, str)}
    if isinstance(scp, str):
        return set(scp.split())
    return set()


def _printable(value: str, limit: int = 200) -> str:
    """A value safe on one log line: no spaces or control characters, bounded."""
    return _PRINTABLE.sub("_", value[:limit]) or "-"
