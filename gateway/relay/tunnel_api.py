"""The Secure MCP Tunnel v1 API the relay serves to gateways: metadata, poll, response.
Validates and encodes; queueing is the backend's, and errors become responses only in the error middleware.

Owns parameter and payload validation for `/v1/tunnels/{tunnel_id}[/poll|/response]`
and the wire encoding of what it returns. Keys and `poll_max_wait_ms` come from the relay's current
settings (`gateway.relay.settings`), read once per request: a poll admitted before a reload runs on.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Final

import msgspec
from aiohttp import web
from msgspec import UNSET

from gateway.protocol.headers import (
    CLIENT_NAME_HEADER,
    CLIENT_VERSION_HEADER,
    CONTENT_TYPE,
    INSTANCE_HEADER,
    JSON,
    SERVER_INFO_HEADER,
    SHARD_HEADER,
)
from gateway.protocol.wire import (
    MAX_POLL_LIMIT,
    RESPONSE_TYPES,
    Codec,
    PolledCommandList,
    TunnelClientMetadata,
    TunnelResponseAck,
    TunnelResponsePayload,
)
from gateway.relay.affinity import affine_channels
from gateway.relay.errors import InvalidParameter, InvalidPayload
from gateway.relay.exchange import BodyReader, Reply, RequestHead
from gateway.relay.guard import check_channel, check_gateway, read_body
from gateway.relay.ops import RelayMetrics
from gateway.relay.queue import QueueBackend
from gateway.relay.settings import LiveSettings, Settings

_RESPONSE_TYPES: Final = RESPONSE_TYPES
"""The contract's four and the official client's `oauth_discovery_response` (gateway.relay.discovery)."""
_PAYLOAD_FIELDS: Final = frozenset(TunnelResponsePayload.__struct_fields__)
_DIGITS: Final = re.compile(r"[0-9]+")
_HUGE: Final = 10**18
_NULL: Final = b"null"
_NO_CONTENT: Final = Reply(204)


def _connected(request: web.Request) -> bool:
    """Whether the poller is still there to receive what a poll would take."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _int_param(request: RequestHead, name: str, *, default: int, low: int, high: int | None) -> int:
    """A non-negative decimal query parameter within [low, high]; InvalidParameter otherwise."""
    values = request.query.getall(name, [])
    if not values:
        return default
    text = values[0]
    if len(values) > 1 or _DIGITS.fullmatch(text) is None:
        raise InvalidParameter(f"{name} must be one integer", param=name)
    value = int(text) if len(text) < 18 else _HUGE  # no giant-int parsing; huge is huge
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise InvalidParameter(f"{name} must be {bounds}", param=name)
    return value


class TunnelAPI:
    """Handlers for the gateway-facing v1 endpoints of one relay."""

    def __init__(
        self, live: LiveSettings, backend: QueueBackend, codec: Codec, metrics: RelayMetrics | None = None
    ) -> None:
        self._live = live
        self._backend = backend
        self._codec = codec
        self._metrics = metrics or RelayMetrics(live.current.config.tunnels)
        self._acked = Reply(200, codec.encode(TunnelResponseAck()), [(CONTENT_TYPE, JSON)])  # to every accepted frame

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/tunnels/{tunnel_id}", self.metadata, allow_head=False),
            web.get("/v1/tunnels/{tunnel_id}/poll", self.poll, allow_head=False),
            web.post("/v1/tunnels/{tunnel_id}/response", self.response),
        ]

    def _authorize(self, request: RequestHead, *, metadata: bool = False) -> tuple[str, Settings]:
        """(tunnel, the settings it was admitted under) of a request whose credential may use the tunnel."""
        settings = self._live.current
        tunnel_id = request.match_info["tunnel_id"]
        credentials = settings.credentials.get(tunnel_id)
        # an unknown tunnel is refused like a wrong key (or, to a valid access token, like another's tunnel)
        check_gateway(request, tunnel_id, credentials, settings.identity, metadata=metadata)
        return tunnel_id, settings

    def _json(self, obj: object) -> Reply:
        return Reply(200, self._codec.encode(obj), [(CONTENT_TYPE, JSON)])

    # ----------------------------------------------------------------------- aiohttp handlers

    async def metadata(self, request: web.Request) -> web.Response:
        tunnel_id, settings = self._authorize(request, metadata=True)
        spec = settings.config.tunnels[tunnel_id]
        return self._json(
            TunnelClientMetadata(id=tunnel_id, name=spec.name, description=spec.description)
        ).to_response()

    async def poll(self, request: web.Request) -> web.Response:
        return (await self.poll_reply(request, lambda: _connected(request))).to_response()

    async def response(self, request: web.Request) -> web.Response:
        limit = self._live.current.config.max_body_bytes  # fixed at start
        return (await self.response_reply(request, lambda: read_body(request, limit))).to_response()

    # ----------------------------------------------------------------------- the cores (any server)

    async def poll_reply(self, request: RequestHead, connected: Callable[[], bool]) -> Reply:
        """`GET /v1/tunnels/{tunnel_id}/poll`; `connected()` says whether the poller is still there."""
        tunnel_id, settings = self._authorize(request)
        cap = settings.config.poll_max_wait_ms
        limit = _int_param(request, "limit", default=1, low=1, high=MAX_POLL_LIMIT)
        timeout_ms = min(cap, _int_param(request, "timeout_ms", default=cap, low=1, high=None))
        channels = frozenset(check_channel(c) for c in request.query.getall("channel", []))
        headers = request.headers  # who polls: the v1 identity headers, for the console
        instance = headers.get(INSTANCE_HEADER)
        self._metrics.observe_gateway(
            tunnel_id, instance, headers.get(CLIENT_NAME_HEADER), headers.get(CLIENT_VERSION_HEADER)
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        commands = await self._backend.take(
            tunnel_id,
            limit=limit,
            timeout_s=timeout_ms / 1000,
            channels=channels,
            instance_id=instance,
            wanted=connected,
            affine_channels=affine_channels(headers.get(SERVER_INFO_HEADER)),
        )
        now = loop.time()
        self._metrics.observe_poll(tunnel_id, now - started, len(commands))
        if not commands:
            return _NO_CONTENT
        return self._json(PolledCommandList([command.polled(now) for command in commands]))

    async def response_reply(self, request: RequestHead, body: BodyReader) -> Reply:
        """`POST /v1/tunnels/{tunnel_id}/response`; `body()` reads the frame."""
        tunnel_id, shard_token = self._addressed(request)
        frame = self._decode_frame(await body())
        await self._backend.deliver(tunnel_id, shard_token, frame)
        # One step aside before the ack: the caller woken by this frame answers its client first
        # (the ack is off the call's path; the caller's answer is on it).
        await asyncio.sleep(0)
        return self._acked

    @property
    def responds_now(self) -> bool:
        """Whether `response_now` can be used: the backend hands frames over without waiting."""
        return self._backend.delivers_now

    def response_now(self, request: RequestHead, body: bytes) -> Reply:
        """`response_reply` for a body already read, with no wait (when `responds_now`). The caller
        writes the ack one loop step later, as `response_reply` steps aside: the woken caller answers first."""
        tunnel_id, shard_token = self._addressed(request)
        self._backend.deliver_now(tunnel_id, shard_token, self._decode_frame(body))
        return self._acked

    @property
    def responds_soon(self) -> bool:
        """Whether `response_soon` can be used: the backend reports a delivery by a callback (Redis)."""
        return self._backend.delivers_soon

    @property
    def acked(self) -> Reply:
        """The answer to an accepted frame."""
        return self._acked

    def response_soon(self, request: RequestHead, body: bytes, done: Callable[[Exception | None], None]) -> None:
        """`response_reply` for a body already read, with no task (when `responds_soon`): refusals known at
        once are raised; otherwise `done` gets None once the frame is stored (answer `acked`) or the error."""
        tunnel_id, shard_token = self._addressed(request)
        self._backend.deliver_soon(tunnel_id, shard_token, self._decode_frame(body), done)

    def _addressed(self, request: RequestHead) -> tuple[str, str]:
        """(tunnel, shard token) of a response POST that may post to the tunnel."""
        tunnel_id, _ = self._authorize(request)
        shard_token = request.headers.get(SHARD_HEADER)
        if not shard_token:
            raise InvalidParameter(f"the {SHARD_HEADER} header is required", param=SHARD_HEADER)
        return tunnel_id, shard_token

    # ----------------------------------------------------------------------- payloads

    def _decode_frame(self, body: bytes) -> TunnelResponsePayload:
        """A strict `TunnelResponsePayload`: a JSON object, no unknown fields, a known
        `resp_type`, `resp_json` an object (null = absent), `channel` well-formed (null = absent)."""
        try:
            frame = self._codec.payload(body)  # one pass; unknown fields are refused by the Struct
        except msgspec.DecodeError as exc:
            raise self._invalid(body, exc) from None
        if frame.resp_type not in _RESPONSE_TYPES:
            raise InvalidPayload("unknown resp_type", param="resp_type")
        if isinstance(frame.channel, str):
            check_channel(frame.channel)
        if frame.resp_json is not UNSET:
            raw = memoryview(frame.resp_json)  # looked at, not copied: it can be large
            head = bytes(raw[:5])
            if head == _NULL:
                frame = msgspec.structs.replace(frame, resp_json=UNSET)
            elif head[:1] != b"{":
                raise InvalidPayload("resp_json must be a JSON object", param="resp_json")
        return frame

    def _invalid(self, body: bytes, exc: msgspec.DecodeError) -> InvalidPayload:
        """The most helpful error for a body the strict decode refused."""
        try:
            members = self._codec.members(body)
        except msgspec.DecodeError:
            return InvalidPayload("the body is not a JSON object")
        unknown = sorted(set(members) - _PAYLOAD_FIELDS)
        if unknown:
            return InvalidPayload(f"unknown field {unknown[0]!r}", param=unknown[0])
        return InvalidPayload(f"invalid TunnelResponsePayload: {exc}")
