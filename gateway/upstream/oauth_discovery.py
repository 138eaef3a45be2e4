"""OAuth discovery for one HTTP server: its protected resource metadata, and its authorization server's.
Follows no redirect, reads no body past its bound, knows nothing of the tunnel (the caller bounds the time).

Owns the fetches behind an `oauth_discovery` command: the server URL's RFC 9728 well-known URLs in
order, then the RFC 8414 / OpenID Connect documents of `authorization_servers[0]`, with the server's
egress settings (its configured headers to its own origin only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

import aiohttp

from gateway.protocol.errors import DiscoveryFailed, UpstreamError
from gateway.protocol.headers import ACCEPT, JSON
from gateway.protocol.oauth import (
    MAX_METADATA_BYTES,
    InvalidMetadata,
    MetadataCodec,
    authorization_server_metadata_urls,
    protected_resource_metadata_urls,
)
from gateway.upstream.http_errors import map_aiohttp_errors

log = logging.getLogger(__name__)

SERVER_METADATA_SHARE: Final = 0.5
"""The part of the time left that the authorization server's metadata may take: past it the answer
goes out with the protected resource metadata alone, before the command's deadline."""
_READ_CHUNK: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class _Fetched:
    """One well-known URL's answer: a document (`status` 200), or nothing usable and why (`problem`;
    None for a plain 'not here')."""

    status: int
    body: bytes = b""
    problem: DiscoveryFailed | None = None


class MetadataFetcher:
    """Discovery for one server, over the shared aiohttp session (which it does not own)."""

    def __init__(
        self,
        server: str,
        url: str,
        session: aiohttp.ClientSession,
        codec: MetadataCodec,
        *,
        ssl: ssl.SSLContext | bool,
        proxy_for: Callable[[str], str | None],
        headers: dict[str, str],
        max_bytes: int = MAX_METADATA_BYTES,
        request_timeout_s: float | None = None,
    ) -> None:
        self._server = server
        self._url = url
        self._http = session
        self._codec = codec
        self._ssl = ssl
        self._proxy_for = proxy_for
        self._headers = dict(headers)
        """The server's configured headers: sent to its own origin, never to the authorization server."""
        self._max = max_bytes
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, connect=session.timeout.connect, sock_connect=session.timeout.sock_connect
        )

    async def discover(self, deadline: float | None = None) -> bytes:
        """The `oauth_discovery_response` body: the server's protected resource metadata, with its first
        authorization server's metadata when that could be had in time (`deadline` is loop time).

        DiscoveryFailed (404 when no well-known URL had metadata) or UpstreamUnavailable otherwise."""
        body, servers = await self._resource_metadata()
        server_metadata = None
        if servers:
            server_metadata = await self._server_metadata_in_time(servers[0], deadline)
        return self._codec.answer(body, server_metadata)

    # ------------------------------------------------------------------ RFC 9728

    async def _resource_metadata(self) -> tuple[bytes, list[str]]:
        problem: DiscoveryFailed | None = None  # the first one; 404s only say "not here"
        for url in protected_resource_metadata_urls(self._url):
            fetched = await self._get(url, self._headers)
            if fetched.status != 200:
                problem = problem or fetched.problem
                if fetched.problem is None and fetched.status != 404:
                    problem = problem or self._failed(f"HTTP {fetched.status}")
                continue
            try:
                metadata = self._codec.protected_resource(fetched.body)
            except InvalidMetadata as exc:
                problem = problem or self._failed(f"invalid protected resource metadata ({exc})")
                continue
            return fetched.body, metadata.authorization_servers
        if problem is None:
            raise DiscoveryFailed(
                self._server,
                "no protected resource metadata at its well-known URLs",
                status=404,
                kind="http_status",
            )
        raise problem

    # ------------------------------------------------------------------ RFC 8414

    async def _server_metadata_in_time(self, issuer: str, deadline: float | None) -> bytes | None:
        """The authorization server's metadata, or None (logged) when it cannot be had in its share of
        the time left: the client can still fetch it itself, so the answer goes out without it."""
        budget = None
        if deadline is not None:
            budget = max(0.0, (deadline - asyncio.get_running_loop().time()) * SERVER_METADATA_SHARE)
        try:
            async with asyncio.timeout(budget):
                return await self._server_metadata(issuer)
        except TimeoutError:
            log.warning(
                "server %r: its authorization server's metadata did not come in time; answered without it", self._server
            )
        except UpstreamError as exc:
            log.warning(
                "server %r: its authorization server's metadata could not be fetched (%s); answered without it",
                self._server,
                exc,
            )
        return None

    async def _server_metadata(self, issuer: str) -> bytes | None:
        for url in authorization_server_metadata_urls(issuer):
            fetched = await self._get(url, {})
            if fetched.status != 200:
                continue
            try:
                metadata = self._codec.authorization_server(fetched.body)
            except InvalidMetadata:
                continue
            if metadata.issuer != issuer:
                # RFC 8414 §3.3 says not to use it; enterprise identity providers (a tenant template in
                # the issuer, a trailing slash) publish such documents, and clients cope: pass it on.
                log.warning(
                    "server %r: authorization server metadata names issuer %r, not the listed %r (accepted)",
                    self._server,
                    metadata.issuer,
                    issuer,
                )
            return fetched.body
        log.warning("server %r: no metadata at its authorization server's well-known URLs", self._server)
        return None

    # ------------------------------------------------------------------ HTTP

    async def _get(self, url: str, headers: dict[str, str]) -> _Fetched:
        """One GET, no redirect followed (a 3xx is refused: discovery may not be pointed elsewhere), the
        body read up to the bound (past it: refused)."""
        async with self._response(url, headers) as resp:
            if 300 <= resp.status < 400:
                return _Fetched(resp.status, problem=self._failed("a redirect, which discovery does not follow"))
            if resp.status != 200:
                return _Fetched(resp.status)
            if resp.content_length is not None and resp.content_length > self._max:
                return _Fetched(0, problem=self._too_large())
            body = bytearray()
            with map_aiohttp_errors(self._server):
                async for chunk in resp.content.iter_chunked(_READ_CHUNK):
                    body += chunk
                    if len(body) > self._max:
                        return _Fetched(0, problem=self._too_large())
            return _Fetched(resp.status, bytes(body))

    @contextlib.asynccontextmanager
    async def _response(self, url: str, headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientResponse]:
        if self._http.closed:
            raise DiscoveryFailed(self._server, "the gateway is stopping", kind="unknown")
        with map_aiohttp_errors(self._server):
            resp = await self._http.get(
                url,
                headers={**headers, ACCEPT: JSON},
                allow_redirects=False,
                ssl=self._ssl,
                proxy=self._proxy_for(url),
                timeout=self._timeout,
            )
        try:
            yield resp
        finally:
            resp.close()

    def _failed(self, why: str) -> DiscoveryFailed:
        return DiscoveryFailed(self._server, why)

    def _too_large(self) -> DiscoveryFailed:
        return DiscoveryFailed(
            self._server, f"a metadata document over {self._max} bytes", kind="response_body_too_large"
        )
