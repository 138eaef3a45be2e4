"""A channel as its clients see it: one coherent MCP server of either era.

Owns what the gateway answers itself on a server's behalf (the legacy
`initialize` handshake and its sealed session ids, 404 for an unknown or
ended one, `server/discover` for a handshake-era server, `ping`), and the
per-request bridging between the client's era and the server's. Everything
else runs on the upstream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.channels.mrtr import MAX_ROUNDS, Ask, Held, Rounds, rekeyed, retry_of, with_input_responses
from gateway.channels.router import NO_ROUTE, Route, Router
from gateway.channels.sessions import ClientSession, SessionStore
from gateway.observe.hooks import NOOP, Telemetry
from gateway.protocol.eras import EMPTY_OBJECT, Bridge
from gateway.protocol.errors import SessionNotFound, UpstreamProtocolError
from gateway.protocol.mcp import Call, Era, Frame, Notify, Reply, UpstreamInfo, abandon
from gateway.protocol.wire import Headers, JsonRpcMessage, header_value, strip_hop_by_hop
from gateway.upstream.base import Upstream

log = logging.getLogger(__name__)

SESSION_HEADER: Final = "Mcp-Session-Id"
JSON: Final[Headers] = {"Content-Type": ["application/json"]}

_TRANSPORT_OWNED: Final = frozenset({"content-type", "accept", "content-length", "host"})
"""Request headers a transport always sets itself."""
_ERA_HEADERS: Final = frozenset({"mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name"})
"""Request headers that describe the client's era; dropped when the gateway bridges eras."""


class Activity:
    """Calls running on a channel, so a reload can retire it once none is left."""

    def __init__(self) -> None:
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def track(self, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
        """`frames`, counted as one running call until they end."""
        self._running += 1
        self._idle.clear()
        try:
            async for frame in frames:
                yield frame
        finally:
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


async def scoped_logs(bridge: Bridge, least: int | None, frames: AsyncIterator[Frame]) -> AsyncIterator[Frame]:
    """A call's frames for a 2026-07-28 client: `notifications/message` only when its request asked
    for log messages (`io.modelcontextprotocol/logLevel` in `_meta`), at or above that level."""
    async for frame in frames:
        if isinstance(frame, Notify) and not bridge.log_wanted(frame.message, least):
            continue
        yield frame


def for_client(
    bridge: Bridge, message: JsonRpcMessage, headers: Headers, frames: AsyncIterator[Frame]
) -> AsyncIterator[Frame]:
    """`frames` as the client may receive them (2026-07-28 logging is per request: `scoped_logs`)."""
    if not message.is_request or bridge.client_era(message.params, headers) is not Era.MODERN:
        return frames
    return scoped_logs(bridge, bridge.log_level(message.params), frames)


class ServedChannel(Protocol):
    """What the dispatcher needs of a channel: this one-server `Channel`, or an `AggregateChannel`."""

    name: str

    def run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]: ...

    async def end_session(self, headers: Headers) -> Reply: ...

    async def wait_idle(self) -> None: ...

    def route(self, message: JsonRpcMessage, headers: Headers) -> Route:
        """The routing decision for a request (`limit_key`, and the server that will serve it when known)."""
        ...


class Channel:
    """One channel fronting one upstream server."""

    def __init__(
        self,
        name: str,
        upstream: Upstream,
        bridge: Bridge,
        sessions: SessionStore,
        *,
        telemetry: Telemetry = NOOP,
        router: Router | None = None,
    ) -> None:
        self.name = name
        self.upstream = upstream
        self.sessions = sessions
        self._router = router or Router()
        self._rounds = Rounds(bridge.codec)
        self._telemetry = telemetry
        self._bridge = bridge
        self._codec = bridge.codec
        self._activity = Activity()

    def route(self, message: JsonRpcMessage, headers: Headers) -> Route:
        """The routing decision for a request: only `limit_key` rules reach a one-server channel."""
        if message.method is UNSET:
            return dataclasses.replace(NO_ROUTE, server=self.upstream.name)
        name = self._bridge.target_name(message.method, message.params)
        decision = self._router.decide(self.name, message.method, name, headers)
        return dataclasses.replace(decision, server=self.upstream.name)

    async def wait_idle(self) -> None:
        """Until no call is running on this channel (a reload retires it after that)."""
        await self._activity.wait_idle()

    def run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]:
        """Serve one client message: yields Notify frames, then one Reply."""
        return self._activity.track(for_client(self._bridge, message, headers, self._run(message, headers)))

    async def _run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]:
        info = await self.upstream.wait_info()
        if message.is_response:
            # A client's answer to a request the server sent it during a call (or the gateway, on a
            # 2026-07-28 server's behalf: gateway.channels.mrtr).
            answered = self._rounds.answered(message)
            if answered is not None:
                yield Reply(202 if answered else 404)
                return
            passthrough = header_value(headers, SESSION_HEADER) is not None and self.upstream.holds_sessions
            yield await self.upstream.respond(message, self._forwarded_headers(headers, True), not passthrough)
            return
        assert message.method is not UNSET
        method, params = message.method, message.params
        client = self._bridge.client_era(params, headers)
        passthrough = client is info.era
        session: ClientSession | None = None
        token = header_value(headers, SESSION_HEADER)
        if token is not None and client is Era.LEGACY and method != "initialize" and not self.upstream.holds_sessions:
            session = self.sessions.open(token)  # one the gateway issued (a server's own passes through)
            if session is None:
                if not message.is_request:
                    yield Reply(404)
                    return
                raise SessionNotFound()
        if message.is_request:
            assert message.id is not UNSET
            if client is Era.MODERN and info.era is Era.LEGACY and retry_of(params) is not None:
                async for frame in self._resume(message.id, params):
                    yield frame
                return
            local = self._local_answer(method, params, headers, client, info)
            if local is not None:
                body, extra = local
                yield Reply(200, self._codec.result(message.id, body), {**JSON, **extra})
                return
        elif method == "notifications/initialized" and not (passthrough and self.upstream.holds_sessions):
            yield Reply(202)  # the gateway answered this client's initialize itself
            return
        if client is Era.LEGACY and info.era is Era.MODERN:
            capabilities = session.capabilities if session is not None else EMPTY_OBJECT
            params = self._bridge.modern_params(params, capabilities, self._bridge.client_info)
        elif client is Era.MODERN and info.era is Era.LEGACY:
            params = self._bridge.legacy_params(params)
        call = Call(
            method,
            message.id if message.id is not UNSET else None,
            params,
            self._forwarded_headers(headers, passthrough),
            own_session=not (passthrough and self.upstream.holds_sessions),
        )
        declared = self._declared(message.params, headers, client)
        if passthrough:
            frames = self._telemetry.exchange(self.upstream, call, info)  # the CLIENT span
            if info.era is Era.LEGACY and call.own_session:
                frames = self._declared_only(frames, call, declared)
            async for frame in frames:
                yield frame
            return
        for _ in range(MAX_ROUNDS):
            ask: Ask | None = None
            exchange = self._telemetry.exchange(self.upstream, call, info)
            async for bridged in self._bridged(exchange, call, client, info, declared):
                if isinstance(bridged, Ask):
                    ask = bridged
                    break
                yield bridged
            if ask is None:
                return
            answers: dict[str, Raw] = {}
            async for notify in self._rounds.ask(ask, answers):  # a 2026-07-28 server's input, asked of the client
                yield notify
            if len(answers) != len(ask.requests):
                assert call.id is not None
                declined = self._codec.error_response(call.id, -32600, "the client declined the server's request")
                yield Reply(200, declined)
                return
            call = dataclasses.replace(call, params=with_input_responses(self._codec, call.params, answers, ask.state))
        raise UpstreamProtocolError(self.upstream.name, "invalid_protocol_response")

    def _declared(self, params: Raw | UnsetType, headers: Headers, client: Era) -> Callable[[], Raw]:
        """The calling client's capabilities, read when a server's request needs them: a 2026-07-28
        request's envelope, or what a handshake-era client declared in the `initialize` the gateway answered."""
        if client is Era.MODERN:
            return lambda: self._bridge.envelope_capabilities(params)
        token = header_value(headers, SESSION_HEADER)

        def from_session() -> Raw:
            session = self.sessions.open(token) if token is not None else None
            return session.capabilities if session is not None else EMPTY_OBJECT

        return from_session

    async def _declared_only(
        self, frames: AsyncIterator[Frame], call: Call, declared: Callable[[], Raw]
    ) -> AsyncIterator[Frame]:
        """A call on the gateway's own session with a handshake-era server, for a client of that era: a
        server request the client did not declare the capability for is refused (-32021), the call abandoned."""
        try:
            async for frame in frames:
                if isinstance(frame, Notify):
                    request = self._rounds.input_request(frame)
                    if request is not None:
                        await self._rounds.refuse_undeclared(request, declared(), self.upstream, {}, call.own_session)
                yield frame
        finally:
            await abandon(frames)

    async def _bridged(
        self, frames: AsyncIterator[Frame], call: Call, client: Era, info: UpstreamInfo, declared: Callable[[], Raw]
    ) -> AsyncIterator[Frame | Ask]:
        """A call's frames for a client of the other era: results translated; a handshake-era server's
        request to a 2026-07-28 client becomes an `input_required` answer (the call is held for the
        retry) unless the client did not declare the capability it needs (-32021); a 2026-07-28
        server's `input_required` result becomes an `Ask` for a handshake-era one."""
        kept = False
        try:
            async for frame in frames:
                if isinstance(frame, Notify):
                    request = self._rounds.input_request(frame) if client is Era.MODERN else None
                    if request is not None and call.id is not None:
                        await self._rounds.refuse_undeclared(request, declared(), self.upstream, {}, call.own_session)
                        pending = Held(frames, self.upstream, info, call.method, {}, {}, call.own_session)
                        kept = True
                        result = await self._rounds.hold(pending, request)
                        yield Reply(200, self._codec.result(call.id, result), dict(JSON))
                        return
                    yield frame
                    continue
                ask = self._rounds.asked_of(frame) if client is Era.LEGACY else None
                if ask is not None:
                    yield ask
                    return
                if frame.body:
                    frame = self._translate(call.method, frame, client, info)
                yield rekeyed(self._codec, frame, call.id) if call.id is not None else frame
                return
        finally:
            if not kept:
                await abandon(frames)

    async def _resume(self, id: Raw, params: Raw | UnsetType) -> AsyncIterator[Frame]:
        """A 2026-07-28 client's retry: its answers go to the server, whose held call goes on."""
        pending = await self._rounds.resume(params)
        call = Call(pending.method, id, UNSET, {}, pending.own_session)
        declared = self._declared(params, {}, Era.MODERN)
        async for frame in self._bridged(pending.frames, call, Era.MODERN, pending.info, declared):
            if isinstance(frame, Ask):
                raise UpstreamProtocolError(self.upstream.name, "invalid_protocol_response")
            yield frame

    async def end_session(self, headers: Headers) -> Reply:
        """`session_termination`: close a session the server holds; end one the gateway issued
        (404 when it is unknown or ended already, as on aggregated channels)."""
        await self.upstream.wait_info()
        if self.upstream.holds_sessions:
            return await self.upstream.end_session(headers)
        token = header_value(headers, SESSION_HEADER)
        session = self.sessions.open(token) if token is not None else None
        if session is None:
            return Reply(404)
        self.sessions.end(session)
        return Reply(200)

    def _local_answer(
        self, method: str, params: Raw | msgspec.UnsetType, headers: Headers, client: Era, info: UpstreamInfo
    ) -> tuple[Raw, Headers] | None:
        """A result the gateway gives itself, with extra response headers; None to forward."""
        if client is Era.LEGACY:
            if method == "initialize" and not self.upstream.holds_sessions:
                version = self._bridge.requested_version(params)
                token, _ = self.sessions.issue(version, self._bridge.client_capabilities(params), {})
                return self._bridge.initialize_result(info, version), {SESSION_HEADER: [token]}
            if method in ("ping", "logging/setLevel") and info.era is Era.MODERN:
                return EMPTY_OBJECT, {}  # removed in 2026-07-28: the gateway answers for the server
        elif method == "server/discover" and info.era is Era.LEGACY:
            return self._bridge.discover_result(info), {}
        return None

    def _forwarded_headers(self, headers: Headers, passthrough: bool) -> Headers:
        if self.upstream.transport == "stdio":
            return {}  # a pipe carries no headers
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
