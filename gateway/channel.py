"""A channel as its clients see it: one coherent MCP server of either era.

Owns what the gateway answers itself on a server's behalf (the legacy
`initialize` handshake and its session ids, `server/discover` for a
handshake-era server, `ping`), and the per-request bridging between the
client's era and the server's. Everything else runs on the upstream.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Final

import msgspec
from msgspec import UNSET, Raw

from gateway.eras import EMPTY_OBJECT, Bridge
from gateway.errors import UpstreamProtocolError
from gateway.upstream.base import Call, Era, Frame, Reply, Upstream, UpstreamInfo
from gateway.wire import Headers, JsonRpcMessage, header_value, strip_hop_by_hop

log = logging.getLogger(__name__)

SESSION_HEADER: Final = "Mcp-Session-Id"
JSON: Final[Headers] = {"Content-Type": ["application/json"]}

_TRANSPORT_OWNED: Final = frozenset({"content-type", "accept", "content-length", "host"})
"""Request headers a transport always sets itself."""
_ERA_HEADERS: Final = frozenset({"mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name"})
"""Request headers that describe the client's era; dropped when the gateway bridges eras."""


class LocalSessions:
    """Sessions the gateway issued to handshake-era clients, with each client's capabilities.

    Bounded: the oldest session is forgotten first. A forgotten or unknown
    session still works (its capabilities are taken as empty).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._sessions: OrderedDict[str, Raw] = OrderedDict()

    def open(self, capabilities: Raw) -> str:
        session_id = secrets.token_urlsafe(24)
        self._sessions[session_id] = capabilities
        if len(self._sessions) > self._limit:
            self._sessions.popitem(last=False)
        return session_id

    def capabilities(self, session_id: str | None) -> Raw:
        if session_id is None:
            return EMPTY_OBJECT
        return self._sessions.get(session_id, EMPTY_OBJECT)

    def close(self, session_id: str | None) -> bool:
        return session_id is not None and self._sessions.pop(session_id, None) is not None


class Channel:
    """One channel fronting one upstream server."""

    def __init__(self, name: str, upstream: Upstream, bridge: Bridge) -> None:
        self.name = name
        self.upstream = upstream
        self._bridge = bridge
        self._codec = bridge.codec
        self._sessions = LocalSessions()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until no call is running on this channel (a reload retires it after that)."""
        await self._idle.wait()

    async def run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]:
        """Serve one client message: yields Notify frames, then one Reply."""
        self._active += 1
        self._idle.clear()
        try:
            async for frame in self._run(message, headers):
                yield frame
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]:
        info = await self.upstream.wait_info()
        if message.is_response:
            # A client's answer to a request the server sent it during a call.
            passthrough = header_value(headers, SESSION_HEADER) is not None and self.upstream.holds_sessions
            yield await self.upstream.respond(message, self._forwarded_headers(headers, True), not passthrough)
            return
        assert message.method is not UNSET
        method, params = message.method, message.params
        client = self._bridge.client_era(params, headers)
        passthrough = client is info.era
        if message.is_request:
            assert message.id is not UNSET
            local = self._local_answer(method, params, headers, client, info)
            if local is not None:
                body, extra = local
                yield Reply(200, self._codec.result(message.id, body), {**JSON, **extra})
                return
        elif method == "notifications/initialized" and not (passthrough and self.upstream.holds_sessions):
            yield Reply(202)  # the gateway answered this client's initialize itself
            return
        if client is Era.LEGACY and info.era is Era.MODERN:
            session = header_value(headers, SESSION_HEADER)
            params = self._bridge.modern_params(params, self._sessions.capabilities(session), self._bridge.client_info)
        elif client is Era.MODERN and info.era is Era.LEGACY:
            params = self._bridge.legacy_params(params)
        call = Call(
            method,
            message.id if message.id is not UNSET else None,
            params,
            self._forwarded_headers(headers, passthrough),
            own_session=not (passthrough and self.upstream.holds_sessions),
        )
        async for frame in self.upstream.exchange(call):
            if isinstance(frame, Reply) and not passthrough and frame.body:
                frame = self._translate(method, frame, client, info)
            yield frame

    async def end_session(self, headers: Headers) -> Reply:
        """`session_termination`: close a session the server holds; forget one the gateway issued."""
        self._sessions.close(header_value(headers, SESSION_HEADER))
        return await self.upstream.end_session(headers)

    def _local_answer(
        self, method: str, params: Raw | msgspec.UnsetType, headers: Headers, client: Era, info: UpstreamInfo
    ) -> tuple[Raw, Headers] | None:
        """A result the gateway gives itself, with extra response headers; None to forward."""
        if client is Era.LEGACY:
            if method == "initialize" and not self.upstream.holds_sessions:
                version = self._bridge.requested_version(params)
                session = self._sessions.open(self._bridge.client_capabilities(params))
                return self._bridge.initialize_result(info, version), {SESSION_HEADER: [session]}
            if method in ("ping", "logging/setLevel") and info.era is Era.MODERN:
                return EMPTY_OBJECT, {}  # removed in 2026-07-28: the gateway answers for the server
        elif method == "server/discover" and info.era is Era.LEGACY:
            return self._bridge.discover_result(info), {}
        return None

    def _forwarded_headers(self, headers: Headers, passthrough: bool) -> Headers:
        dropped = _TRANSPORT_OWNED if passthrough else _TRANSPORT_OWNED | _ERA_HEADERS
        return {k: v for k, v in strip_hop_by_hop(headers).items() if k.lower() not in dropped}

    def _translate(self, method: str, reply: Reply, client: Era, info: UpstreamInfo) -> Reply:
        """Make a server's result readable by a client of the other era."""
        try:
            answer = self._codec.message(reply.body)
        except msgspec.MsgspecError:
            raise UpstreamProtocolError(self.upstream.name, "malformed_json") from None
        if answer.result is UNSET or answer.id is UNSET:
            return reply
        if client is Era.MODERN:
            result = self._bridge.modern_result(method, answer.result, info.server_info)
        else:
            result = self._bridge.legacy_result(answer.result)
        return Reply(reply.status, self._codec.result(answer.id, result), reply.headers)
