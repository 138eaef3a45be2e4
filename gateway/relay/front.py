"""The relay's front door: the Streamable HTTP MCP endpoint MCP clients call.
Turns requests into queued commands and frames into answers; queues nothing itself (that is the backend).

Owns `/v1/mcp/{tunnel_id}[/{channel}]`: admission (the tunnel's client token in
`Authorization` or in its own header), turning a POST or DELETE into a queued
command, and turning that command's frames into a JSON, SSE or empty answer
with the contract's status mapping (a server's challenge pointed at the relay's
metadata URL by `gateway.relay.discovery`). A request reads the relay's current settings once
(`gateway.relay.settings`) and is served under them to its end, across a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import msgspec
from aiohttp import web
from msgspec import UNSET, Raw

from gateway.config import rates
from gateway.protocol.headers import ACCEPT, AUTHORIZATION, CONTENT_TYPE, EVENT_STREAM, JSON, SESSION_HEADER
from gateway.protocol.wire import (
    COMMAND_JSONRPC,
    COMMAND_SESSION_END,
    HOP_BY_HOP,
    INTERNAL_ERROR,
    JSONRPC_VERSION,
    Codec,
    Headers,
    JsonRpcMessage,
    TunnelResponsePayload,
    allowed_response_headers,
    connection_named,
)
from gateway.relay.budgets import CallerBudgets
from gateway.relay.config import UserAuthSpec
from gateway.relay.deadlines import Deadlines
from gateway.relay.discovery import Discovery, mcp_path
from gateway.relay.errors import (
    CallerTimeout,
    ClientNotSeen,
    ClientRateExceeded,
    InvalidJsonRpc,
    MethodNotAllowed,
    MissingSessionId,
    RelayError,
    TunnelNotFound,
    UserTokenRefused,
)
from gateway.relay.exchange import (
    BodyReader,
    EventStream,
    Head,
    Reply,
    RequestHead,
    ResponseHeaders,
    WebEventStream,
    web_answer,
)
from gateway.relay.guard import bearer_token, check_channel, check_client, check_client_header, read_body
from gateway.relay.ops import RelayMetrics
from gateway.relay.queue import Command, QueueBackend, Stamps, new_command, terminal_frame
from gateway.relay.settings import LiveSettings, Settings
from gateway.relay.tracing import NO_TRACER, RelayTracer
from gateway.relay.user_auth import UserAuth, audit

DEFAULT_CHANNEL: Final = "main"
_KEPT_2XX: Final = frozenset({200, 201, 202, 204})
_STANDARD_STATUSES: Final = frozenset(status.value for status in HTTPStatus)
_NO_BODY: Final = frozenset({204, 304})
_AUTHORIZATION: Final = AUTHORIZATION.lower()


def map_status(resp_code: int) -> int:
    """The contract's status mapping from a frame's `resp_code` to the caller's HTTP status:
    1xx -> 502; 200/201/202/204 kept, other 2xx -> 200; standard 3xx-5xx kept; anything else -> 502."""
    if 200 <= resp_code < 300:
        return resp_code if resp_code in _KEPT_2XX else 200
    if 300 <= resp_code < 600 and resp_code in _STANDARD_STATUSES:
        return resp_code
    return 502


def forwarded_headers(request: RequestHead, *, drop_authorization: bool, drop: str | None = None) -> Headers:
    """The caller's headers as the command carries them: multi-valued, original spelling,
    minus hop-by-hop headers (and any the `Connection` header names), Host and Content-Length,
    minus `Authorization` when it held the relay's own credential, and minus `drop` (the header
    that did). One pass over the headers (`strip_hop_by_hop`'s rules)."""
    dropped: set[str] = set()
    connection = request.headers.getall("Connection", ())
    for value in connection:
        if value.lower() not in HOP_BY_HOP:  # more than `keep-alive`, which is dropped anyway
            dropped = connection_named(connection)
            break
    if drop_authorization:
        dropped.add(_AUTHORIZATION)
    if drop is not None:
        dropped.add(drop.lower())
    # The lean server's head keeps its lines as plain strings; aiohttp's names are multidict's `istr`.
    fields = request.fields if type(request) is Head else [(str(n), v) for n, v in request.headers.items()]
    headers: Headers = {}
    spelling: dict[str, str] = {}
    for name, value in fields:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in dropped:
            continue
        key = spelling.get(lowered)
        if key is None:
            spelling[lowered] = name
            headers[name] = [value]
        else:
            headers[key].append(value)
    return headers


def response_headers(frame: TunnelResponsePayload) -> ResponseHeaders:
    """The frame's headers the caller may see (the contract's allowlist, every value
    kept); Content-Type is the relay's to set."""
    if frame.resp_headers is UNSET:
        return []
    return [
        (name, value)
        for name, values in allowed_response_headers(frame.resp_headers).items()
        if name.lower() != CONTENT_TYPE.lower()
        for value in values
    ]


def accepts_sse(request: RequestHead) -> bool:
    for value in request.headers.getall(ACCEPT, []):
        for media_range in value.split(","):
            if media_range.split(";", 1)[0].strip().lower() == EVENT_STREAM:
                return True
    return False


def sse_event(data: bytes) -> bytes:
    """One `message` event; a multi-line payload becomes several `data:` lines."""
    lines = data.splitlines() or [b""]
    return b"event: message\n" + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def json_answer(frame: TunnelResponsePayload, status: int | None = None) -> Reply:
    """A frame as a plain HTTP answer: mapped status, allowed headers, `resp_json` bytes as body."""
    code = map_status(frame.resp_code) if status is None else status
    headers = response_headers(frame)
    body = b""
    if frame.resp_json is not UNSET and code not in _NO_BODY:
        body = bytes(frame.resp_json)
        headers.append((CONTENT_TYPE, JSON))
    return Reply(code, body, headers)


_STREAM_HEADERS: Final = (
    (CONTENT_TYPE, EVENT_STREAM),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),  # reverse proxies pass events on at once (streamable-http)
)
_STREAM_NAMES: Final = frozenset(name.lower() for name, _ in _STREAM_HEADERS)


def stream_headers(first: TunnelResponsePayload) -> ResponseHeaders:
    """An SSE answer's headers: the first frame's allowed ones, then the stream's own (which replace theirs)."""
    kept = [(name, value) for name, value in response_headers(first) if name.lower() not in _STREAM_NAMES]
    return kept + list(_STREAM_HEADERS)


@dataclass(slots=True)
class Subject:
    """Who a request under `user_auth` came from, and how it ended (for its audit line)."""

    name: str | None = None
    outcome: int = 500


class _Anonymous:
    """The `_user` context of a channel without `user_auth`: a fresh Subject, nothing checked or logged."""

    __slots__ = ("_subject",)

    async def __aenter__(self) -> Subject:
        self._subject = Subject()
        return self._subject

    async def __aexit__(self, *exc_info: object) -> None:
        return None


ACCEPTS_KEPT: Final = 256
"""`Accept` values whose `accepts_sse` verdict the front door remembers; past that the memory starts over."""


class FrontDoor:
    """Handlers for the MCP-client-facing endpoint of one relay."""

    def __init__(
        self,
        live: LiveSettings,
        backend: QueueBackend,
        codec: Codec,
        metrics: RelayMetrics | None = None,
        tracer: RelayTracer = NO_TRACER,
        discovery: Discovery | None = None,
        users: UserAuth | None = None,
    ) -> None:
        self._live = live
        self._backend = backend
        self._codec = codec
        self._tracer = tracer
        self._metrics = metrics or RelayMetrics(live.current.config.tunnels)
        self._discovery = discovery or Discovery(live, backend, codec, self._metrics)
        self._users = users or UserAuth(live.current.config, codec)
        self._client_rates: CallerBudgets[tuple[str, str, float, int]] = CallerBudgets()
        self._deadlines = Deadlines()
        """The callers' waits for their frames end at the command's deadline (one loop timer for all of them)."""
        self._stamps = Stamps()
        """The `created_at` of the commands queued here."""
        self._sse_accepts: dict[str, bool] = {}
        """`accepts_sse` of a request whose one `Accept` header is the key (clients repeat theirs)."""

    def routes(self) -> list[web.RouteDef]:
        routes: list[web.RouteDef] = []
        for path in ("/v1/mcp/{tunnel_id}", "/v1/mcp/{tunnel_id}/{channel}"):
            routes += [
                web.post(path, self.post),
                web.delete(path, self.delete),
                web.route("*", path, self.other),
            ]
        return routes

    def _admit(self, settings: Settings, request: RequestHead) -> tuple[str, str, Headers]:
        """Host/Origin, tunnel, channel and client token, in that order -> (tunnel, channel, headers)."""
        settings.hosts.check(request)
        tunnel_id = request.match_info["tunnel_id"]
        credentials = settings.credentials.get(tunnel_id)
        if credentials is None:
            raise TunnelNotFound()
        channel = check_channel(request.match_info.get("channel", DEFAULT_CHANNEL))
        header = settings.config.tunnels[tunnel_id].client_token_header
        if header.lower() == AUTHORIZATION.lower():
            relay_credential = check_client(request, credentials)
            return tunnel_id, channel, forwarded_headers(request, drop_authorization=relay_credential)
        check_client_header(request, credentials, header)  # `Authorization` is the user's: it passes through
        return tunnel_id, channel, forwarded_headers(request, drop_authorization=False, drop=header)

    def _answer(
        self, settings: Settings, request: RequestHead, tunnel_id: str, frame: TunnelResponsePayload
    ) -> TunnelResponsePayload:
        """A frame as this caller may see it: a server's challenge names the relay's metadata URL."""
        return self._discovery.challenge(settings, request, tunnel_id, request.match_info.get("channel"), frame)

    async def _check_client_rate(self, settings: Settings, tunnel_id: str, request: RequestHead) -> None:
        """`client_rate`: each client token (or all tokenless callers together) has its own budget."""
        spec = settings.config.tunnels[tunnel_id]
        per_s = rates.per_second(spec.client_rate) if spec.client_rate else None
        if per_s is None:
            return
        token = hashlib.sha256((bearer_token(request) or "").encode()).hexdigest()
        burst = spec.client_burst or max(2, math.floor(per_s))
        # keyed by the rate too: a reload's new `client_rate`/`client_burst` gives each caller a new budget
        wait_s = await self._client_rates.take((tunnel_id, token, per_s, burst), per_s, burst)
        if wait_s is not None:
            raise ClientRateExceeded(wait_s)

    def _parse(self, body: bytes) -> tuple[JsonRpcMessage, Raw | None]:
        """Validate one JSON-RPC message: (the message, its raw id when it is a request, else None)."""
        try:
            message = self._codec.message(body)
        except msgspec.ValidationError as exc:
            raise InvalidJsonRpc.invalid_request(f"not a JSON-RPC message object: {exc}") from None
        except msgspec.DecodeError:
            raise InvalidJsonRpc.parse_error("the body is not valid JSON") from None
        if message.jsonrpc != JSONRPC_VERSION:
            raise InvalidJsonRpc.invalid_request('"jsonrpc" must be "2.0"')
        if message.method is not UNSET and message.id is not UNSET:  # a request
            return message, Raw(bytes(message.id))
        if message.is_notification or message.is_response:
            return message, None
        raise InvalidJsonRpc.invalid_request("not a JSON-RPC request, notification or response")

    async def _enqueue(
        self,
        settings: Settings,
        tunnel_id: str,
        channel: str,
        headers: Headers,
        command_type: str,
        jsonrpc: Raw | None,
    ) -> Command:
        if not await self._backend.client_seen(tunnel_id):
            raise ClientNotSeen()
        deadline = asyncio.get_running_loop().time() + settings.config.response_timeout_s
        command = new_command(
            command_type=command_type,
            channel=channel,
            headers=headers,
            deadline=deadline,
            jsonrpc=UNSET if jsonrpc is None else jsonrpc,
            created_at=self._stamps.now(),
        )
        await self._backend.enqueue(tunnel_id, command)
        return command

    async def _terminal(self, tunnel_id: str, command: Command) -> TunnelResponsePayload:
        """Skip intermediate frames until the terminal one; CallerTimeout at the deadline."""
        return await terminal_frame(self._backend, self._deadlines, tunnel_id, command.request_id, command.deadline)

    # ----------------------------------------------------------------------- handlers

    async def other(self, request: web.Request) -> web.Response:
        """GET (no standalone SSE stream here) and any other method: 405 after admission."""
        self._admit(self._live.current, request)
        raise MethodNotAllowed()

    async def post(self, request: web.Request) -> web.StreamResponse:
        stream = WebEventStream(request)
        limit = self._live.current.config.max_body_bytes  # fixed at start
        return web_answer(await self.post_reply(request, lambda: read_body(request, limit), stream), stream)

    async def post_reply(self, request: RequestHead, read: BodyReader, stream: EventStream) -> Reply | None:
        """`POST /v1/mcp/{tunnel_id}[/{channel}]` on any server: its Reply, or None when it answered
        through `stream` (an SSE stream, opened once a notification frame came first)."""
        settings = self._live.current
        tunnel_id, channel, headers = self._admit(settings, request)
        await self._check_client_rate(settings, tunnel_id, request)
        body = await read()
        message, rpc_id = self._parse(body)
        async with self._user(settings, request, tunnel_id, channel, body) as subject:
            with self._tracer.request(channel, request.headers, body, message) as trace:
                if subject.name is not None:
                    trace.subject(subject.name)
                headers, traced = trace.inject(headers, body)  # the command carries this request's span
                answer = await self._post(
                    settings, request, tunnel_id, channel, headers, traced or body, rpc_id, stream
                )
                status = 200 if answer is None else answer.status
                trace.answered(status, None if answer is None else answer.body)
                subject.outcome = status
                return answer

    async def _post(
        self,
        settings: Settings,
        request: RequestHead,
        tunnel_id: str,
        channel: str,
        headers: Headers,
        body: bytes,
        rpc_id: Raw | None,
        stream: EventStream,
    ) -> Reply | None:
        command = await self._enqueue(settings, tunnel_id, channel, headers, COMMAND_JSONRPC, Raw(body))
        try:
            with self._metrics.caller_waiting(tunnel_id):
                if rpc_id is None:
                    frame = self._answer(settings, request, tunnel_id, await self._terminal(tunnel_id, command))
                    if frame.resp_code >= 400:
                        return json_answer(frame)
                    return json_answer(msgspec.structs.replace(frame, resp_json=UNSET), status=202)
                return await self._answer_request(settings, request, tunnel_id, command, rpc_id, stream)
        finally:
            await self._backend.discard(tunnel_id, command.request_id)

    async def delete(self, request: web.Request) -> web.Response:
        settings = self._live.current
        tunnel_id, channel, headers = self._admit(settings, request)
        await self._check_client_rate(settings, tunnel_id, request)
        if not request.headers.get(SESSION_HEADER):
            raise MissingSessionId(param=SESSION_HEADER)
        async with self._user(settings, request, tunnel_id, channel, None) as subject:
            with self._tracer.request(channel, request.headers, None) as trace:
                if subject.name is not None:
                    trace.subject(subject.name)
                headers, _ = trace.inject(headers, None)
                answer = await self._delete(settings, tunnel_id, channel, headers)
                trace.answered(answer.status, None)
                subject.outcome = answer.status
                return answer.to_response()

    def _user(
        self, settings: Settings, request: RequestHead, tunnel_id: str, channel: str, body: bytes | None
    ) -> contextlib.AbstractAsyncContextManager[Subject]:
        """`user_auth` for a covered channel: the user's token checked before anything is queued (a
        refusal raised), and one audit line when the request ends, however it ends."""
        spec = settings.config.tunnels[tunnel_id].user_auth
        if spec is None or not spec.covers(channel):
            return _Anonymous()  # no generator-based context manager per request for the common case
        return self._checked_user(settings, spec, request, tunnel_id, channel, body)

    @contextlib.asynccontextmanager
    async def _checked_user(
        self,
        settings: Settings,
        spec: UserAuthSpec,
        request: RequestHead,
        tunnel_id: str,
        channel: str,
        body: bytes | None,
    ) -> AsyncIterator[Subject]:
        subject = Subject()
        started = asyncio.get_running_loop().time()
        method, tool = self._users.describe(body)
        segment = request.match_info.get("channel")
        try:
            resource = self._discovery.public_base(settings, request) + mcp_path(tunnel_id, segment)
            metadata = self._discovery.metadata_url(settings, request, tunnel_id, segment)
            subject.name = await self._users.check(request, spec, resource, metadata)
            yield subject
        except RelayError as exc:
            subject.outcome = exc.status
            if isinstance(exc, UserTokenRefused) and exc.subject is not None:
                subject.name = exc.subject
            raise
        finally:
            duration = asyncio.get_running_loop().time() - started
            audit(subject.name, tunnel_id, channel, method, tool, subject.outcome, duration)

    async def _delete(self, settings: Settings, tunnel_id: str, channel: str, headers: Headers) -> Reply:
        command = await self._enqueue(settings, tunnel_id, channel, headers, COMMAND_SESSION_END, None)
        try:
            with self._metrics.caller_waiting(tunnel_id):
                frame = await self._terminal(tunnel_id, command)
        finally:
            await self._backend.discard(tunnel_id, command.request_id)
        return json_answer(msgspec.structs.replace(frame, resp_json=UNSET))

    # ----------------------------------------------------------------------- request answers

    def _accepts_sse(self, request: RequestHead) -> bool:
        """`accepts_sse`, remembered per value for a request with one `Accept` header."""
        values = request.headers.getall(ACCEPT, ())
        if len(values) != 1:
            return accepts_sse(request)
        seen = self._sse_accepts.get(values[0])
        if seen is None:
            seen = accepts_sse(request)
            if len(self._sse_accepts) >= ACCEPTS_KEPT:
                self._sse_accepts.clear()
            self._sse_accepts[values[0]] = seen
        return seen

    async def _answer_request(
        self,
        settings: Settings,
        request: RequestHead,
        tunnel_id: str,
        command: Command,
        rpc_id: Raw,
        stream: EventStream,
    ) -> Reply | None:
        """JSON when the terminal frame comes first (or SSE is not accepted); an SSE
        stream as soon as a notification frame arrives for a caller that accepts it (None: answered there)."""
        sse_ok = self._accepts_sse(request)
        opened = False
        try:
            async with self._deadlines.at(command.deadline):
                while True:
                    frame = await self._backend.next_frame(tunnel_id, command.request_id)
                    if not opened:
                        if frame.is_terminal:
                            return json_answer(self._answer(settings, request, tunnel_id, frame))
                        if not sse_ok or frame.resp_json is UNSET:
                            continue  # a notification the caller cannot receive
                        await stream.open(stream_headers(frame))
                        opened = True
                    if frame.resp_json is not UNSET:
                        await stream.send(sse_event(bytes(frame.resp_json)))
                    if frame.is_terminal:
                        await stream.end()
                        return None
        except TimeoutError:
            if not opened:
                raise CallerTimeout() from None
            await self._end_stream(stream, rpc_id, CallerTimeout.default_message)
            return None
        except RelayError as exc:
            if not opened:
                raise
            await self._end_stream(stream, rpc_id, exc.message)
            return None
        except ConnectionResetError:
            if not opened:
                raise
            return None  # the caller left mid-stream; nobody is there to answer

    async def _end_stream(self, stream: EventStream, rpc_id: Raw, message: str) -> None:
        """Close a stream whose terminal frame will not come with a JSON-RPC error for the request."""
        try:
            await stream.send(sse_event(self._codec.error_response(rpc_id, INTERNAL_ERROR, message)))
            await stream.end()
        except ConnectionResetError:
            pass
