"""Callers' deadlines with one loop timer for all of them, not one per caller.

Owns `Deadlines`: `async with deadlines.at(when):` behaves as `asyncio.timeout_at(when)` (the waiting task
is cancelled at the deadline and the block raises TimeoutError; a cancellation from elsewhere stays a
cancellation), except that a deadline is kept up to `tick_s` late. Deadlines are grouped by the tick
they fall in; one timer is armed, for the earliest tick that has (or had) callers waiting, and moves on
from tick to tick as they come. `asyncio.timeout_at` arms and cancels a uvloop timer of its own per
caller: about 3 µs a call, more than the relay's whole hand-off of a frame to its caller.

Memory: a set of callers per tick that has callers right now, and one number per tick between now and
the last deadline entered (at most `response_timeout_s / tick_s` of them).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from types import TracebackType
from typing import Final

TICK_S: Final = 0.05
"""Deadlines are kept at most this late (the relay's `response_timeout_s` is 120 s unless set)."""


class Deadlines:
    """The deadlines of the callers waiting on one loop, grouped by tick."""

    __slots__ = ("_armed", "_loop", "_pending", "_queued", "_tick_s", "_ticks", "_timer")

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._ticks: dict[int, set[Deadline]] = {}
        """The callers in each tick that has any (a tick's set goes when its last caller leaves)."""
        self._pending: list[int] = []
        """A heap of the ticks that had callers and have not come yet (each once: `_queued`)."""
        self._queued: set[int] = set()
        self._armed: int | None = None
        """The tick the timer is armed for: the earliest in `_pending`."""
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop the timer is armed on; on another loop (a relay started again) the state starts over."""

    def at(self, when: float) -> Deadline:
        """An async context manager: the block ends with TimeoutError if it runs past `when` (loop time)."""
        return Deadline(self, when)

    def _join(self, deadline: Deadline, when: float) -> int:
        tick = math.ceil(when / self._tick_s)
        members = self._ticks.get(tick)
        if members is None:
            if self._loop is not asyncio.get_running_loop():
                self._start_over()
            members = self._ticks[tick] = set()
            if tick not in self._queued:
                self._queued.add(tick)
                heapq.heappush(self._pending, tick)
                if self._armed is None or tick < self._armed:
                    self._arm(tick)
        members.add(deadline)
        return tick

    def _leave(self, deadline: Deadline, tick: int) -> None:
        members = self._ticks.get(tick)
        if members is not None:
            members.discard(deadline)
            if not members:
                del self._ticks[tick]  # its number stays in `_pending` until the tick comes

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = tick
        self._loop = asyncio.get_running_loop()
        self._timer = self._loop.call_at(tick * self._tick_s, self._fire)

    def _start_over(self) -> None:
        """Forget another loop's ticks: its timer will never fire here (its callers are gone with it)."""
        if self._timer is not None:
            self._timer.cancel()
        self._ticks.clear()
        self._pending.clear()
        self._queued.clear()
        self._armed = self._timer = None
        self._loop = asyncio.get_running_loop()

    def _fire(self) -> None:
        came = self._armed
        self._armed = self._timer = None
        pending = self._pending
        while pending and came is not None and pending[0] <= came:
            tick = heapq.heappop(pending)
            self._queued.discard(tick)
            for deadline in self._ticks.pop(tick, ()):
                deadline.expire()
        if pending:
            self._arm(pending[0])


class Deadline:
    """One caller's deadline (`Deadlines.at`); used once."""

    __slots__ = ("_cancelling", "_expired", "_owner", "_task", "_tick", "_when")

    def __init__(self, owner: Deadlines, when: float) -> None:
        self._owner = owner
        self._when = when
        self._task: asyncio.Task[object] | None = None
        self._tick: int | None = None
        """The tick it waits in, while it does."""
        self._cancelling = 0
        self._expired = False

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._tick = self._owner._join(self, self._when)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._tick is not None:
            self._owner._leave(self, self._tick)
            self._tick = None
        # as asyncio's Timeout: only a cancellation this deadline made (and no other since) becomes TimeoutError
        if (
            self._expired
            and self._task is not None
            and self._task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def expire(self) -> None:
        """Its tick came: the task is cancelled, and the block will end with TimeoutError."""
        if self._tick is None or self._task is None:
            return
        self._tick = None
        self._expired = True
        self._task.cancel()
