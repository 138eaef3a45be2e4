"""The relay's OAuth discovery: each channel's protected resource metadata, and challenges that point at it.
Takes public URLs only from `public_url` or a checked `Host`; queues nothing itself (the backend does).

Owns `/.well-known/oauth-protected-resource/v1/mcp/{tunnel}[/{channel}]` (RFC 9728 §3.1 applied to
the MCP URL `/v1/mcp/{tunnel}[/{channel}]`): an `oauth_discovery` command queued to the tunnel's
gateway, its answer served with `resource` set to the channel's public URL, cached briefly (bounded,
per channel, one command in flight per channel); and `resource_metadata` in a server's
`WWW-Authenticate` pointed at that URL. `public_url`, the Host allowlist and client tokens come from
the settings a request was admitted under (`gateway.relay.settings`); `oauth_discovery:` is fixed at start.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

import msgspec
from aiohttp import web
from msgspec import UNSET

from gateway.protocol.headers import AUTHORIZATION, JSON, VERSION_HEADER, WWW_AUTHENTICATE
from gateway.protocol.oauth import PRM_WELL_KNOWN, InvalidMetadata, MetadataCodec, quoted, with_resource_metadata
from gateway.protocol.wire import (
    COMMAND_OAUTH_DISCOVERY,
    RESP_OAUTH_DISCOVERY,
    Codec,
    Headers,
    TunnelResponsePayload,
)
from gateway.relay.deadlines import Deadlines
from gateway.relay.errors import (
    ClientNotSeen,
    HostNotAllowed,
    MetadataNotFound,
    MetadataUnavailable,
    PublicUrlRequired,
    RelayError,
    TunnelNotFound,
)
from gateway.relay.exchange import RequestHead
from gateway.relay.guard import check_channel, check_client, check_client_header
from gateway.relay.ops import RelayMetrics
from gateway.relay.queue import QueueBackend, new_command, terminal_frame
from gateway.relay.settings import LiveSettings, Settings

DEFAULT_CHANNEL: Final = "main"
NOT_FOUND_TTL_S: Final = 10.0
"""How long a channel without metadata is remembered at most (it may get some soon)."""
CHALLENGE: Final = WWW_AUTHENTICATE.lower()
_HOST: Final = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")
CORS: Final = {"Access-Control-Allow-Origin": "*"}
"""Metadata is public (RFC 9728 §3): browser-based clients may read it from any origin."""


def mcp_path(tunnel_id: str, channel: str | None) -> str:
    """The MCP endpoint's path: `/v1/mcp/{tunnel}` for the short form, `/v1/mcp/{tunnel}/{channel}`."""
    path = f"/v1/mcp/{quote(tunnel_id, safe='')}"
    return path if channel is None else f"{path}/{channel}"


@dataclass(frozen=True, slots=True)
class _Known:
    """A channel's discovery answer as the gateway gave it (the `resp_json` bytes, copied)."""

    until: float
    body: bytes | None
    """None: the channel's server has no metadata (MetadataNotFound)."""


class _Answers:
    """Discovery answers by (tunnel, channel): bounded, least recently used first out."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._known: collections.OrderedDict[tuple[str, str], _Known] = collections.OrderedDict()

    def get(self, key: tuple[str, str], now: float) -> _Known | None:
        known = self._known.get(key)
        if known is None:
            return None
        if known.until <= now:
            del self._known[key]
            return None
        self._known.move_to_end(key)
        return known

    def put(self, key: tuple[str, str], known: _Known) -> None:
        self._known[key] = known
        self._known.move_to_end(key)
        while len(self._known) > self._max:
            self._known.popitem(last=False)

    def keep(self, tunnel_ids: Collection[str]) -> None:
        """Forget the answers of every other tunnel."""
        for key in [key for key in self._known if key[0] not in tunnel_ids]:
            del self._known[key]


class Discovery:
    """The metadata endpoints of one relay, and the rewriting of challenges for its front door."""

    def __init__(self, live: LiveSettings, backend: QueueBackend, codec: Codec, metrics: RelayMetrics) -> None:
        self._live = live
        self._spec = live.current.config.oauth_discovery  # fixed at start (gateway.relay.reload)
        self._backend = backend
        self._codec = codec
        self._metadata = MetadataCodec(codec)
        self._metrics = metrics
        self._answers = _Answers(self._spec.cache_max_entries)
        self._deadlines = Deadlines()
        self._flights: dict[tuple[str, str], asyncio.Task[_Known]] = {}
        """One `oauth_discovery` command per channel at a time; every request for it waits on it."""

    def routes(self) -> list[web.RouteDef]:
        routes: list[web.RouteDef] = []
        for path in (f"{PRM_WELL_KNOWN}/v1/mcp/{{tunnel_id}}", f"{PRM_WELL_KNOWN}/v1/mcp/{{tunnel_id}}/{{channel}}"):
            routes += [web.get(path, self.metadata), web.options(path, self.preflight)]
        return routes

    def serve_tunnels(self, tunnel_ids: Collection[str]) -> None:
        """A reload: what a removed tunnel's gateway answered is forgotten (were the tunnel added again,
        another gateway may serve it)."""
        self._answers.keep(tunnel_ids)

    async def close(self) -> None:
        """Cancel the discoveries still waiting for a gateway (the relay is stopping)."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)

    # ----------------------------------------------------------------------- public URLs

    def public_base(self, settings: Settings, request: RequestHead) -> str:
        """`public_url`, else `http://` + the `Host` the allowlist checked; PublicUrlRequired otherwise."""
        if settings.public is not None:
            return settings.public
        host = request.headers.get("Host", "")
        hosts = settings.hosts
        if hosts.any_host or not _HOST.fullmatch(host) or not hosts.host_allowed(host):
            raise PublicUrlRequired()
        return f"http://{host}"

    def metadata_url(self, settings: Settings, request: RequestHead, tunnel_id: str, channel: str | None) -> str:
        """Where clients fetch the channel's metadata (RFC 9728 §3.1: the suffix before the MCP path)."""
        return self.public_base(settings, request) + PRM_WELL_KNOWN + mcp_path(tunnel_id, channel)

    # ----------------------------------------------------------------------- handlers

    async def preflight(self, request: web.Request) -> web.Response:
        """CORS preflight of a metadata request (the MCP SDK sends `MCP-Protocol-Version` with it)."""
        return web.Response(
            status=204,
            headers={
                **CORS,
                "Access-Control-Allow-Methods": "GET, OPTIONS",
                "Access-Control-Allow-Headers": VERSION_HEADER,
                "Access-Control-Max-Age": "600",
            },
        )

    async def metadata(self, request: web.Request) -> web.Response:
        """A channel's protected resource metadata (RFC 9728 §3.2), `resource` the URL clients use."""
        settings = self._live.current
        if not settings.hosts.host_allowed(request.headers.get("Host")):
            raise HostNotAllowed()
        tunnel_id = request.match_info["tunnel_id"]
        credentials = settings.credentials.get(tunnel_id)
        if credentials is None:
            raise TunnelNotFound()
        segment = request.match_info.get("channel")
        channel = check_channel(segment or DEFAULT_CHANNEL)
        header = settings.config.tunnels[tunnel_id].client_token_header
        if header.lower() == AUTHORIZATION.lower():
            check_client(request, credentials)
        else:
            check_client_header(request, credentials, header)
        resource = self.public_base(settings, request) + mcp_path(tunnel_id, segment)
        known = await self._known(tunnel_id, channel)
        if known.body is None:
            raise MetadataNotFound()
        try:
            body = self._metadata.served(known.body, resource)
        except InvalidMetadata:
            raise MetadataUnavailable() from None
        max_age = int(max(0.0, known.until - asyncio.get_running_loop().time()))
        headers = {**CORS, "Cache-Control": f"max-age={max_age}"}
        return web.Response(body=body, content_type=JSON, headers=headers)

    # ----------------------------------------------------------------------- asking the gateway

    async def _known(self, tunnel_id: str, channel: str) -> _Known:
        key = (tunnel_id, channel)
        known = self._answers.get(key, asyncio.get_running_loop().time())
        if known is not None:
            return known
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_task(self._ask(tunnel_id, channel), name="oauth-discovery")
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        return await asyncio.shield(flight)  # a caller that leaves does not cancel the others' answer

    def _landed(self, key: tuple[str, str], flight: asyncio.Task[_Known]) -> None:
        """A discovery ended: forget it; its failure was its waiters' to see (retrieved here in case
        every waiter left before it ended)."""
        self._flights.pop(key, None)
        if not flight.cancelled():
            flight.exception()

    async def _ask(self, tunnel_id: str, channel: str) -> _Known:
        """One `oauth_discovery` command and its answer, remembered as the answer says."""
        if not await self._backend.client_seen(tunnel_id):
            raise ClientNotSeen()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._spec.timeout_s
        command = new_command(command_type=COMMAND_OAUTH_DISCOVERY, channel=channel, headers={}, deadline=deadline)
        await self._backend.enqueue(tunnel_id, command)
        try:
            with self._metrics.caller_waiting(tunnel_id):
                frame = await terminal_frame(self._backend, self._deadlines, tunnel_id, command.request_id, deadline)
        finally:
            await self._backend.discard(tunnel_id, command.request_id)
        known = self._judge(frame, loop.time())
        if known.until > loop.time() and tunnel_id in self._live.current.credentials:  # not removed meanwhile
            self._answers.put((tunnel_id, channel), known)
        return known

    def _judge(self, frame: TunnelResponsePayload, now: float) -> _Known:
        """What a gateway's answer means for clients: metadata (cached `cache_ttl_s`), none (cached
        briefly), or a failure (raised, not cached)."""
        if frame.resp_type != RESP_OAUTH_DISCOVERY:
            raise MetadataUnavailable()
        if frame.resp_code in (400, 404):  # a channel without an HTTP server, or a server without metadata
            return _Known(now + min(self._spec.cache_ttl_s, NOT_FOUND_TTL_S), None)
        if frame.resp_code != 200 or frame.resp_json is UNSET:
            raise MetadataUnavailable()
        body = bytes(frame.resp_json)  # a copy: the frame's buffer is not ours to keep
        try:
            self._metadata.served(body, "https://check.invalid")
        except InvalidMetadata:
            raise MetadataUnavailable() from None
        return _Known(now + self._spec.cache_ttl_s, body)

    # ----------------------------------------------------------------------- challenges

    def challenge(
        self,
        settings: Settings,
        request: RequestHead,
        tunnel_id: str,
        channel: str | None,
        frame: TunnelResponsePayload,
    ) -> TunnelResponsePayload:
        """A frame whose `WWW-Authenticate` names the relay's metadata URL for this channel in place of
        the private server's (RFC 9728 §5.1); every other header and challenge as it was. A value
        that cannot be parsed is replaced whole: it may name a private address."""
        headers = frame.resp_headers
        if headers is UNSET or not any(name.lower() == CHALLENGE for name in headers):
            return frame
        try:
            url: str | None = self.metadata_url(settings, request, tunnel_id, channel)
        except RelayError:
            url = None
        out: Headers = {}
        for name, values in headers.items():
            if name.lower() != CHALLENGE:
                out[name] = values
                continue
            out[name] = [_pointed(value, url) for value in values]
        return msgspec.structs.replace(frame, resp_headers=out)


def _pointed(value: str, url: str | None) -> str:
    if url is None:  # no public address to point at: keep no private one either
        rewritten = with_resource_metadata(value, "")
        return value if rewritten == value else "Bearer"
    rewritten = with_resource_metadata(value, url)
    return rewritten if rewritten is not None else f"Bearer resource_metadata={quoted(url)}"
