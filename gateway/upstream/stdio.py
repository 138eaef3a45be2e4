"""The stdio transport: one supervised server process shared by many concurrent calls.
Knows nothing of the tunnel; a server's notifications reach only the call they belong to.

Owns the process (spawned without a shell, stderr logged, restarted with capped
backoff when it dies), the era handshake on each start, and the multiplexing of
concurrent requests over one pipe by remapping JSON-RPC ids and progress
tokens. Notifications go to their call by progress token (log messages as
`_log_owner` says); the rest go to the gateway's log.
Calls in flight when the process dies fail with `transport_closed`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Final

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.config.routing import ServerSpec, StdioSpec
from gateway.protocol.eras import Bridge
from gateway.protocol.errors import UpstreamError, UpstreamProtocolError, UpstreamUnavailable
from gateway.protocol.mcp import Call, Era, Frame, Notify, Reply, UpstreamInfo
from gateway.protocol.wire import METHOD_NOT_FOUND, Codec, Headers, JsonDecoder, JsonRpcMessage, json_headers
from gateway.upstream.base import Upstream, within
from gateway.upstream.environment import ChildEnvironment
from gateway.upstream.framing import IdTable, LineDecoder, Oversized
from gateway.upstream.pipe import LineWriter
from gateway.upstream.process import RestartPacing, end_task, stop_process
from gateway.upstream.spawn import spawn_stdio

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S: Final = 5.0
STOP_GRACE_S: Final = 2.0
BACKOFF_START_S: Final = 0.1
STDERR_IN_PROBLEM: Final = 200
"""Characters of the process's last stderr line kept for `problem` (what an operator sees)."""
"""A process that lived this long resets the restart backoff."""
PROGRESS: Final = "notifications/progress"
LOG_MESSAGE: Final = "notifications/message"
LOG_LEVEL_KEY: Final = b"io.modelcontextprotocol/logLevel"
"""A 2026-07-28 request's `_meta` key asking for the server's log messages about it."""
LOG_DATA_CHARS: Final = 2000
"""How much of an unattributed server log message the gateway's own log keeps."""
PY_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emergency": logging.CRITICAL,
}
CANCELLED: Final = "notifications/cancelled"
BROADCAST: Final = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
    }
)
"""Notifications about the server, not about a call: given to `listeners` when there are any."""


class _Inbox:
    """Frames for the one task waiting on a call (lighter than an `asyncio.Queue`)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[Frame | UpstreamError] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Frame | UpstreamError) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Frame | UpstreamError:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class _Call:
    """One request in flight on the pipe: where its frames go, its client-side id, and whether it
    asked a 2026-07-28 server for log messages."""

    __slots__ = ("client_id", "frames", "logs")

    def __init__(self, client_id: Raw, logs: bool = False) -> None:
        self.client_id = client_id
        self.frames = _Inbox()
        self.logs = logs


class _Progress(msgspec.Struct):
    progressToken: Raw


class _LogMessage(msgspec.Struct):
    level: str = "info"
    logger: str | None = None
    data: Raw = Raw(b"null")


class StdioUpstream(Upstream):
    transport = "stdio"

    def __init__(
        self,
        name: str,
        spec: ServerSpec,
        *,
        bridge: Bridge,
        max_message_bytes: int,
        environment: ChildEnvironment | None = None,
    ) -> None:
        super().__init__(name, spec.startup_timeout_s)
        assert spec.stdio is not None
        self._spec = spec
        self._stdio: StdioSpec = spec.stdio
        self._environment = environment or ChildEnvironment.of(spec.stdio)
        self._bridge = bridge
        self._codec: Codec = bridge.codec
        self._limit = max_message_bytes
        self._ids: IdTable[_Call] = IdTable()
        self._proc: asyncio.subprocess.Process | None = None
        self._stdin: LineWriter | None = None
        self._attempted = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._era_hint: Era | None = None
        self._progress = JsonDecoder(_Progress)
        self._log_message = JsonDecoder(_LogMessage)
        self._server_requests: dict[bytes, Raw] = {}
        """Requests the server sent to a client, by the gateway id the client answers to."""
        self._server_request_seq = 0
        self.restarts = 0
        self.pid: int | None = None
        self._last_stderr: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Spawn the process and wait (bounded) until it answered the handshake or failed."""
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"stdio-supervisor:{self.name}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), self._spec.startup_timeout_s)

    async def close(self) -> None:
        task, self._supervisor = self._supervisor, None
        await end_task(task)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        pacing = RestartPacing(BACKOFF_START_S, self._spec.restart_backoff_max_s)
        while True:
            began = loop.time()
            try:
                await self._run_once()
            except OSError as exc:
                log.error("stdio server %r could not be started: %s", self.name, exc.strerror or exc)
                self._problem = f"could not be started ({exc.strerror or exc})"
            except Exception:
                log.exception("stdio server %r: supervisor error", self.name)
            finally:
                self._down()
                self._fail_all(UpstreamUnavailable.closed(self.name))
            self._attempted.set()
            delay = pacing.after(loop.time() - began)
            log.warning("stdio server %r stopped; restarting in %.1fs", self.name, delay)
            await asyncio.sleep(delay)
            self.restarts += 1
            self._notify("restart")

    async def _run_once(self) -> None:
        proc, stderr_done = await spawn_stdio(
            self._stdio.executable(sys.executable),
            self._stdio.args,
            on_stderr_line=self._log_stderr,
            env=self._environment.for_spawn(),
            cwd=self._stdio.cwd,
        )
        assert proc.stdin is not None
        self._proc, self.pid, self._stdin = proc, proc.pid, LineWriter(proc.stdin)
        log.info("stdio server %r started (pid %d)", self.name, proc.pid)
        try:
            async with asyncio.TaskGroup() as tasks:
                assert proc.stdout is not None
                # The handshake runs beside the reading, which this task does itself (one task per idle
                # server) until stdout closes: the process exited, or was stopped after a failed handshake.
                starting = tasks.create_task(self._start_session(proc))
                await self._read(proc.stdout)
                problem = await starting
                code = await proc.wait()
                self._down()  # at once: a call from now on waits for the restart instead of a dead pipe
                log.warning("stdio server %r exited with status %s", self.name, code)
                await stderr_done.wait()
            # After the readers reached EOF: the last stderr line is often why it died.
            self._problem = self._with_stderr(problem or f"exited with status {code}")
        finally:
            self._proc = self._stdin = None
            await self._stop(proc)

    async def _start_session(self, proc: asyncio.subprocess.Process) -> str | None:
        """The handshake: the server is up when it succeeds; otherwise its process is stopped and the
        problem returned (None when the exit status will say more)."""
        info = await self._handshake_or_exit(proc)
        if info is None:
            problem = "did not complete the MCP handshake" if proc.returncode is None else None
            await self._stop(proc)  # alive but mute, or gone: either way stdout closes and reading ends
            return problem
        self._up(info)
        self._attempted.set()
        return None

    async def _handshake_or_exit(self, proc: asyncio.subprocess.Process) -> UpstreamInfo | None:
        """The handshake, bounded by `startup_timeout_s` and raced against the process's exit:
        a server that dies mid-handshake is noticed at once, not when the bound expires."""
        handshake = asyncio.ensure_future(self._handshake())
        exited = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait(
                (handshake, exited), timeout=self._spec.startup_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if handshake in done:
                try:
                    return handshake.result()
                except (UpstreamError, msgspec.MsgspecError):
                    log.error("stdio server %r did not complete the MCP handshake", self.name)
            elif exited in done:
                log.error("stdio server %r exited during the MCP handshake", self.name)
            else:
                log.error("stdio server %r did not complete the MCP handshake in time", self.name)
            return None
        finally:
            for task in (handshake, exited):
                task.cancel()
            await asyncio.gather(handshake, exited, return_exceptions=True)

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """Close stdin, then SIGTERM, then SIGKILL, each after a grace period."""
        await stop_process(proc, STOP_GRACE_S)

    async def _handshake(self) -> UpstreamInfo:
        """Learn the era: `server/discover` first, `initialize` when that is not answered as modern."""
        if self._era_hint is not Era.LEGACY:
            self._era_hint = Era.LEGACY  # if the probe kills the process, the next start skips it
            try:
                reply = await asyncio.wait_for(
                    self._request("server/discover", self._bridge.discover_params()), PROBE_TIMEOUT_S
                )
            except TimeoutError:
                reply = None
            if reply is not None and reply.result is not UNSET:
                info = self._bridge.info_from_discover(reply.result)
                if info is not None:
                    self._era_hint = Era.MODERN
                    return info
        reply = await self._request("initialize", self._bridge.initialize_params())
        if reply.result is UNSET:
            raise UpstreamProtocolError(self.name, "invalid_protocol_response")
        info = self._bridge.info_from_initialize(reply.result)
        await self._write(self._codec.notification("notifications/initialized", UNSET))
        return info

    async def _request(self, method: str, params: Raw) -> JsonRpcMessage:
        """A request of the gateway's own (handshake): returns the decoded response."""
        call = _Call(Raw(b"null"))
        id = self._ids.issue(call)
        try:
            await self._write(self._codec.request(Raw(str(id).encode()), method, params))
            frame = await call.frames.get()
            while isinstance(frame, Notify):
                frame = await call.frames.get()
            if isinstance(frame, UpstreamError):
                raise frame
            return self._codec.message(frame.body)
        finally:
            self._ids.retire(id)

    # ------------------------------------------------------------------ calls

    @property
    def pending(self) -> int:
        return len(self._ids)

    def exchange(self, call: Call) -> AsyncIterator[Frame]:
        return within(self._exchange(call), self._spec.request_timeout_s, self.name)

    async def _exchange(self, call: Call) -> AsyncIterator[Frame]:
        info = await self.wait_info()
        if call.id is None:
            await self._write(self._codec.notification(call.method, call.params))
            yield Reply(202)
            return
        asks_logs = info.era is Era.MODERN and call.params is not UNSET and LOG_LEVEL_KEY in bytes(call.params)
        pending = _Call(call.id, asks_logs)
        id = self._ids.issue(pending)
        params, token = self._rewrite_progress_token(call.params, pending)
        answered = False
        try:
            await self._write(self._codec.request(Raw(str(id).encode()), call.method, params))
            while True:
                frame = await pending.frames.get()
                if isinstance(frame, UpstreamError):
                    answered = True  # the process is gone or spoke garbage: nothing to cancel
                    raise frame
                if isinstance(frame, Reply):
                    answered = True
                yield frame
                if answered:
                    return
        finally:
            self._ids.retire(id, token)
            if not answered:
                # Abandoned (deadline or cancellation): retire the id, tell the server, keep the process.
                self._write_nowait(
                    self._codec.notification(
                        CANCELLED, Raw(b'{"requestId":%d,"reason":"cancelled by the gateway"}' % id)
                    )
                )

    async def respond(self, message: JsonRpcMessage, headers: Headers, own_session: bool) -> Reply:
        """A client's answer to a request this server sent: back to the server under its own id."""
        key = bytes(message.id) if message.id is not UNSET else b""
        original = self._server_requests.pop(key, None)
        if original is None:
            return Reply(404)
        await self._write(self._codec.response(original, message))
        return Reply(202)

    def _write_nowait(self, line: bytes) -> None:
        """Best effort, without waiting for the pipe (used where the caller cannot wait)."""
        stdin = self._stdin
        if stdin is not None and not stdin.closed:
            stdin.write(line)

    async def end_session(self, headers: Headers) -> Reply:
        """A shared stdio process has no client sessions to close."""
        return Reply(405)

    async def _write(self, line: bytes) -> None:
        stdin = self._stdin
        if stdin is None or stdin.closed:
            raise UpstreamUnavailable.closed(self.name, "closed_pipe")
        stdin.write(line)
        try:
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise UpstreamUnavailable.closed(self.name, "closed_pipe") from exc

    def _rewrite_progress_token(self, params: Raw | UnsetType, call: _Call) -> tuple[Raw | UnsetType, str | None]:
        """Give the server a gateway-unique progress token, so clients' tokens never collide."""
        if params is UNSET or b"progressToken" not in bytes(params):
            return params, None
        try:
            members = self._codec.members(params)
            meta = self._codec.members(members.get("_meta", b"null"))
        except msgspec.MsgspecError:  # params or `_meta` not an object: no progress token to rewrite
            return params, None
        original = meta.get("progressToken")
        if original is None:
            return params, None
        token = self._ids.issue_token(call, bytes(original))
        meta["progressToken"] = Raw(self._codec.encode(token))
        members["_meta"] = Raw(self._codec.encode(meta))
        return Raw(self._codec.encode(members)), token

    # ------------------------------------------------------------------ reading

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        decoder = LineDecoder(self._limit)
        while chunk := await stdout.read(65536):
            for line in decoder.feed(chunk):
                if isinstance(line, Oversized):
                    log.warning("stdio server %r sent a %d-byte line over the limit", self.name, line.length)
                    self._fail_oversized(line)
                    continue
                await self._route(line)

    async def _route(self, line: bytes) -> None:
        try:
            message = self._codec.message(line)
        except msgspec.MsgspecError:
            log.warning("stdio server %r wrote a line that is not JSON-RPC", self.name)
            self._fail_lone(UpstreamProtocolError(self.name, "malformed_json"))
            return
        if message.is_response:
            self._deliver_response(message)
        elif message.is_notification:
            self._deliver_notification(message, line)
        elif message.is_request:
            await self._forward_request(message)

    async def _forward_request(self, message: JsonRpcMessage) -> None:
        """A server-to-client request (sampling, elicitation, roots) goes to the client whose call is
        running, under a gateway id; with several calls in flight its owner is unknowable on a pipe,
        so the server gets an error at once instead of waiting forever."""
        assert message.id is not UNSET
        assert message.method is not UNSET
        calls = self._ids.owners()
        if len(calls) != 1:
            with contextlib.suppress(UpstreamError):
                await self._write(
                    self._codec.error_response(
                        message.id, METHOD_NOT_FOUND, "the gateway cannot tell which client this request is for"
                    )
                )
            return
        self._server_request_seq += 1
        key = b'"srv-%d"' % self._server_request_seq
        self._server_requests[key] = Raw(bytes(message.id))
        calls[0].frames.put_nowait(Notify(self._codec.request(Raw(key), message.method, message.params)))

    def _deliver_response(self, message: JsonRpcMessage) -> None:
        try:
            id = int(bytes(message.id)) if message.id is not UNSET else -1
        except ValueError:
            id = -1
        call = self._ids.owner(id)
        if call is None:
            log.debug("stdio server %r answered retired or unknown id", self.name)
            return
        call.frames.put_nowait(Reply(200, self._codec.response(call.client_id, message), json_headers()))

    def _deliver_notification(self, message: JsonRpcMessage, line: bytes) -> None:
        """Each notification to the call it belongs to, never to whichever call happens to be running:
        a pipe carries no related-request id, so progress goes by its (gateway-unique) token and log
        messages as `_log_owner` says; what belongs to no call is logged or dropped."""
        if message.method == PROGRESS:
            if not self._deliver_progress(message.params):
                log.debug("stdio server %r sent progress for no running call; dropped", self.name)
            return
        if message.method == LOG_MESSAGE:
            owner = self._log_owner()
            if owner is not None:
                owner.frames.put_nowait(Notify(line))
            else:
                self._log_unattributed(message.params)
            return
        if message.method in BROADCAST:
            if self.listeners:
                for listener in list(self.listeners):
                    listener(line)
                return
            calls = self._ids.owners()
            if len(calls) == 1:  # about the server, not about a call: the one running call hears of it
                calls[0].frames.put_nowait(Notify(line))
                return
        log.debug("stdio server %r sent %s that belongs to no call; dropped", self.name, message.method)

    def _deliver_progress(self, params: Raw | UnsetType) -> bool:
        if params is UNSET:
            return False
        try:
            token = self._progress.decode(params).progressToken
            owner = self._ids.token_owner(msgspec.json.decode(token)) if bytes(token)[:1] == b'"' else None
            if owner is None:
                return False
            call, original = owner
            members = self._codec.members(params)
        except msgspec.MsgspecError:
            return False
        members["progressToken"] = Raw(original)
        call.frames.put_nowait(Notify(self._codec.notification(PROGRESS, Raw(self._codec.encode(members)))))
        return True

    def _log_owner(self) -> _Call | None:
        """The call a log message is about: a 2026-07-28 server logs only for requests whose `_meta`
        asked (`io.modelcontextprotocol/logLevel`), so when exactly one such call is running it is
        that one's. Otherwise (several asked, or a handshake-era server, which logs for whom it
        likes) nobody's: a guess would show one client another's messages."""
        info = self._info
        if info is None or info.era is not Era.MODERN:
            return None
        asking = [call for call in self._ids.owners() if call.logs]
        return asking[0] if len(asking) == 1 else None

    def _log_unattributed(self, params: Raw | UnsetType) -> None:
        """A server log message that belongs to no call goes to the gateway's own log."""
        try:
            entry = self._log_message.decode(params) if params is not UNSET else _LogMessage()
        except msgspec.MsgspecError:
            log.debug("stdio server %r sent a malformed log message; dropped", self.name)
            return
        text = bytes(entry.data).decode(errors="replace")[:LOG_DATA_CHARS]
        level = PY_LEVELS.get(entry.level, logging.INFO)
        log.log(level, "[%s] server log%s: %s", self.name, f" ({entry.logger})" if entry.logger else "", text)

    def _fail_oversized(self, line: Oversized) -> None:
        """An answer too large to relay fails the call it answers (named by the id at its start), even
        among others in flight; a line that does not show whose it is fails the call only if it is alone."""
        error = UpstreamProtocolError(self.name, "response_body_too_large")
        id = line.response_id
        call = self._ids.owner(id) if id is not None else None
        if call is not None:
            call.frames.put_nowait(error)
        else:
            self._fail_lone(error)

    def _fail_lone(self, error: UpstreamError) -> None:
        """A message that cannot be attributed fails the call only when exactly one is in flight."""
        calls = self._ids.owners()
        if len(calls) == 1:
            calls[0].frames.put_nowait(error)

    def _fail_all(self, error: UpstreamError) -> None:
        self._server_requests.clear()
        for call in self._ids.clear():
            call.frames.put_nowait(error)

    def _log_stderr(self, line: bytes) -> None:
        text = line.decode(errors="replace").rstrip()
        log.info("[%s] %s", self.name, text)
        if text:
            self._last_stderr = text[:STDERR_IN_PROBLEM]

    def _with_stderr(self, problem: str) -> str:
        """`problem`, and the last line the process wrote to stderr (often the reason it died)."""
        last, self._last_stderr = self._last_stderr, None
        return f"{problem}: {last}" if last else problem
