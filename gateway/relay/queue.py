"""Queue backends: where commands wait for a poll and frames wait for their MCP caller.
The `QueueBackend` interface and the in-memory backend; no HTTP here.

Owns the `QueueBackend` interface (`MemoryQueue` here, `RedisQueue` in
redis_queue.py), the queued `Command` record, a caller's wait for its terminal frame
(`terminal_frame`) and the in-memory backend: one
bounded FIFO per tunnel, waiting polls, the in-flight table keyed by request_id
and proc_affinity session routing (rules in affinity.py).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Final, Literal

from msgspec import UNSET, Raw, Struct, UnsetType

from gateway.protocol.wire import Headers, PolledCommand, TunnelResponsePayload
from gateway.relay.affinity import ANONYMOUS, SessionTable, ends_session, session_of, session_set_by
from gateway.relay.deadlines import Deadlines
from gateway.relay.errors import (
    CallerTimeout,
    FrameBacklog,
    PendingNotFound,
    QueueFull,
    RelayClosing,
    ShardMismatch,
    TunnelNotFound,
    TunnelRemoved,
)

FRAME_BACKLOG: Final = 256
"""Unread `jsonrpc_notify` frames one caller may have before the gateway is told to slow down."""

AFFINITY_RECHECK_S: Final = 1.0
"""How often a poll that left commands for another (maybe lost) session owner looks again."""


class Command(Struct, frozen=True, kw_only=True):
    """One unit of MCP work as the relay keeps it: what a poll hands out, plus the caller's deadline."""

    request_id: str
    shard_token: str
    command_type: str
    channel: str
    created_at: str
    deadline: float
    """When the MCP caller stops waiting, on the event loop's (monotonic) clock."""
    headers: Headers
    jsonrpc: Raw | UnsetType = UNSET

    def polled(self, now: float) -> PolledCommand:
        """The wire form, with `response_timeout` = what is left of the caller's wait (>= 1ms)."""
        remaining_ms = max(1, int((self.deadline - now) * 1000))
        return PolledCommand(
            request_id=self.request_id,
            shard_token=self.shard_token,
            command_type=self.command_type,
            channel=self.channel,
            created_at=self.created_at,
            response_timeout=f"{remaining_ms}ms",
            headers=self.headers,
            jsonrpc=self.jsonrpc,
        )


def queued_age(created_at: str) -> float | None:
    """Seconds since a command was queued, from its `created_at` (None when that does not parse)."""
    try:
        created = datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return max(0.0, (datetime.now(UTC) - created).total_seconds())


def new_command(
    *,
    command_type: str,
    channel: str,
    headers: Headers,
    deadline: float,
    jsonrpc: Raw | UnsetType = UNSET,
    created_at: str | None = None,
) -> Command:
    """A command with fresh opaque ids and an RFC 3339 UTC enqueue time (`created_at`, else now)."""
    random = os.urandom(40)  # one read of the system's randomness for both ids
    return Command(
        request_id=f"req_{random[:16].hex()}",
        shard_token=base64.urlsafe_b64encode(random[16:]).decode(),
        command_type=command_type,
        channel=channel,
        created_at=created_at or rfc3339_ms(time.time_ns() // 1_000_000),
        deadline=deadline,
        headers=headers,
        jsonrpc=jsonrpc,
    )


def rfc3339_ms(ms: int) -> str:
    """Milliseconds since the epoch as RFC 3339 UTC: `2026-12-06T17:23:32.489Z`."""
    seconds, millis = divmod(ms, 1000)
    return f"{_rfc3339_second(seconds)}.{millis:03d}Z"


def _rfc3339_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class Stamps:
    """Enqueue times for a stream of commands, as `rfc3339_ms` renders them: each millisecond's text
    made once, its second's part once a second (callers enqueue thousands a second; a whole rendering
    costs about a microsecond, the milliseconds alone a fifth of that)."""

    __slots__ = ("_ms", "_second", "_second_text", "_text")

    def __init__(self) -> None:
        self._ms = self._second = -1
        self._text = self._second_text = ""

    def now(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            second, millis = divmod(ms, 1000)
            if second != self._second:
                self._second_text = _rfc3339_second(second)
                self._second = second
            self._text = f"{self._second_text}.{millis:03d}Z"
            self._ms = ms
        return self._text


async def terminal_frame(
    backend: QueueBackend, deadlines: Deadlines, tunnel_id: str, request_id: str, deadline: float
) -> TunnelResponsePayload:
    """A command's terminal frame, its intermediate frames skipped; CallerTimeout at `deadline` (loop time)."""
    try:
        async with deadlines.at(deadline):
            while True:
                frame = await backend.next_frame(tunnel_id, request_id)
                if frame.is_terminal:
                    return frame
    except TimeoutError:
        raise CallerTimeout() from None


class TunnelStatus(Struct, frozen=True, kw_only=True):
    """A snapshot of one tunnel's queue, for the MCP endpoint and diagnostics."""

    client_seen: bool
    polls_waiting: int
    queued: int
    in_flight: int
    last_instance_id: str | None
    oldest_queued_s: float | None = None
    """Age of the oldest command still queued (None: none queued, or the backend does not say)."""


class QueueBackend(ABC):
    """Commands from MCP callers to polling gateways, and frames back.

    Errors raised are RelayError subclasses (TunnelNotFound, QueueFull,
    PendingNotFound, ShardMismatch, FrameBacklog, RelayClosing, and
    BackendUnavailable/CommandLost from backends that live elsewhere), so HTTP
    handlers need no translation of their own.

    Lifetime: `start()` before serving, `close()` when shutdown begins (wakes
    everyone), `dispose()` after the last handler finished (releases resources).
    """

    async def start(self) -> None:
        """Connect and start background work (default: nothing to do)."""
        return None

    async def ready(self) -> bool:
        """Whether the backend can serve now (`/readyz`); the memory backend always can."""
        return True

    async def client_seen(self, tunnel_id: str) -> bool:
        """Whether some gateway polls the tunnel now or ended a poll within the grace period."""
        return (await self.status(tunnel_id)).client_seen

    async def dispose(self) -> None:
        """Release connections and background work after `close()` (default: nothing to do)."""
        return None

    @abstractmethod
    async def enqueue(self, tunnel_id: str, command: Command) -> None:
        """Queue a command (FIFO); QueueFull when the tunnel's queue is at its bound."""

    @abstractmethod
    async def take(
        self,
        tunnel_id: str,
        *,
        limit: int,
        timeout_s: float,
        channels: frozenset[str] = frozenset(),
        instance_id: str | None = None,
        wanted: Callable[[], bool] | None = None,
        affine_channels: frozenset[str] = frozenset(),
    ) -> list[Command]:
        """Up to `limit` queued commands (only `channels`, when given), waiting up to `timeout_s`
        for the first; [] after the wait. Taken commands become in flight. `wanted()` is asked
        right before taking: False (the poller left) takes nothing, so nothing is lost.
        `instance_id` and `affine_channels` (the poller's proc_affinity channels) drive
        session routing (affinity.py): a session's commands go to the instance owning it."""

    @abstractmethod
    async def deliver(self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload) -> None:
        """Hand one frame to the waiting caller. PendingNotFound for a request that is unknown,
        not in flight, past its deadline or already final; ShardMismatch for a wrong token."""

    delivers_now: bool = False
    """Whether `deliver_now` works: a backend in this process hands a frame over without waiting."""

    def deliver_now(self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload) -> None:
        """`deliver` done at once, for a backend whose `delivers_now` is True (a subclass that changes
        `deliver` must change this too: the lean HTTP layer calls it in place of `deliver`)."""
        raise NotImplementedError

    delivers_soon: bool = False
    """Whether `deliver_soon` works: a backend elsewhere (Redis) reports a delivery by a callback, no task."""

    def deliver_soon(
        self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload, done: Callable[[Exception | None], None]
    ) -> None:
        """`deliver` without a task, for a backend whose `delivers_soon` is True: errors known at once are
        raised here; otherwise `done` is called once, later, with None (the frame is stored for its caller)
        or the error `deliver` would raise. `done` must not block (it may run in a protocol callback)."""
        raise NotImplementedError

    @abstractmethod
    async def next_frame(self, tunnel_id: str, request_id: str) -> TunnelResponsePayload:
        """The caller's side: wait for the next frame of its command (RelayClosing on shutdown)."""

    @abstractmethod
    async def discard(self, tunnel_id: str, request_id: str) -> None:
        """The caller is done or gave up: forget the command, queued or in flight (idempotent)."""

    @abstractmethod
    async def status(self, tunnel_id: str) -> TunnelStatus: ...

    @abstractmethod
    async def close(self) -> None:
        """Wake every waiting poll (with nothing) and caller (RelayClosing); idempotent."""

    @abstractmethod
    def serve_tunnels(self, tunnel_ids: Collection[str]) -> None:
        """Serve exactly these tunnels from now on (a reload): a new one starts with an empty queue; a
        removed one's waiting polls answer with nothing, its waiting callers get TunnelRemoved, and
        anything after that for it TunnelNotFound."""


# --------------------------------------------------------------------------- in memory

_State = Literal["queued", "in_flight", "final"]


class _Entry:
    __slots__ = ("affine", "command", "frames", "session", "state", "taker")

    def __init__(self, command: Command) -> None:
        self.command = command
        self.state: _State = "queued"
        self.session = session_of(command.headers)
        self.taker = ""
        self.affine = False
        # None is the end sentinel (the relay closes, or the tunnel was removed); the notify backlog is
        # bounded in deliver().
        self.frames = _Frames()


class _Frames:
    """One caller's unread frames (None: the relay is closing, or the tunnel was removed): an
    asyncio.Queue's put_nowait, get and qsize without its per-command construction cost (one is made for
    every command)."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: collections.deque[TunnelResponsePayload | None] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: TunnelResponsePayload | None) -> None:
        self._items.append(item)
        self._wake_next()

    async def get(self, loop: asyncio.AbstractEventLoop) -> TunnelResponsePayload | None:
        while not self._items:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and self._items:
                    self._wake_next()  # woken and cancelled at once: the next waiter takes the item
                raise
        return self._items.popleft()

    def _wake_next(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Instance:
    __slots__ = ("last_end", "polls")

    def __init__(self) -> None:
        self.polls = 0
        self.last_end: float | None = None


class _Tunnel:
    __slots__ = (
        "entries",
        "grace",
        "instances",
        "last_instance_id",
        "last_poll_end",
        "polls_waiting",
        "queued",
        "removed",
        "sessions",
        "waiters",
    )

    def __init__(self, grace: float, session_ttl_s: float) -> None:
        self.queued: dict[str, _Entry] = {}  # insertion order is the FIFO
        self.entries: dict[str, _Entry] = {}  # every live command: queued, in flight or final
        self.waiters: set[asyncio.Future[None]] = set()
        self.polls_waiting = 0
        self.last_poll_end: float | None = None
        self.last_instance_id: str | None = None
        self.instances: dict[str, _Instance] = {}
        self.sessions = SessionTable(session_ttl_s)
        self.grace = grace
        self.removed = False
        """A reload removed it: its polls take nothing more."""

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def seen(self, instance: str, now: float) -> bool:
        state = self.instances.get(instance)
        if state is None:
            return False
        return state.polls > 0 or (state.last_end is not None and now - state.last_end <= self.grace)

    def pop(
        self, limit: int, channels: frozenset[str], now: float, instance: str, affine: frozenset[str]
    ) -> tuple[list[Command], bool]:
        """(taken commands, whether some were left for another instance's session)."""
        taken: list[_Entry] = []
        expired: list[_Entry] = []
        held = False
        for entry in self.queued.values():
            if len(taken) == limit:
                break
            command = entry.command
            if command.deadline <= now:
                expired.append(entry)  # its caller gave up: purge it from the queue
                continue
            if channels and command.channel not in channels:
                continue
            if not self.sessions.may_take(command.channel, entry.session, instance, now, lambda i: self.seen(i, now)):
                held = True
                continue
            taken.append(entry)
        for entry in expired:
            del self.queued[entry.command.request_id]
            entry.state = "final"
        for entry in taken:
            del self.queued[entry.command.request_id]
            entry.state = "in_flight"
            entry.taker = instance
            entry.affine = entry.command.channel in affine
        return [entry.command for entry in taken], held

    def settle(self, entry: _Entry, frame: TunnelResponsePayload, now: float) -> None:
        """A terminal frame arrived: record or end the session binding of an affine command."""
        if not entry.affine:
            return
        channel = entry.command.channel
        if ends_session(frame):
            self.sessions.forget(channel, entry.session)
        else:
            self.sessions.record(channel, session_set_by(frame) or entry.session, entry.taker, now)


class MemoryQueue(QueueBackend):
    """The in-process backend: per-tunnel bounded FIFOs and an in-flight table in dicts."""

    def __init__(
        self,
        tunnel_ids: Iterable[str],
        *,
        queue_max: int,
        client_seen_grace_s: float,
        session_ttl_s: float = 3600.0,
    ) -> None:
        self._tunnels = {tunnel_id: _Tunnel(client_seen_grace_s, session_ttl_s) for tunnel_id in tunnel_ids}
        self._queue_max = queue_max
        self._grace = client_seen_grace_s
        self._session_ttl_s = session_ttl_s
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop it serves in, from `start()`: CPython 3.11 asks the OS for the process id on every
        `get_running_loop()`, several times per call otherwise."""

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def dispose(self) -> None:
        self._loop = None

    def _running(self) -> asyncio.AbstractEventLoop:
        return self._loop or asyncio.get_running_loop()

    def _tunnel(self, tunnel_id: str) -> _Tunnel:
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None:
            raise TunnelNotFound()
        return tunnel

    def _now(self) -> float:
        return self._running().time()

    async def enqueue(self, tunnel_id: str, command: Command) -> None:
        if self._closed:
            raise RelayClosing()
        tunnel = self._tunnel(tunnel_id)
        if len(tunnel.queued) >= self._queue_max:
            raise QueueFull()
        entry = _Entry(command)
        tunnel.queued[command.request_id] = entry
        tunnel.entries[command.request_id] = entry
        tunnel.wake()

    async def take(
        self,
        tunnel_id: str,
        *,
        limit: int,
        timeout_s: float,
        channels: frozenset[str] = frozenset(),
        instance_id: str | None = None,
        wanted: Callable[[], bool] | None = None,
        affine_channels: frozenset[str] = frozenset(),
    ) -> list[Command]:
        tunnel = self._tunnel(tunnel_id)
        if instance_id is not None:
            tunnel.last_instance_id = instance_id
        instance = instance_id or ANONYMOUS
        seen = tunnel.instances.setdefault(instance, _Instance())
        loop = self._running()
        until = loop.time() + timeout_s
        tunnel.polls_waiting += 1
        seen.polls += 1
        try:
            while not self._closed and not tunnel.removed:
                if wanted is not None and not wanted():
                    return []
                batch, held = tunnel.pop(limit, channels, loop.time(), instance, affine_channels)
                if batch:
                    return batch
                remaining = until - loop.time()
                if remaining <= 0:
                    return []
                if held:  # an owner that stops polling loses its sessions after the grace period
                    remaining = min(remaining, AFFINITY_RECHECK_S)
                waiter: asyncio.Future[None] = loop.create_future()
                tunnel.waiters.add(waiter)
                timer = loop.call_later(remaining, _wake, waiter)  # a timer, not a Timeout: no task lookups
                try:
                    await waiter
                finally:
                    timer.cancel()
                    tunnel.waiters.discard(waiter)
            return []
        finally:
            tunnel.polls_waiting -= 1
            seen.polls -= 1
            tunnel.last_poll_end = seen.last_end = loop.time()

    delivers_now = True

    async def deliver(self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload) -> None:
        self.deliver_now(tunnel_id, shard_token, frame)

    def deliver_now(self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload) -> None:
        tunnel = self._tunnel(tunnel_id)
        entry = tunnel.entries.get(frame.request_id)
        now = self._now()
        if entry is None or entry.state != "in_flight" or entry.command.deadline <= now:
            raise PendingNotFound()
        if not hmac.compare_digest(shard_token.encode(), entry.command.shard_token.encode()):
            raise ShardMismatch()
        if frame.is_terminal:
            entry.state = "final"
            tunnel.settle(entry, frame, now)
        elif entry.frames.qsize() >= FRAME_BACKLOG:
            raise FrameBacklog()
        entry.frames.put_nowait(frame)

    async def next_frame(self, tunnel_id: str, request_id: str) -> TunnelResponsePayload:
        entry = self._tunnel(tunnel_id).entries.get(request_id)
        if entry is None:
            raise PendingNotFound()
        frame = await entry.frames.get(self._running())
        if frame is None:
            entry.frames.put_nowait(None)  # keep answering the same
            raise RelayClosing() if self._closed else TunnelRemoved()
        return frame

    async def discard(self, tunnel_id: str, request_id: str) -> None:
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is not None:
            tunnel.queued.pop(request_id, None)
            tunnel.entries.pop(request_id, None)

    async def client_seen(self, tunnel_id: str) -> bool:
        tunnel = self._tunnel(tunnel_id)
        recent = tunnel.last_poll_end is not None and self._now() - tunnel.last_poll_end <= self._grace
        return tunnel.polls_waiting > 0 or recent

    async def status(self, tunnel_id: str) -> TunnelStatus:
        tunnel = self._tunnel(tunnel_id)
        tunnel.sessions.purge(self._now())
        return TunnelStatus(
            client_seen=await self.client_seen(tunnel_id),
            polls_waiting=tunnel.polls_waiting,
            queued=len(tunnel.queued),
            in_flight=sum(1 for entry in tunnel.entries.values() if entry.state == "in_flight"),
            last_instance_id=tunnel.last_instance_id,
            oldest_queued_s=(
                queued_age(next(iter(tunnel.queued.values())).command.created_at) if tunnel.queued else None
            ),
        )

    async def session_owner(self, tunnel_id: str, channel: str, session: str) -> str | None:
        """The instance a proc_affinity session is bound to (diagnostics and tests)."""
        return self._tunnel(tunnel_id).sessions.owner(channel, session, self._now())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for tunnel in self._tunnels.values():
            tunnel.wake()
            for entry in tunnel.entries.values():
                entry.frames.put_nowait(None)

    def serve_tunnels(self, tunnel_ids: Collection[str]) -> None:
        for tunnel_id in tunnel_ids:
            if tunnel_id not in self._tunnels:
                self._tunnels[tunnel_id] = _Tunnel(self._grace, self._session_ttl_s)
        for tunnel_id in [known for known in self._tunnels if known not in tunnel_ids]:
            tunnel = self._tunnels.pop(tunnel_id)
            tunnel.removed = True
            tunnel.wake()  # its polls answer with nothing
            for entry in tunnel.entries.values():
                entry.frames.put_nowait(None)  # its callers: TunnelRemoved
