"""Users' OAuth tokens checked at the edge (`user_auth:`), before a request may cross the tunnel.
Never logs or echoes a token; never queues a refused request; keeps public keys only.

Owns the check of a covered channel's `Authorization: Bearer <JWT>` (RFC 6750 §2.1; RFC 9068
style claims): the signature by one of the issuer's keys (its JWKS, RFC 7517, fetched bounded and
without redirects, refreshed on a schedule and for an unknown `kid`, never more often than
`jwks_refresh_min_s`), `iss`, `aud` (the channel's
public MCP URL unless configured), `exp`/`nbf` with leeway, the required scopes; the refusal's
`WWW-Authenticate` challenge (RFC 6750 §3, `resource_metadata` of RFC 9728 §5.1); and the audit
line (who, channel, method, tool, outcome, duration; no payload).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import jwt
import msgspec
from aiohttp import web

from gateway.protocol.headers import ACCEPT, JSON
from gateway.protocol.oauth import quoted
from gateway.protocol.wire import Codec, JsonDecoder
from gateway.relay.config import RelayConfig, UserAuthSpec
from gateway.relay.errors import InsufficientScope, UserUnauthorized
from gateway.relay.guard import bearer_token

log = logging.getLogger("gateway.relay")
audit_log = logging.getLogger("gateway.relay.audit")

MAX_JWKS_BYTES: Final = 256 * 1024
FETCH_TIMEOUT_S: Final = 10.0
_PRINTABLE: Final = re.compile(r"[^\x21-\x7e]")


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    algorithm: str | None
    """The JWK's own `alg`, when it names one: then only tokens of that algorithm may use it."""
    jwk: jwt.PyJWK


class _Document(msgspec.Struct):
    keys: list[dict[str, Any]]


class IssuerKeys:
    """One issuer's public signing keys, from its JWKS URL."""

    def __init__(
        self, uri: str, session: Callable[[], aiohttp.ClientSession], cache_s: float, min_refresh_s: float
    ) -> None:
        self._uri = uri
        self._session = session
        self._cache_s = cache_s
        self._min_refresh_s = min_refresh_s
        self._keys: tuple[_Key, ...] = ()
        self._fetched_at = -math.inf
        self._tried_at = -math.inf
        self._lock = asyncio.Lock()
        self._decoder = JsonDecoder(_Document)

    async def find(self, kid: str | None, algorithm: str) -> _Key | None:
        """The key for a token's `kid` and `alg` (the one key that fits when the token names none)."""
        now = asyncio.get_running_loop().time()
        found = self._match(kid, algorithm)
        stale = now - self._fetched_at > self._cache_s
        if (found is None or stale) and now - self._tried_at >= self._min_refresh_s:
            async with self._lock:
                if self._tried_at < now:  # nobody refreshed while this caller waited
                    await self._refresh()
            found = self._match(kid, algorithm)
        return found

    def _match(self, kid: str | None, algorithm: str) -> _Key | None:
        fitting = [key for key in self._keys if key.algorithm in (None, algorithm)]
        if kid is not None:
            return next((key for key in fitting if key.kid == kid), None)
        return fitting[0] if len(fitting) == 1 else None

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        self._tried_at = loop.time()
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                document = await self._fetch()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, msgspec.MsgspecError) as exc:
            host = self._uri.split("/")[2] if self._uri.count("/") >= 2 else "?"
            log.warning("user_auth: the key set at %s could not be had (%s); keeping %d keys",
                        host, type(exc).__name__, len(self._keys))
            return
        keys = []
        for member in document.keys:
            if member.get("kty") == "oct" or "d" in member:
                continue  # public keys only: a shared secret or a private key is no issuer's to publish
            try:
                jwk = jwt.PyJWK(member)
            except jwt.PyJWTError:
                continue
            alg = member.get("alg")
            keys.append(_Key(member.get("kid"), alg if isinstance(alg, str) else None, jwk))
        self._keys, self._fetched_at = tuple(keys), loop.time()

    async def _fetch(self) -> _Document:
        async with self._session().get(
            self._uri, headers={ACCEPT: JSON}, allow_redirects=False, timeout=aiohttp.ClientTimeout(FETCH_TIMEOUT_S)
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > MAX_JWKS_BYTES:
                raise ValueError("too large")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(16 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("too large")
        return self._decoder.decode(bytes(body))


class UserAuth:
    """The relay's `user_auth` checks, per tunnel; owns the HTTP client its key sets are fetched with."""

    def __init__(self, config: RelayConfig, codec: Codec) -> None:
        self._config = config
        self._codec = codec
        self._http: aiohttp.ClientSession | None = None
        self._keys: dict[str, IssuerKeys] = {}
        for spec in (tunnel.user_auth for tunnel in config.tunnels.values()):
            if spec is not None and spec.jwks_uri not in self._keys:
                self._keys[spec.jwks_uri] = IssuerKeys(
                    spec.jwks_uri, self._session, spec.jwks_cache_s, spec.jwks_refresh_min_s
                )

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the key-set client closes with the app."""
        yield
        if self._http is not None:
            await self._http.close()

    def covers(self, tunnel_id: str, channel: str) -> bool:
        spec = self._config.tunnels[tunnel_id].user_auth
        return spec is not None and spec.covers(channel)

    async def check(self, request: web.Request, tunnel_id: str, channel: str, resource: str, metadata: str) -> str:
        """The subject (`sub`) of the request's valid token for this covered channel; UserUnauthorized
        or InsufficientScope otherwise. `resource` is the channel's public MCP URL (the default
        audience), `metadata` where its protected resource metadata is (for the challenge)."""
        spec = self._config.tunnels[tunnel_id].user_auth
        assert spec is not None
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
        """The token's claims, or why it is refused (words of ours, never the token's)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return "the token is not a JWT"
        algorithm = header.get("alg")
        if algorithm not in spec.algorithms:
            return "the token's signing algorithm is not accepted"
        kid = header.get("kid")
        key = await self._keys[spec.jwks_uri].find(kid if isinstance(kid, str) else None, algorithm)
        if key is None:
            return "the token's signing key is not the issuer's"
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[algorithm],
                issuer=spec.issuer,
                audience=audiences,
                leeway=spec.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            return "the token has expired"
        except jwt.ImmatureSignatureError:
            return "the token is not valid yet"
        except jwt.InvalidAudienceError:
            return "the token is not for this channel"
        except jwt.InvalidIssuerError:
            return "the token is from another issuer"
        except jwt.MissingRequiredClaimError:
            return "the token lacks a required claim"
        except jwt.InvalidSignatureError:
            return "the token's signature does not verify"
        except jwt.PyJWTError:
            return "the token is not valid"
        return claims

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
