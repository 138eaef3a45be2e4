"""The forwarded-call path every channel uses: one request to one server, and its frames back.
It does not choose the server, answer locally, or know sessions beyond the `HeldSession` it is handed.

Owns era bridging of params and results, the multi round-trip relay in both directions (with the
held calls it keeps between a client's retries), re-keying answers, the headers a call carries, and
error translation (an answer that is not JSON-RPC fails as `malformed_json`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.channels.mrtr import MAX_ROUNDS, Ask, Held, Rounds, rekeyed, retry_of, with_input_responses
from gateway.channels.sessions import UpstreamSession, session_headers
from gateway.observe.hooks import NOOP, Telemetry
from gateway.protocol.eras import Bridge
from gateway.protocol.errors import UpstreamHttpError, UpstreamProtocolError
from gateway.protocol.headers import (
    ACCEPT,
    CONTENT_TYPE,
    METHOD_HEADER,
    NAME_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
)
from gateway.protocol.mcp import Call, Era, Frame, Notify, Reply, UpstreamInfo, abandon
from gateway.protocol.wire import Headers, JsonRpcMessage, json_headers, strip_hop_by_hop
from gateway.upstream.base import Upstream

DECLINED: Final = "the client declined the server's request"

_TRANSPORT_OWNED: Final = frozenset({CONTENT_TYPE.lower(), ACCEPT.lower(), "content-length", "host"})
"""Request headers a transport always sets itself."""
_ERA_HEADERS: Final = frozenset(name.lower() for name in (SESSION_HEADER, VERSION_HEADER, METHOD_HEADER, NAME_HEADER))
"""Request headers that describe the client's era or session; dropped unless the call passes through as is."""


def _unchanged(frame: Notify) -> Notify:
    return frame


class HeldSession(Protocol):
    """The session the gateway holds on a handshake-era server for the calling client (aggregated channels)."""

    async def current(self) -> UpstreamSession | None:
        """The session to call in (opened again after `expired`); None: use the gateway's own."""
        ...

    def expired(self) -> None:
        """The server forgot the session: the next `current()` opens a new one."""
        ...


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Leg:
    """One server's side of a forwarded call: where it goes, and how the server's frames reach the client."""

    upstream: Upstream
    info: UpstreamInfo
    server: str
    """The server's name: in errors, and where a held call resumes."""
    headers: Headers
    """The client's request headers as forwarded (`forwarded_headers`)."""
    identity: Callable[[], Raw]
    """The `serverInfo` a 2026-07-28 client is told when a handshake-era server's result is bridged."""
    own_session: bool = True
    """False: the call runs in the client's own session on the server (its headers pass through)."""
    held: HeldSession | None = None
    from_server: Callable[[Notify], Notify] = _unchanged
    """A server message during the call, as the client sees it (an aggregated channel tags request ids)."""


class _Expired:
    """The server forgot the session the gateway holds for the client."""


_EXPIRED: Final = _Expired()


def forwarded_headers(upstream: Upstream, headers: Headers, passthrough: bool) -> Headers:
    """The client's headers a call carries: none over a pipe; never the transport's own; the era and
    session headers only when the call passes through to a server of the client's era as is."""
    if upstream.transport == "stdio":
        return {}
    dropped = _TRANSPORT_OWNED if passthrough else _TRANSPORT_OWNED | _ERA_HEADERS
    return {k: v for k, v in strip_hop_by_hop(headers).items() if k.lower() not in dropped}


class Calls:
    """A channel's forwarded calls, and the multi round-trip requests they hold between rounds."""

    def __init__(self, bridge: Bridge, *, telemetry: Telemetry = NOOP) -> None:
        self._bridge = bridge
        self._codec = bridge.codec
        self._telemetry = telemetry
        self._rounds = Rounds(bridge.codec)

    async def close(self) -> None:
        """Abandon the calls held for a retry that will not come."""
        await self._rounds.close()

    def answered(self, message: JsonRpcMessage) -> bool | None:
        """A client's answer to a request the gateway asked on a 2026-07-28 server's behalf (`Rounds.answered`)."""
        return self._rounds.answered(message)

    def params_for(self, client: Era, server: Era, params: Raw | UnsetType, capabilities: Raw) -> Raw | UnsetType:
        """A request's params in the server's era; `capabilities` are a handshake-era client's declared ones."""
        if client is Era.LEGACY and server is Era.MODERN:
            return self._bridge.modern_params(params, capabilities, self._bridge.client_info)
        if client is Era.MODERN and server is Era.LEGACY:
            return self._bridge.legacy_params(params)
        return params

    def is_retry(self, client: Era, params: Raw | UnsetType) -> bool:
        """A 2026-07-28 client's retry of a call the gateway held (`resume` serves it)."""
        return client is Era.MODERN and retry_of(params) is not None

    async def forward(
        self,
        leg: Leg,
        method: str,
        id: Raw | None,
        params: Raw | UnsetType,
        client: Era,
        declared: Callable[[], Raw],
    ) -> AsyncIterator[Frame]:
        """Send one client message (params already in the server's era) and yield Notify frames, then
        one Reply in the client's era. A 2026-07-28 server's `input_required` is asked of a
        handshake-era client and the request retried with its answers; a held session the server
        forgot is opened again once. `declared` gives the client's capabilities when a server request
        needs them."""
        attempt, rounds = 1, 0
        while True:
            held = await leg.held.current() if leg.held is not None else None
            headers = leg.headers if held is None else {**leg.headers, **session_headers(held)}
            call = Call(method, id, params, headers, own_session=leg.own_session and held is None)
            ending: Reply | Ask | _Expired | None = None
            # Kept until this generator is resumed after its Reply (or closed), then closed here: an
            # exchange dropped unclosed is finalized by the loop in a task of its own (a wake-up per call).
            relay = self._relay(
                leg, call, client, declared, self._telemetry.exchange(leg.upstream, call, leg.info), held
            )
            try:
                try:
                    async for item in relay:
                        if isinstance(item, Notify):
                            yield item
                        else:
                            ending = item
                            break
                except UpstreamHttpError as exc:
                    if exc.failure.upstream_status != 404 or held is None or attempt != 1:
                        raise
                    ending = _EXPIRED
                if isinstance(ending, Reply):
                    yield ending
                    return
            finally:
                await abandon(relay)
            if isinstance(ending, _Expired) and attempt == 1 and leg.held is not None:
                leg.held.expired()
                attempt = 2
                continue
            if not isinstance(ending, Ask) or rounds >= MAX_ROUNDS:
                raise UpstreamProtocolError(leg.server, "invalid_protocol_response")
            rounds += 1
            answers: dict[str, Raw] = {}
            async for notify in self._rounds.ask(ending, answers):  # asked of the client during its call
                yield notify
            if len(answers) != len(ending.requests):
                assert id is not None
                yield Reply(200, self._codec.error_response(id, -32600, DECLINED))
                return
            params = with_input_responses(self._codec, params, answers, ending.state)

    async def resume(self, id: Raw, params: Raw | UnsetType, leg_of: Callable[[Held], Leg]) -> AsyncIterator[Frame]:
        """A 2026-07-28 client's retry: its answers go to the server whose call was held, and the call
        goes on (`leg_of` says where it runs, from what the channel stored when holding it)."""
        pending = await self._rounds.resume(params)
        leg = leg_of(pending)
        held = None
        if not pending.own_session:
            session = pending.respond_headers
            held = UpstreamSession(_first(session, SESSION_HEADER), _first(session, VERSION_HEADER))
        call = Call(pending.method, id, UNSET, {}, pending.own_session)
        declared = self.declared_by(params)
        async for frame in self._relay(leg, call, Era.MODERN, declared, pending.frames, held):
            if not isinstance(frame, (Notify, Reply)):
                raise UpstreamProtocolError(leg.server, "invalid_protocol_response")
            yield frame

    def declared_by(self, params: Raw | UnsetType) -> Callable[[], Raw]:
        """A 2026-07-28 request's declared client capabilities (its `_meta` envelope), read when needed."""
        return lambda: self._bridge.envelope_capabilities(params)

    async def _relay(
        self,
        leg: Leg,
        call: Call,
        client: Era,
        declared: Callable[[], Raw],
        frames: AsyncIterator[Frame],
        held: UpstreamSession | None,
    ) -> AsyncIterator[Frame | Ask | _Expired]:
        """One exchange's frames for the client: Notify*, then its Reply, `_EXPIRED` (the server forgot the
        held session), or an `Ask` (the input a 2026-07-28 server needs from a handshake-era client).

        A handshake-era server's request during a call, on the gateway's own session, is refused
        (-32021) when the client did not declare the capability it needs; for a 2026-07-28 client it
        becomes an `input_required` answer, and the exchange is held, not closed, until the retry."""
        legacy_server = leg.info.era is Era.LEGACY
        to_modern = client is Era.MODERN and legacy_server
        asks = client is Era.LEGACY and not legacy_server
        inspect = legacy_server and (call.own_session or to_modern)
        kept = False
        try:
            async for frame in frames:
                if isinstance(frame, Notify):
                    request = self._rounds.input_request(frame) if inspect else None
                    if request is not None:
                        if call.own_session:
                            if await self._rounds.rootless(request, declared(), leg.upstream):
                                continue
                            await self._rounds.refuse_undeclared(request, declared(), leg.upstream, {}, True)
                        if to_modern and call.id is not None:
                            respond = session_headers(held) if held is not None else {}
                            pending = Held(frames, leg.upstream, leg.info, call.method, {}, respond, held is None)
                            pending.member = leg.server
                            kept = True
                            result = await self._rounds.hold(pending, request)
                            yield Reply(200, self._codec.result(call.id, result), json_headers())
                            return
                    yield leg.from_server(frame)
                    continue
                if frame.status == 404 and held is not None:
                    yield _EXPIRED
                    return
                ask = self._rounds.asked_of(frame) if asks else None
                if ask is not None:
                    yield ask
                    return
                if client is not leg.info.era and frame.body:
                    frame = self._translate(leg, call.method, frame, client)
                    if call.id is not None:
                        frame = rekeyed(self._codec, frame, call.id)
                yield frame
                return
        finally:
            if not kept:
                await abandon(frames)

    def _translate(self, leg: Leg, method: str, reply: Reply, client: Era) -> Reply:
        """A server's answer made readable by a client of the other era."""
        try:
            answer = self._codec.message(reply.body)
        except msgspec.MsgspecError:
            raise UpstreamProtocolError(leg.server, "malformed_json") from None
        if answer.result is UNSET or answer.id is UNSET:
            return reply
        if client is Era.MODERN:
            result = self._bridge.modern_result(method, answer.result, leg.identity())
        else:
            result = self._bridge.legacy_result(answer.result)
        return Reply(reply.status, self._codec.result(answer.id, result), reply.headers)


def _first(headers: Headers, name: str) -> str:
    values = headers.get(name)
    return values[0] if values else ""
