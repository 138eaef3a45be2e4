"""Queue backends: where commands wait for a poll and frames wait for their MCP caller.

Owns the `QueueBackend` interface (a Redis backend will sit behind it later),
the queued `Command` record and the in-memory backend: one bounded FIFO per
tunnel, waiting polls, and the in-flight table keyed by request_id. No HTTP here.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final, Literal

from msgspec import UNSET, Raw, Struct, UnsetType

from gateway.relay.errors import (
    FrameBacklog,
    PendingNotFound,
    QueueFull,
    RelayClosing,
    ShardMismatch,
    TunnelNotFound,
)
from gateway.wire import Headers, PolledCommand, TunnelResponsePayload

FRAME_BACKLOG: Final = 256
"""Unread `jsonrpc_notify` frames one caller may have before the gateway is told to slow down."""


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


def new_command(
    *,
    command_type: str,
    channel: str,
    headers: Headers,
    deadline: float,
    jsonrpc: Raw | UnsetType = UNSET,
) -> Command:
    """A command with fresh opaque ids and an RFC 3339 UTC enqueue time."""
    now = datetime.now(UTC)
    return Command(
        request_id=f"req_{secrets.token_hex(16)}",
        shard_token=secrets.token_urlsafe(24),
        command_type=command_type,
        channel=channel,
        created_at=now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        deadline=deadline,
        headers=headers,
        jsonrpc=jsonrpc,
    )


class TunnelStatus(Struct, frozen=True, kw_only=True):
    """A snapshot of one tunnel's queue, for the MCP endpoint and diagnostics."""

    client_seen: bool
    polls_waiting: int
    queued: int
    in_flight: int
    last_instance_id: str | None


class QueueBackend(ABC):
    """Commands from MCP callers to polling gateways, and frames back.

    Errors raised are RelayError subclasses (TunnelNotFound, QueueFull,
    PendingNotFound, ShardMismatch, FrameBacklog, RelayClosing), so HTTP
    handlers need no translation of their own.
    """

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
    ) -> list[Command]:
        """Up to `limit` queued commands (only `channels`, when given), waiting up to `timeout_s`
        for the first; [] after the wait. Taken commands become in flight. `wanted()` is asked
        right before taking: False (the poller left) takes nothing, so nothing is lost."""

    @abstractmethod
    async def deliver(self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload) -> None:
        """Hand one frame to the waiting caller. PendingNotFound for a request that is unknown,
        not in flight, past its deadline or already final; ShardMismatch for a wrong token."""

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


# --------------------------------------------------------------------------- in memory

_State = Literal["queued", "in_flight", "final"]


class _Entry:
    __slots__ = ("command", "frames", "state")

    def __init__(self, command: Command) -> None:
        self.command = command
        self.state: _State = "queued"
        # None is the shutdown sentinel; the notify backlog is bounded in deliver().
        self.frames: asyncio.Queue[TunnelResponsePayload | None] = asyncio.Queue()


class _Tunnel:
    __slots__ = ("entries", "last_instance_id", "last_poll_end", "polls_waiting", "queued", "waiters")

    def __init__(self) -> None:
        self.queued: dict[str, _Entry] = {}  # insertion order is the FIFO
        self.entries: dict[str, _Entry] = {}  # every live command: queued, in flight or final
        self.waiters: set[asyncio.Future[None]] = set()
        self.polls_waiting = 0
        self.last_poll_end: float | None = None
        self.last_instance_id: str | None = None

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def pop(self, limit: int, channels: frozenset[str], now: float) -> list[Command]:
        taken: list[_Entry] = []
        for entry in self.queued.values():
            if len(taken) == limit:
                break
            if entry.command.deadline <= now or (channels and entry.command.channel not in channels):
                continue
            taken.append(entry)
        for entry in taken:
            del self.queued[entry.command.request_id]
            entry.state = "in_flight"
        return [entry.command for entry in taken]


class MemoryQueue(QueueBackend):
    """The in-process backend: per-tunnel bounded FIFOs and an in-flight table in dicts."""

    def __init__(self, tunnel_ids: Iterable[str], *, queue_max: int, client_seen_grace_s: float) -> None:
        self._tunnels = {tunnel_id: _Tunnel() for tunnel_id in tunnel_ids}
        self._queue_max = queue_max
        self._grace = client_seen_grace_s
        self._closed = False

    def _tunnel(self, tunnel_id: str) -> _Tunnel:
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is None:
            raise TunnelNotFound()
        return tunnel

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

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
    ) -> list[Command]:
        tunnel = self._tunnel(tunnel_id)
        if instance_id is not None:
            tunnel.last_instance_id = instance_id
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        tunnel.polls_waiting += 1
        try:
            while not self._closed:
                if wanted is not None and not wanted():
                    return []
                batch = tunnel.pop(limit, channels, loop.time())
                if batch:
                    return batch
                remaining = until - loop.time()
                if remaining <= 0:
                    return []
                waiter: asyncio.Future[None] = loop.create_future()
                tunnel.waiters.add(waiter)
                try:
                    async with asyncio.timeout(remaining):
                        await waiter
                except TimeoutError:
                    pass
                finally:
                    tunnel.waiters.discard(waiter)
            return []
        finally:
            tunnel.polls_waiting -= 1
            tunnel.last_poll_end = loop.time()

    async def deliver(self, tunnel_id: str, shard_token: str, frame: TunnelResponsePayload) -> None:
        tunnel = self._tunnel(tunnel_id)
        entry = tunnel.entries.get(frame.request_id)
        if entry is None or entry.state != "in_flight" or entry.command.deadline <= self._now():
            raise PendingNotFound()
        if not hmac.compare_digest(shard_token.encode(), entry.command.shard_token.encode()):
            raise ShardMismatch()
        if frame.is_terminal:
            entry.state = "final"
        elif entry.frames.qsize() >= FRAME_BACKLOG:
            raise FrameBacklog()
        entry.frames.put_nowait(frame)

    async def next_frame(self, tunnel_id: str, request_id: str) -> TunnelResponsePayload:
        entry = self._tunnel(tunnel_id).entries.get(request_id)
        if entry is None:
            raise PendingNotFound()
        frame = await entry.frames.get()
        if frame is None:
            entry.frames.put_nowait(None)  # keep answering RelayClosing
            raise RelayClosing()
        return frame

    async def discard(self, tunnel_id: str, request_id: str) -> None:
        tunnel = self._tunnels.get(tunnel_id)
        if tunnel is not None:
            tunnel.queued.pop(request_id, None)
            tunnel.entries.pop(request_id, None)

    async def status(self, tunnel_id: str) -> TunnelStatus:
        tunnel = self._tunnel(tunnel_id)
        recent = tunnel.last_poll_end is not None and self._now() - tunnel.last_poll_end <= self._grace
        return TunnelStatus(
            client_seen=tunnel.polls_waiting > 0 or recent,
            polls_waiting=tunnel.polls_waiting,
            queued=len(tunnel.queued),
            in_flight=len(tunnel.entries) - len(tunnel.queued),
            last_instance_id=tunnel.last_instance_id,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for tunnel in self._tunnels.values():
            tunnel.wake()
            for entry in tunnel.entries.values():
                entry.frames.put_nowait(None)
