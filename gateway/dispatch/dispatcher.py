"""One command's life: deadline, limits, channel, response frames, and the one place an error becomes
a wire response. Parses no configuration; knows channels, not transports.

Owns the bounded set of commands in flight (the capacity the poller asks
for) and what each command type becomes (a 2026-07-28 request is checked by
`gateway.protocol.edge` first; `oauth_discovery` asks the channel for its
server's OAuth metadata).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import http
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Final, Protocol

import msgspec
from msgspec import UNSET, Raw

from gateway.channels.channel import ServedChannel
from gateway.channels.rules import Route
from gateway.dispatch.budgets import Budgets, Caller, token_key
from gateway.dispatch.limits import Limits, Subject
from gateway.observe.hooks import NOOP, Telemetry
from gateway.observe.logs import REQUEST_ID
from gateway.observe.records import CallRecord, CallSinks, Outcome
from gateway.protocol.edge import Edge
from gateway.protocol.eras import NAMED_METHODS
from gateway.protocol.errors import (
    CommandError,
    CommandGone,
    InvalidRequestParams,
    RateLimited,
    UnknownChannel,
    UpstreamError,
    UpstreamHttpError,
)
from gateway.protocol.headers import AUTHORIZATION, SESSION_HEADER
from gateway.protocol.mcp import Frame, Notify, Reply, abandon
from gateway.protocol.wire import (
    COMMAND_JSONRPC,
    COMMAND_OAUTH_DISCOVERY,
    COMMAND_SESSION_END,
    INVALID_REQUEST,
    NULL_ID,
    RESP_JSONRPC,
    RESP_NOTIFY,
    RESP_NOTIFY_ACK,
    RESP_OAUTH_DISCOVERY,
    RESP_SESSION_END,
    Codec,
    Headers,
    JsonRpcMessage,
    PolledCommand,
    TunnelFailure,
    TunnelResponsePayload,
    allowed_response_headers,
    expired,
    header_value,
    json_headers,
    parse_response_timeout,
)

log = logging.getLogger(__name__)

CLIENT_INTERNAL: Final = TunnelFailure(source="client_internal", upstream_response_received=False)
MAX_PENDING_NOTIFY: Final = 256
"""Notifications of one call waiting for their POST; more are dropped (the relay's backlog is as deep)."""


class Responder(Protocol):
    """Delivers response frames to the control plane (the tunnel's `ControlPlane.post`)."""

    async def post(self, body: bytes, shard_token: str, *, terminal: bool) -> bool: ...


class Dispatcher:
    """Runs polled commands concurrently, at most `max_inflight` asked for at a time."""

    def __init__(
        self,
        channels: Mapping[str, ServedChannel],
        responder: Responder,
        codec: Codec,
        max_inflight: int,
        limits: Limits | None = None,
        telemetry: Telemetry = NOOP,
        *,
        tunnel: str = "",
        records: CallSinks | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self._channels = channels
        self._budgets = budgets
        self._tunnel = tunnel
        self.records = records if records is not None else CallSinks()
        """Where each finished JSON-RPC command's `CallRecord` goes (the audit log, the status page)."""
        self._notes: dict[str, _Note] = {}
        self._limits = limits
        self._telemetry = telemetry
        self._responder = responder
        self._codec = codec
        self._edge = Edge(codec)
        self._max = max_inflight
        self._running = 0
        self._backlog: collections.deque[tuple[PolledCommand, float]] = collections.deque()
        self._parked: list[asyncio.Future[tuple[PolledCommand, float]]] = []  # idle workers
        self._workers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.completed = 0

    def replace_channels(
        self, channels: Mapping[str, ServedChannel], limits: Limits | None = None, budgets: Budgets | None = None
    ) -> None:
        """Serve new commands from these channels, limits and budgets (a reload); running ones keep theirs."""
        self._channels = channels
        if limits is not None:
            self._limits = limits
        if budgets is not None:
            self._budgets = budgets

    def limit_counts(self) -> Mapping[tuple[str, str], int]:
        """The current limits' (label, admitted|waited|rejected) counts (telemetry reads them)."""
        return self._limits.counts if self._limits is not None else {}

    # ------------------------------------------------------------------ capacity

    @property
    def inflight(self) -> int:
        """Commands running or waiting for a worker."""
        return self._running + len(self._backlog)

    @property
    def free(self) -> int:
        return max(0, self._max - self.inflight)

    async def wait_capacity(self, reserved: int = 0) -> None:
        """Until more slots are free than `reserved`."""
        while self.free <= reserved:
            self._changed.clear()
            await self._changed.wait()

    def capacity_changed(self) -> None:
        self._changed.set()

    def submit(self, command: PolledCommand, received_at: float) -> None:
        """Hand a command to an idle worker, or a new one up to `max_inflight` workers; past that it
        waits its turn (a batch larger than asked for still runs whole)."""
        self._running += 1
        self._idle.clear()
        while self._parked:
            worker = self._parked.pop()
            if not worker.done():
                worker.set_result((command, received_at))
                return
        if len(self._workers) < self._max:
            task = asyncio.create_task(self._work(command, received_at), name="command-worker")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        else:
            self._running -= 1
            self._backlog.append((command, received_at))

    async def _work(self, command: PolledCommand, received_at: float) -> None:
        """A worker: runs commands one after another, parks between them. Lives until `close()`."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._run(command, received_at)
            finally:
                self._running -= 1
                self.completed += 1
                self._changed.set()
            if self._backlog:
                command, received_at = self._backlog.popleft()
                self._running += 1
                continue
            if not self._running:
                self._idle.set()
            parked: asyncio.Future[tuple[PolledCommand, float]] = loop.create_future()
            self._parked.append(parked)
            command, received_at = await parked

    async def drain(self, grace_s: float) -> None:
        """Let in-flight commands finish for up to `grace_s`, then cancel the rest."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        await self.close()

    async def close(self) -> None:
        """Stop every worker (a running command is cancelled; queued ones are dropped)."""
        self._backlog.clear()
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._parked.clear()

    # ------------------------------------------------------------------ one command

    async def _run(self, command: PolledCommand, received_at: float) -> None:
        REQUEST_ID.set(command.request_id)  # this command's log lines carry it
        timeout = parse_response_timeout(command.response_timeout)
        deadline = None if timeout is None else received_at + timeout
        if expired(deadline, asyncio.get_running_loop().time()):
            log.info("command %s expired before it ran; dropped", command.request_id)
            return
        note = None
        if self.records and command.command_type == COMMAND_JSONRPC:
            note = self._notes[command.request_id] = _Note(time.time(), len(command.jsonrpc) if command.jsonrpc else 0)
        try:
            with self._telemetry.command(command, received_at):
                async with asyncio.timeout_at(deadline):
                    await self._serve(command, deadline)
        except TimeoutError:
            log.info("command %s reached its deadline; abandoned without a response", command.request_id)
            if note is not None:
                note.outcome = "timeout"
        except CommandGone:
            log.info("command %s: its caller left (404 from the control plane); call cancelled", command.request_id)
            if note is not None:
                note.outcome = "cancelled"
        except Exception:
            log.exception("command %s failed inside the gateway", command.request_id)
            if note is not None:
                note.outcome, note.error = "error", CLIENT_INTERNAL.source
        finally:
            if note is not None:
                del self._notes[command.request_id]
                self.records.record(note.record(self._tunnel, command, received_at))

    async def _serve(self, command: PolledCommand, deadline: float | None) -> None:
        if command.command_type == COMMAND_SESSION_END:
            await self._end_session(command)
        elif command.command_type == COMMAND_JSONRPC:
            await self._jsonrpc(command)
        elif command.command_type == COMMAND_OAUTH_DISCOVERY:
            await self._oauth_discovery(command, deadline)
        else:
            log.warning(
                "command %s has unknown command_type %r; not answered", command.request_id, command.command_type
            )

    async def _end_session(self, command: PolledCommand) -> None:
        channel = self._channels.get(command.channel)
        if channel is None:
            reply = Reply(404)
        else:
            try:
                reply = await channel.end_session(command.headers)
            except UpstreamError as exc:
                reply = Reply(exc.resp_code)
        await self._post(command, RESP_SESSION_END, reply.status, headers=reply.headers)

    async def _oauth_discovery(self, command: PolledCommand, deadline: float | None) -> None:
        """The channel's server's OAuth metadata (RFC 9728, RFC 8414) as one `oauth_discovery_response`
        (the official client's extension of the contract); a failure is an API error object."""
        try:
            channel = self._channels.get(command.channel)
            if channel is None:
                raise UnknownChannel(command.channel)
            body = await channel.oauth_discovery(deadline)
        except CommandGone:
            raise
        except (CommandError, UpstreamError) as exc:
            await self._fail(command, None, exc)
            return
        except Exception as exc:  # a gateway bug: the command still gets its one answer
            log.exception("command %s failed inside the gateway", command.request_id)
            await self._fail(command, None, exc)
            return
        await self._post(command, RESP_OAUTH_DISCOVERY, 200, body, json_headers())

    async def _jsonrpc(self, command: PolledCommand) -> None:
        message = self._decode(command)
        if message is None:
            note = self._notes.get(command.request_id)
            if note is not None:
                note.outcome, note.error = "rejected", str(INVALID_REQUEST)
            body = self._codec.error_response(NULL_ID, INVALID_REQUEST, "the command carries no valid JSON-RPC message")
            await self._post(command, RESP_JSONRPC, 400, body)
            return
        self._telemetry.describe(message)
        expects_answer = message.is_request
        note = self._notes.get(command.request_id)
        if note is not None:
            self._describe(note, command, message)
        try:
            if message.method is not UNSET and message.params is not UNSET and not _object_or_null(message.params):
                # MCP 2025-11-25 / 2026-07-28 schema: `params` is an object. Servers drop other shapes
                # unanswered (the official SDK does), so the gateway answers for them.
                raise InvalidRequestParams("params must be a JSON object")
            channel = self._channels.get(command.channel)
            if channel is None:
                raise UnknownChannel(command.channel)
            modern = self._edge.check(message, command.headers)
            async with self._admit(command, message, channel, note):
                frames = aiter(channel.run(message, command.headers))
                reply = await self._frames(command, frames, expects_answer)
            await self._answer(command, expects_answer, self._edge.answer(reply) if modern else reply)
            await _settle(frames, command.request_id)
        except CommandGone:
            raise  # the control plane no longer waits for this command: nothing more is posted
        except (CommandError, UpstreamError) as exc:
            await self._fail(command, message, exc)
        except Exception as exc:  # a gateway bug: the command still gets its one answer
            log.exception("command %s failed inside the gateway", command.request_id)
            await self._fail(command, message, exc)

    async def _frames(self, command: PolledCommand, frames: AsyncIterator[Frame], expects_answer: bool) -> Reply:
        """A call's terminal Reply, its notifications posted on the way.

        Until the first notification the call runs in this task (the common case: one frame).
        From then on a helper task pulls the frames while this one posts them, so that a 404 on a
        notification (CommandGone: the caller left) cancels the call where it waits, through every
        layer down to the upstream (`notifications/cancelled`, or the HTTP stream closed), and no
        late answer is posted."""
        async for frame in frames:
            if isinstance(frame, Reply):
                return frame
            if expects_answer:
                post = functools.partial(self._post, command, RESP_NOTIFY, 200)
                return await _Notifications(post, command.request_id, frames, frame).run()
        raise _unanswered()

    def _describe(self, note: _Note, command: PolledCommand, message: JsonRpcMessage) -> None:
        """What a call record says of the request: method, target name, server, session, tenant."""
        method = message.method if message.method is not UNSET else "response"
        note.method = method
        key = NAMED_METHODS.get(method)
        if key is not None and message.params is not UNSET:
            note.name = self._codec.string_member(message.params, key)
        channel = self._channels.get(command.channel)
        if channel is not None and message.method is not UNSET:
            note.route = channel.route(message, command.headers)
            note.server = note.route.server
        note.session = header_value(command.headers, SESSION_HEADER)
        limits = self._limits
        if limits is not None and limits.tenant_header:
            note.tenant = header_value(command.headers, limits.tenant_header)

    def _admit(
        self, command: PolledCommand, message: JsonRpcMessage, channel: ServedChannel, note: _Note | None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """The budgets and limits a request must pass (none for notifications and answers); the routing
        decision is the call record's when it has one (routed once per command). A budget that refuses
        does so before the limits (no wait for a call that will be refused); a call counts against the
        budgets only once the limits admit it."""
        limits, budgets = self._limits, self._budgets
        spending: tuple[str, Caller] | None = None
        if budgets and message.is_request and message.method is not UNSET:
            tenant_header = limits.tenant_header if limits is not None else None
            caller = Caller(
                channel=command.channel,
                tenant=header_value(command.headers, tenant_header) if tenant_header else None,
                client_token=token_key(header_value(command.headers, AUTHORIZATION)),
            )
            spending = (message.method, caller)
        if limits is None or not limits.enabled or not message.is_request:
            if budgets is not None and spending is not None:
                budgets.spend(*spending)
            return contextlib.nullcontext()
        tool = None
        if message.method == "tools/call" and message.params is not UNSET:
            tool = self._codec.string_member(message.params, "name")
        tenant_header = limits.tenant_header
        tenant = header_value(command.headers, tenant_header) if tenant_header else None
        if tenant is None:
            tenant = header_value(command.headers, SESSION_HEADER)
        route = note.route if note is not None and note.route is not None else channel.route(message, command.headers)
        subject = Subject(
            channel=command.channel,
            server=route.server,
            tool=tool,
            route=route.limit_key,
            tenant=tenant,
        )
        if budgets is None or spending is None:
            return limits.admit(subject)
        budgets.check(*spending)
        return _spent_once_admitted(limits.admit(subject), budgets, *spending)

    async def _answer(self, command: PolledCommand, expects_answer: bool, reply: Reply) -> None:
        headers = allowed_response_headers(reply.headers)
        if not expects_answer:
            await self._post(command, RESP_NOTIFY_ACK, reply.status, headers=headers)
        elif not reply.body:
            failure = TunnelFailure(
                source="protocol", transport_error_kind="response_body_missing", upstream_response_received=True
            )
            await self._fail(command, None, UpstreamError("upstream sent no response body", failure))
        else:
            await self._post(command, RESP_JSONRPC, reply.status, reply.body, headers)

    async def _fail(self, command: PolledCommand, message: JsonRpcMessage | None, exc: Exception) -> None:
        """The one place an error becomes a wire response (a 401's or 403's `WWW-Authenticate` goes with
        it, unlogged: the client needs it to authorize)."""
        log.info("command %s failed: %s", command.request_id, exc)
        if isinstance(exc, RateLimited):
            self._telemetry.rate_limit(exc.limit, "rejected")
        note = self._notes.get(command.request_id)
        if note is not None:
            note.failed(exc)
        if command.command_type == COMMAND_OAUTH_DISCOVERY:
            await self._discovery_failed(command, exc)
            return
        challenge = exc.headers if isinstance(exc, UpstreamHttpError) else None
        if message is not None and not message.is_request:
            status = exc.resp_code if isinstance(exc, UpstreamError) else 400
            await self._post(command, RESP_NOTIFY_ACK, status, headers=challenge)
            return
        id = message.id if message is not None and message.id is not UNSET else NULL_ID
        if isinstance(exc, UpstreamError):
            status = exc.resp_code
            body = self._codec.failure_response(id, _reason(status), exc.failure)
        elif isinstance(exc, CommandError):
            status = exc.status
            body = self._codec.error_response(id, exc.code, str(exc), exc.data)
        else:
            status = 500
            body = self._codec.failure_response(id, _reason(status), CLIENT_INTERNAL)
        await self._post(command, RESP_JSONRPC, status, body, challenge)

    async def _discovery_failed(self, command: PolledCommand, exc: Exception) -> None:
        """An `oauth_discovery` failure as the official client answers one: an API error object."""
        if isinstance(exc, UpstreamError):
            status, code, message = exc.resp_code, exc.api_code, str(exc)
        elif isinstance(exc, CommandError):
            status, code, message = exc.status, exc.api_code, str(exc)
        else:
            status, code, message = 500, "internal_error", "the gateway failed to answer the discovery"
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = self._codec.api_error(message, kind, code)
        await self._post(command, RESP_OAUTH_DISCOVERY, status, body, json_headers())

    def _decode(self, command: PolledCommand) -> JsonRpcMessage | None:
        if command.jsonrpc is UNSET:
            return None
        try:
            message = self._codec.client_message(command.jsonrpc)
        except msgspec.MsgspecError:
            return None
        if message.method is UNSET and not message.is_response:
            return None
        return message

    async def _post(
        self,
        command: PolledCommand,
        resp_type: str,
        status: int,
        body: bytes | None = None,
        headers: Headers | None = None,
    ) -> bool:
        payload = TunnelResponsePayload(
            request_id=command.request_id,
            channel=command.channel,
            resp_code=status,
            resp_type=resp_type,
            resp_json=Raw(body) if body else UNSET,
            resp_headers=headers if headers else UNSET,
        )
        if resp_type != RESP_NOTIFY:
            note = self._notes.get(command.request_id)
            if note is not None:
                note.status, note.bytes_out = status, len(body) if body else 0
        with self._telemetry.post(resp_type, status, body, headers) as trace:
            try:
                delivered = await self._responder.post(
                    self._codec.encode(payload), command.shard_token, terminal=resp_type != RESP_NOTIFY
                )
            except CommandGone:
                trace.delivered(False)
                gone = True
            else:
                trace.delivered(delivered)
                gone = False
        if gone:
            raise CommandGone()
        return delivered


class _Note:
    """A JSON-RPC command's call record while it runs (filled in as the dispatcher learns more)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "error",
        "method",
        "name",
        "outcome",
        "route",
        "server",
        "session",
        "started",
        "status",
        "tenant",
    )

    def __init__(self, started: float, bytes_in: int) -> None:
        self.started, self.bytes_in = started, bytes_in
        self.method = "invalid"
        self.outcome: Outcome = "ok"
        self.status = self.bytes_out = 0
        self.name: str | None = None
        self.route: Route | None = None
        self.server: str | None = None
        self.session: str | None = None
        self.tenant: str | None = None
        self.error: str | None = None

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, UpstreamError):
            self.outcome, self.error = "error", exc.failure.source
        elif isinstance(exc, RateLimited):
            self.outcome, self.error = "rejected", exc.limit
        elif isinstance(exc, CommandError):
            self.outcome, self.error = "rejected", str(exc.code)
        else:
            self.outcome, self.error = "error", CLIENT_INTERNAL.source

    def record(self, tunnel: str, command: PolledCommand, received_at: float) -> CallRecord:
        duration = max(0.0, asyncio.get_running_loop().time() - received_at)
        return CallRecord(
            time=self.started,
            tunnel=tunnel,
            channel=command.channel,
            method=self.method,
            outcome=self.outcome,
            status=self.status,
            duration_s=duration,
            server=self.server,
            name=self.name,
            session=self.session,
            tenant=self.tenant,
            error=self.error,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
        )


@contextlib.asynccontextmanager
async def _spent_once_admitted(
    admitted: contextlib.AbstractAsyncContextManager[None], budgets: Budgets, method: str, caller: Caller
) -> AsyncIterator[None]:
    """The limits' admission, then the budgets' count (a call the limits refuse counts against no budget)."""
    async with admitted:
        budgets.spend(method, caller)
        yield


async def _settle(frames: AsyncIterator[Frame], request_id: str) -> None:
    """End a call's frames after its Reply was posted: one more step lets every layer return as it does
    at its end (a generator left suspended would be finalized by the loop in a task and a wake-up of
    its own, several per call). A stream that goes on past its Reply is closed; what it raises now
    is logged (its answer is already out)."""
    try:
        await anext(frames)
    except StopAsyncIteration:
        return
    except Exception:
        log.exception("command %s: the call's frames failed after its answer", request_id)
        return
    await abandon(frames)


def _object_or_null(raw: Raw) -> bool:
    """Whether a decoded raw JSON value (no leading whitespace) is an object or null."""
    return bytes(memoryview(raw)[:1]) in (b"{", b"n")


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Bad Gateway"


class _Notifications:
    """One call's notification frames, posted in order while a helper task pulls them from the call.

    Owns the helper task: it is cancelled (and awaited) whenever posting ends early: the control
    plane's 404 (the caller left), the deadline, a shutdown. Notifications pile up only to
    `MAX_PENDING_NOTIFY` while a POST is slow (beyond that they are dropped, as undeliverable ones are).
    """

    def __init__(
        self, post: Callable[[bytes], Awaitable[bool]], request_id: str, frames: AsyncIterator[Frame], first: Notify
    ) -> None:
        self._post = post
        self._request_id = request_id
        self._frames = frames
        self._pending: collections.deque[Notify] = collections.deque([first])
        self._wake = asyncio.Event()

    async def run(self) -> Reply:
        puller = asyncio.create_task(self._pull(), name="command-frames")
        puller.add_done_callback(lambda _: self._wake.set())
        deliverable = True
        try:
            while True:
                while self._pending:
                    frame = self._pending.popleft()
                    if deliverable:
                        deliverable = await self._post(frame.message)
                if puller.done():
                    return puller.result()
                self._wake.clear()
                await self._wake.wait()
        finally:
            if not puller.done():
                puller.cancel()
                await asyncio.wait([puller])

    async def _pull(self) -> Reply:
        async for frame in self._frames:
            if isinstance(frame, Reply):
                return frame
            if len(self._pending) < MAX_PENDING_NOTIFY:
                self._pending.append(frame)
                self._wake.set()
            else:
                log.debug("command %s: a notification was dropped (posting is behind)", self._request_id)
        raise _unanswered()


def _unanswered() -> UpstreamError:
    return UpstreamError("upstream ended the call without an answer", CLIENT_INTERNAL)
