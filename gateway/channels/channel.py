"""A one-server channel, and what every channel shares: the channel interface, call tracking, log scoping.
It never bridges eras or relays server requests itself: forwarded messages take `gateway.channels.calls`.

Owns what the gateway answers on one server's behalf: the handshake-era `initialize` and its sealed
session ids (404 for an unknown or ended one), `server/discover` for a handshake-era server, `ping`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from msgspec import UNSET, Raw, UnsetType

from gateway.channels.calls import Calls, Leg, forwarded_headers
from gateway.channels.mrtr import Held
from gateway.channels.rules import NO_ROUTE, Route, Router
from gateway.channels.sessions import ClientSession, SessionStore
from gateway.observe.hooks import NOOP, Telemetry
from gateway.protocol.eras import EMPTY_OBJECT, Bridge
from gateway.protocol.errors import DiscoveryUnsupported, SessionNotFound
from gateway.protocol.headers import SESSION_HEADER
from gateway.protocol.mcp import Era, Frame, Notify, Reply, UpstreamInfo
from gateway.protocol.wire import Headers, JsonRpcMessage, header_value, json_headers
from gateway.upstream.base import Upstream


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
    """What the dispatcher and the app need of a channel: a one-server `Channel` or an `AggregateChannel`."""

    name: str
    plan: Plan
    """What the channel was built from: a reload keeps a channel whose plan is unchanged."""

    def run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]: ...

    async def end_session(self, headers: Headers) -> Reply: ...

    async def oauth_discovery(self, deadline: float | None) -> bytes:
        """The `oauth_discovery_response` body for this channel's server (DiscoveryUnsupported where
        there is no one HTTP server), fetched before `deadline` (loop time)."""
        ...

    async def wait_idle(self) -> None: ...

    def route(self, message: JsonRpcMessage, headers: Headers) -> Route:
        """The routing decision for a request (`limit_key`, and the server that will serve it when known)."""
        ...

    def end_streams(self) -> None:
        """End open `subscriptions/listen` streams gracefully (the gateway is stopping)."""
        ...

    async def close(self) -> None:
        """Release what the channel holds (watches, calls held for a retry); its upstreams stay."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """A channel's provision: equal plans build equal channels (upstreams compare by identity)."""

    upstreams: tuple[Upstream, ...]
    sessions: tuple[object, float]
    """The session keys and lifetime its sealed session ids use."""
    spec: object = None
    """An aggregated channel's options and routing rules."""


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
        self.plan = Plan((upstream,), (sessions.keys, sessions.ttl_s))
        self._router = router or Router()
        self._own_route = Route(server=upstream.name)
        """The decision when no rule matches: this channel's one server serves it."""
        self._ruled = self._router.concerns(name)
        """Some rule or allow-list can match here; else routing needs no look at the request."""
        self._calls = Calls(bridge, telemetry=telemetry)
        self._bridge = bridge
        self._codec = bridge.codec
        self._activity = Activity()

    def route(self, message: JsonRpcMessage, headers: Headers) -> Route:
        """The routing decision for a request: only `limit_key` rules reach a one-server channel."""
        if message.method is UNSET or not self._ruled:
            return self._own_route
        name = self._bridge.target_name(message.method, message.params)
        decision = self._router.decide(self.name, message.method, name, headers)
        return self._own_route if decision is NO_ROUTE else dataclasses.replace(decision, server=self.upstream.name)

    async def wait_idle(self) -> None:
        """Until no call is running on this channel (a reload retires it after that)."""
        await self._activity.wait_idle()

    def end_streams(self) -> None:
        """A one-server channel keeps no streams of its own (a server's pass through its calls)."""

    async def close(self) -> None:
        await self._calls.close()

    def run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]:
        """Serve one client message: yields Notify frames, then one Reply."""
        return self._activity.track(for_client(self._bridge, message, headers, self._run(message, headers)))

    async def _run(self, message: JsonRpcMessage, headers: Headers) -> AsyncIterator[Frame]:
        info = await self.upstream.wait_info(headers)
        if message.is_response:
            # A client's answer to a request the server sent it during a call (or the gateway, on a
            # 2026-07-28 server's behalf: gateway.channels.mrtr).
            answered = self._calls.answered(message)
            if answered is not None:
                yield Reply(202 if answered else 404)
                return
            passthrough = header_value(headers, SESSION_HEADER) is not None and self.upstream.holds_sessions
            forwarded = forwarded_headers(self.upstream, headers, True)
            yield await self.upstream.respond(message, forwarded, not passthrough)
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
            if self._calls.is_retry(client, params) and info.era is Era.LEGACY:
                async for frame in self._calls.resume(message.id, params, self._leg_of):
                    yield frame
                return
            local = self._local_answer(method, params, headers, client, info)
            if local is not None:
                await self.upstream.verify_credentials(headers)  # a protected server's, not the gateway's, say
                body, extra = local
                yield Reply(200, self._codec.result(message.id, body), json_headers() | extra)
                return
        elif method == "notifications/initialized" and not (passthrough and self.upstream.holds_sessions):
            yield Reply(202)  # the gateway answered this client's initialize itself
            return
        capabilities = session.capabilities if session is not None else EMPTY_OBJECT
        leg = Leg(
            upstream=self.upstream,
            info=info,
            server=self.upstream.name,
            headers=forwarded_headers(self.upstream, headers, passthrough),
            identity=lambda: info.server_info,
            own_session=not (passthrough and self.upstream.holds_sessions),
        )
        async for frame in self._calls.forward(
            leg,
            method,
            message.id if message.id is not UNSET else None,
            self._calls.params_for(client, info.era, params, capabilities),
            client,
            self._declared(message.params, headers, client),
        ):
            yield frame

    def _leg_of(self, held: Held) -> Leg:
        """Where a held call resumes: this channel's server, as it was when the call was held."""
        info = held.info
        return Leg(
            upstream=held.upstream,
            info=info,
            server=self.upstream.name,
            headers={},
            identity=lambda: info.server_info,
            own_session=held.own_session,
        )

    def _declared(self, params: Raw | UnsetType, headers: Headers, client: Era) -> Callable[[], Raw]:
        """The calling client's capabilities, read when a server's request needs them: a 2026-07-28
        request's envelope, or what a handshake-era client declared in the `initialize` the gateway answered."""
        if client is Era.MODERN:
            return self._calls.declared_by(params)
        token = header_value(headers, SESSION_HEADER)

        def from_session() -> Raw:
            session = self.sessions.open(token) if token is not None else None
            return session.capabilities if session is not None else EMPTY_OBJECT

        return from_session

    async def end_session(self, headers: Headers) -> Reply:
        """`session_termination`: close a session the server holds; end one the gateway issued
        (404 when it is unknown or ended already, as on aggregated channels)."""
        await self.upstream.wait_info(headers)
        if self.upstream.holds_sessions:
            return await self.upstream.end_session(headers)
        token = header_value(headers, SESSION_HEADER)
        session = self.sessions.open(token) if token is not None else None
        if session is None:
            return Reply(404)
        self.sessions.end(session)
        return Reply(200)

    async def oauth_discovery(self, deadline: float | None) -> bytes:
        """The server's OAuth metadata (an HTTP server's; a stdio server has none)."""
        if self.upstream.transport != "http":
            why = "its server is spoken to over stdio, which has no OAuth"
            raise DiscoveryUnsupported(f"channel {self.name!r}", why)
        return await self.upstream.oauth_metadata(deadline)

    def _local_answer(
        self, method: str, params: Raw | UnsetType, headers: Headers, client: Era, info: UpstreamInfo
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
