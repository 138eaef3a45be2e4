"""Admission to the relay: resolved credentials, Bearer checks, Host/Origin checks, body limits.
Knows nothing of queues or frames; secrets never appear in its errors or logs.

Owns who may call which endpoint and how much they may send.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from aiohttp import web

from gateway.config.secrets import Secret, SecretError, resolve
from gateway.protocol.headers import AUTHORIZATION
from gateway.relay.config import RelayConfig, RelayConfigError
from gateway.relay.errors import (
    BodyTimeout,
    BodyTooLarge,
    ClientTokenRequired,
    ClientUnauthorized,
    GatewayForbidden,
    GatewayUnauthorized,
    HostNotAllowed,
    InvalidChannel,
    OriginNotAllowed,
)
from gateway.relay.exchange import RequestHead

_CHANNEL: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_LOOPBACK_ORIGIN: Final = re.compile(r"https?://(?:127\.0\.0\.1|localhost|\[::1\])(?::[0-9]{1,5})?", re.I)

READ_TIMEOUT: Final = web.AppKey("relay_read_timeout_s", float)
"""The app's `read_timeout_s`: how long `read_body` waits for a whole body."""
DEFAULT_READ_TIMEOUT_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class TunnelCredentials:
    """The resolved secrets of one tunnel."""

    gateway_key: Secret | None
    """None: the tunnel's gateways present access tokens only."""
    client_tokens: tuple[Secret, ...] = ()


Credentials = Mapping[str, TunnelCredentials]
"""Tunnel id -> its resolved secrets."""


def resolve_credentials(config: RelayConfig, *, source: str = "<relay config>") -> dict[str, TunnelCredentials]:
    """Resolve every tunnel's secret references (at start and on each reload); a failure names the key,
    never the value."""
    resolved: dict[str, TunnelCredentials] = {}
    for tunnel_id, spec in config.tunnels.items():
        key_path = f"$.tunnels.{tunnel_id}.gateway_key"
        try:
            gateway_key = None if spec.gateway_key is None else resolve(spec.gateway_key)
            tokens: list[Secret] = []
            for index, ref in enumerate(spec.client_tokens):
                key_path = f"$.tunnels.{tunnel_id}.client_tokens[{index}]"
                tokens.append(resolve(ref))
        except SecretError as exc:
            raise RelayConfigError(source, key_path, str(exc)) from None
        resolved[tunnel_id] = TunnelCredentials(gateway_key, tuple(tokens))
    return resolved


# --------------------------------------------------------------------------- Bearer


def bearer_token(request: RequestHead) -> str | None:
    """The token of the request's one `Authorization: Bearer <token>` header, or None."""
    values = request.headers.getall(AUTHORIZATION, [])
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _matches_any(presented: str | None, secrets: Iterable[Secret]) -> bool:
    """Constant-time comparison against every secret (no early exit on a match)."""
    wanted = (presented or "").encode()
    found = False
    for secret in secrets:
        found |= hmac.compare_digest(wanted, secret.reveal().encode())
    return found and presented is not None


_NO_KEY: Final = Secret(secrets.token_urlsafe(32), "no such tunnel")
"""Compared against when a request names an unknown tunnel (or one without a gateway key), so that
it costs what a known one does."""


class AccessTokenCheck(Protocol):
    """What the tunnel API asks of the relay's identity (gateway/relay/identity.py)."""

    def tunnels_for(self, token: str) -> frozenset[str] | None:
        """The tunnels a presented access token may use now; None when it is not a valid one."""
        ...


def check_gateway(
    request: RequestHead,
    tunnel_id: str,
    credentials: TunnelCredentials | None,
    tokens: AccessTokenCheck | None = None,
    *,
    metadata: bool = False,
) -> None:
    """The tunnel API's Bearer credential: the tunnel's gateway key, or (with `identity:`) an access
    token bound to the tunnel. Raises GatewayUnauthorized; an unknown tunnel (`credentials` None) is
    refused the same way, so tunnel ids cannot be enumerated. A valid access token for other tunnels
    gets GatewayForbidden (403) from the metadata endpoint, which the contract gives 403 for this,
    and GatewayUnauthorized (401) from poll and response, which it gives 401."""
    presented = bearer_token(request)
    key = credentials.gateway_key if credentials is not None else None
    if _matches_any(presented, (key or _NO_KEY,)) and key is not None:
        return
    if tokens is None or presented is None:
        raise GatewayUnauthorized()
    allowed = tokens.tunnels_for(presented)
    if allowed is None:
        raise GatewayUnauthorized()
    if credentials is not None and tunnel_id in allowed:
        return
    if metadata:
        raise GatewayForbidden()
    raise GatewayUnauthorized("this access token does not grant use of this tunnel")


def check_client(request: RequestHead, credentials: TunnelCredentials) -> bool:
    """The MCP endpoint's Bearer client token when the tunnel has any; raises ClientUnauthorized.

    Returns True when `Authorization` carried the relay's own credential, which
    must then be kept away from the MCP server.
    """
    if not credentials.client_tokens:
        return False
    if not _matches_any(bearer_token(request), credentials.client_tokens):
        raise ClientUnauthorized()
    return True


def check_client_header(request: RequestHead, credentials: TunnelCredentials, header: str) -> None:
    """The MCP endpoint's client token in a header of its own (`client_token_header`), the token as
    the header's one value; raises ClientTokenRequired. `Authorization` is left to the user."""
    if not credentials.client_tokens:
        return
    values = request.headers.getall(header, [])
    presented = values[0].strip() if len(values) == 1 and values[0].strip() else None
    if not _matches_any(presented, credentials.client_tokens):
        raise ClientTokenRequired()


# --------------------------------------------------------------------------- Host / Origin


def host_name(host_header: str) -> str:
    """`Host` header -> host name without port, lowercased (`[::1]:8780` -> `[::1]`)."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end != -1 else value
    name, sep, port = value.rpartition(":")
    return name if sep and port.isdigit() else value


HOSTS_KEPT: Final = 256
"""`Host` header values whose verdict `HostGuard` remembers; past that the memory starts over."""


class HostGuard:
    """DNS-rebinding protection for the MCP endpoint: `Host` and `Origin` allowlists."""

    def __init__(self, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]) -> None:
        hosts = {h.strip().lower() for h in allowed_hosts}
        self._any_host = "*" in hosts
        self._hosts = frozenset(hosts)
        self._origins = frozenset(o.strip() for o in allowed_origins)
        self._seen: dict[str, bool] = {}
        """`Host` values already judged (a client sends the same one on every request)."""

    @property
    def any_host(self) -> bool:
        """`allowed_hosts: ['*']`: the `Host` header is not checked (so it says nothing trustworthy)."""
        return self._any_host

    def host_allowed(self, host_header: str | None) -> bool:
        if self._any_host:
            return True
        if host_header is None:
            return False
        allowed = self._seen.get(host_header)
        if allowed is None:
            allowed = host_name(host_header) in self._hosts
            if len(self._seen) >= HOSTS_KEPT:
                self._seen.clear()
            self._seen[host_header] = allowed
        return allowed

    def origin_allowed(self, origin: str | None) -> bool:
        if origin is None:
            return True
        return origin in self._origins or _LOOPBACK_ORIGIN.fullmatch(origin) is not None

    def check(self, request: RequestHead) -> None:
        if not self.host_allowed(request.headers.get("Host")):
            raise HostNotAllowed()
        origins = request.headers.getall("Origin", [])
        if len(origins) > 1 or not self.origin_allowed(origins[0] if origins else None):
            raise OriginNotAllowed()


# --------------------------------------------------------------------------- channels and bodies


def check_channel(name: str, *, param: str = "channel") -> str:
    """A channel name as the contract allows it (`^[a-z0-9][a-z0-9_-]{0,63}$`); InvalidChannel otherwise."""
    if _CHANNEL.fullmatch(name) is None:
        raise InvalidChannel(param=param)
    return name


def too_large(limit: int) -> BodyTooLarge:
    """The refusal of a body past `limit` bytes (the same words from every server of the relay)."""
    return BodyTooLarge(f"the request body exceeds the relay's limit of {limit} bytes")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, or BodyTooLarge as soon as it is known to exceed `limit`, or
    BodyTimeout when it takes longer than the app's `read_timeout_s` to arrive.

    A body without a Content-Length is read in pieces and refused as soon as it grows past
    `limit` (which may be below the app's `client_max_size`, as the token endpoint's is).
    """
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    if request.content_length is not None and request.content.is_eof():
        return await request.read()  # all of it has arrived: nothing to wait for, no timer to arm
    try:
        async with asyncio.timeout(request.app.get(READ_TIMEOUT, DEFAULT_READ_TIMEOUT_S)):
            if request.content_length is not None:
                return await request.read()
            body = bytearray()
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > limit:
                    raise too_large(limit)
            return bytes(body)
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None
    except TimeoutError:
        raise BodyTimeout() from None
