"""Process management for stdio servers: pools, per-client processes, concurrency bounds.
Each is an `Upstream` built from other `Upstream`s; knows nothing of the tunnel.

Owns `processes: N` (a pool of supervised processes, each call to the least
loaded one), `session: per-client` (one process per client session, started
on first use, stopped after an idle timeout, the one idle longest stopped when
the cap is reached) and `max_concurrency` (calls beyond it wait their turn).
Channels use them like any transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from msgspec import UNSET, Raw

from gateway.protocol.errors import UpstreamUnavailable
from gateway.protocol.mcp import Call, Frame, Notify, Reply, UpstreamInfo, tag_id, untag_id
from gateway.protocol.wire import Codec, Headers, JsonRpcMessage, TunnelFailure
from gateway.upstream.base import Upstream

log = logging.getLogger(__name__)

REAP_INTERVAL_MAX_S = 5.0


class Delegate(Upstream):
    """An Upstream that forwards everything to another (the base of the wrappers here)."""

    def __init__(self, inner: Upstream) -> None:
        super().__init__(inner.name, inner._ready_timeout_s)
        self.inner = inner
        self.transport = inner.transport
        self.listeners = inner.listeners  # one list: listeners added here reach the process
        inner.observer = self._relay_event

    def _relay_event(self, _name: str, event: str) -> None:
        self._notify(event)

    @property
    def info(self) -> UpstreamInfo | None:
        return self.inner.info

    @property
    def ready(self) -> bool:
        return self.inner.ready

    @property
    def problem(self) -> str | None:
        return self.inner.problem

    @property
    def needs_authorization(self) -> bool:
        return self.inner.needs_authorization

    async def wait_info(self, credentials: Headers | None = None) -> UpstreamInfo:
        return await self.inner.wait_info(credentials)

    async def oauth_metadata(self, deadline: float | None = None) -> bytes:
        return await self.inner.oauth_metadata(deadline)

    async def verify_credentials(self, credentials: Headers) -> None:
        await self.inner.verify_credentials(credentials)

    @property
    def holds_sessions(self) -> bool:
        return self.inner.holds_sessions

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    def exchange(self, call: Call) -> AsyncIterator[Frame]:
        return self.inner.exchange(call)

    async def respond(self, message: JsonRpcMessage, headers: Headers, own_session: bool) -> Reply:
        return await self.inner.respond(message, headers, own_session)

    async def end_session(self, headers: Headers) -> Reply:
        return await self.inner.end_session(headers)


class Bounded(Delegate):
    """`max_concurrency`: at most `limit` calls run at once; the others wait (their deadline bounds the wait)."""

    def __init__(self, inner: Upstream, limit: int) -> None:
        super().__init__(inner)
        self.limit = limit
        self._gate = asyncio.Semaphore(limit)

    async def exchange(self, call: Call) -> AsyncIterator[Frame]:
        async with self._gate:
            frames = self.inner.exchange(call)
            try:
                async for frame in frames:
                    yield frame
            finally:
                close = getattr(frames, "aclose", None)
                if close is not None:
                    await close()


class StdioPool(Upstream):
    """`processes: N`: N supervised processes of one server; each call goes to the least loaded ready one.

    A request a process sends to a client (sampling, elicitation, roots) gets
    an id naming its process, so the client's answer reaches that process.
    """

    transport = "stdio"

    def __init__(self, name: str, processes: list[Upstream], codec: Codec) -> None:
        super().__init__(name, processes[0]._ready_timeout_s)
        self.processes = processes
        self._codec = codec
        self._load = [0] * len(processes)
        for process in processes:
            process.listeners = self.listeners
            process.observer = self._relay_event

    def _relay_event(self, _name: str, event: str) -> None:
        self._notify(event)

    @property
    def info(self) -> UpstreamInfo | None:
        for process in self.processes:
            if process.info is not None:
                return process.info
        return None

    @property
    def ready(self) -> bool:
        return any(process.ready for process in self.processes)

    @property
    def problem(self) -> str | None:
        if self.ready:
            return None
        return next((p.problem for p in self.processes if p.problem is not None), None)

    async def wait_info(self, credentials: Headers | None = None) -> UpstreamInfo:
        info = self.info
        if info is not None:
            return info
        waiters = [asyncio.ensure_future(process.wait_info()) for process in self.processes]
        try:
            for next_done in asyncio.as_completed(waiters):
                with contextlib.suppress(UpstreamUnavailable):
                    return await next_done
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        raise UpstreamUnavailable.connect(self.name, "dial")

    async def start(self) -> None:
        await asyncio.gather(*(process.start() for process in self.processes), return_exceptions=True)

    async def close(self) -> None:
        await asyncio.gather(*(process.close() for process in self.processes), return_exceptions=True)

    def _pick(self) -> int | None:
        ready = [i for i, process in enumerate(self.processes) if process.ready]
        return min(ready, key=lambda i: self._load[i]) if ready else None

    async def exchange(self, call: Call) -> AsyncIterator[Frame]:
        index = self._pick()
        if index is None:
            await self.wait_info()
            index = self._pick()
            if index is None:
                raise UpstreamUnavailable.connect(self.name, "dial")
        self._load[index] += 1
        frames = self.processes[index].exchange(call)
        try:
            async for frame in frames:
                if isinstance(frame, Notify):
                    frame = self._tag(index, frame)
                yield frame
        finally:
            self._load[index] -= 1
            close = getattr(frames, "aclose", None)
            if close is not None:
                await close()

    def _tag(self, index: int, frame: Notify) -> Notify:
        if b'"id"' not in frame.message:
            return frame
        message = self._codec.message(frame.message)
        if not message.is_request or message.id is UNSET or message.method is UNSET:
            return frame
        return Notify(self._codec.request(tag_id(self._codec, f"p{index}", message.id), message.method, message.params))

    async def respond(self, message: JsonRpcMessage, headers: Headers, own_session: bool) -> Reply:
        found = untag_id(message.id) if message.id is not UNSET else None
        if found is None or not found[0].startswith("p") or not found[0][1:].isdigit():
            return Reply(404)
        index = int(found[0][1:])
        if index >= len(self.processes):
            return Reply(404)
        return await self.processes[index].respond(untagged(message, found[1]), headers, own_session)

    async def end_session(self, headers: Headers) -> Reply:
        return Reply(405)

    @property
    def loads(self) -> list[int]:
        """Calls running on each process (tests and telemetry)."""
        return list(self._load)


@dataclass(slots=True)
class _Lease:
    process: Upstream
    active: int = 0
    """Calls running on the process (its start counts as one): a busy lease is never stopped."""
    last_used: float = 0.0
    stopped: bool = False


class SessionProcess(Delegate):
    """One client session's process, as the channel sees it: calls keep it from being reaped."""

    def __init__(self, inner: Upstream, lease: _Lease, clock: Callable[[], float]) -> None:
        super().__init__(inner)
        self._lease = lease
        self._clock = clock

    async def exchange(self, call: Call) -> AsyncIterator[Frame]:
        lease = self._lease
        if lease.stopped:  # evicted to make room between the lookup and this call
            raise UpstreamUnavailable.closed(self.name)
        lease.active += 1
        lease.last_used = self._clock()
        frames = self.inner.exchange(call)
        try:
            async for frame in frames:
                yield frame
        finally:
            lease.active -= 1
            lease.last_used = self._clock()
            close = getattr(frames, "aclose", None)
            if close is not None:
                await close()

    async def close(self) -> None:
        """The pool owns the process; the channel's view of it closes nothing."""


class ClientProcesses(Delegate):
    """`session: per-client`: a process per client session, and a shared one for sessionless calls.

    A session's process starts on its first call and stops after
    `idle_timeout_s` without one; at `max_sessions` the process idle longest
    is stopped to make room (when every one is busy, the new session is refused).
    A process still stopping counts against the cap until it is gone, and one
    still starting is busy: there are never more than `max_sessions` at once.
    """

    def __init__(
        self,
        shared: Upstream,
        factory: Callable[[], Upstream],
        *,
        max_sessions: int,
        idle_timeout_s: float,
    ) -> None:
        super().__init__(shared)
        self._factory = factory
        self._max = max_sessions
        self._idle_timeout_s = idle_timeout_s
        self._leases: OrderedDict[str, _Lease] = OrderedDict()
        self._starting: dict[str, asyncio.Future[_Lease]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._stopping = 0
        """Processes taken off `_leases` whose stop is not finished: they still hold a slot."""
        self._stopped = asyncio.Condition()

    def _clock(self) -> float:
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name=f"reaper:{self.name}")
        await self.inner.start()

    async def close(self) -> None:
        task, self._reaper = self._reaper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        leases = list(self._leases.values())
        self._leases.clear()
        await asyncio.gather(self.inner.close(), *(lease.process.close() for lease in leases), return_exceptions=True)

    @property
    def sessions(self) -> int:
        return len(self._leases)

    async def for_session(self, session_id: str) -> Upstream:
        """The process of one client session, started (and waited for) on first use."""
        lease = self._leases.get(session_id)
        while lease is None:
            pending = self._starting.get(session_id)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._starting[session_id] = pending
                try:
                    lease = await self._open(session_id)
                except BaseException as exc:
                    pending.set_exception(exc)
                    pending.exception()  # retrieved: waiters get it, nobody else needs to
                    raise
                finally:
                    self._starting.pop(session_id, None)
                pending.set_result(lease)
            else:
                await asyncio.shield(pending)
                lease = self._leases.get(session_id)  # None when stopped again meanwhile: open anew
        self._leases.move_to_end(session_id)
        lease.last_used = self._clock()
        return SessionProcess(lease.process, lease, self._clock)

    async def _open(self, session_id: str) -> _Lease:
        while len(self._leases) + self._stopping >= self._max:
            idle = [(lease.last_used, sid) for sid, lease in self._leases.items() if lease.active == 0]
            if idle:
                _, oldest = min(idle)
                log.info("server %r: stopping the process of the session idle longest to make room", self.name)
                await self._stop(oldest)
            elif self._stopping:
                async with self._stopped:  # a slot frees when a process being stopped is gone
                    await self._stopped.wait()
            else:
                raise UpstreamUnavailable(
                    f"upstream {self.name!r} has no room for another client session ({self._max} busy)",
                    TunnelFailure(
                        source="client_internal", transport_error_kind="unknown", upstream_response_received=False
                    ),
                )
        process = self._factory()
        process.listeners = self.listeners
        process.observer = self._relay_event
        lease = _Lease(process, 1, self._clock())  # busy while it starts: never the one stopped for room
        self._leases[session_id] = lease
        try:
            await process.start()
            await process.wait_info()
            if lease.stopped:  # the session ended while its process started
                raise UpstreamUnavailable.closed(self.name)
        except BaseException:
            if self._leases.get(session_id) is lease:
                self._leases.pop(session_id)
            if not lease.stopped:
                await self._retire(lease)
            raise
        finally:
            lease.active -= 1
            lease.last_used = self._clock()
        log.info("server %r: started a process for a client session (%d running)", self.name, len(self._leases))
        return lease

    async def end(self, session_id: str) -> None:
        """The client ended its session: stop its process."""
        await self._stop(session_id)

    async def _stop(self, session_id: str) -> None:
        lease = self._leases.pop(session_id, None)
        if lease is not None:
            await self._retire(lease)

    async def _retire(self, lease: _Lease) -> None:
        """Stop a process taken off `_leases`; it holds its slot until it is gone."""
        lease.stopped = True
        self._stopping += 1
        try:
            await lease.process.close()
        finally:
            self._stopping -= 1
            async with self._stopped:
                self._stopped.notify_all()

    async def _reap(self) -> None:
        interval = min(self._idle_timeout_s / 2, REAP_INTERVAL_MAX_S)
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            expired = [
                sid
                for sid, lease in self._leases.items()
                if lease.active == 0 and now - lease.last_used >= self._idle_timeout_s
            ]
            for sid in expired:
                log.info("server %r: stopping an idle client session's process", self.name)
                await self._stop(sid)


def untagged(message: JsonRpcMessage, id: Raw) -> JsonRpcMessage:
    """A client's answer under the original id of the request it answers."""
    return JsonRpcMessage(jsonrpc=message.jsonrpc, id=id, result=message.result, error=message.error)
