"""Callers' deadlines with one loop timer per tick of deadlines, not one per caller.

Owns `Deadlines`: `async with deadlines.at(when):` behaves as `asyncio.timeout_at(when)` (the waiting task
is cancelled at the deadline and the block raises TimeoutError; a cancellation from elsewhere stays a
cancellation), except that a deadline is kept up to `tick_s` late. Deadlines that fall in the same tick
share one timer, armed when the first of them is entered.
`asyncio.timeout_at` arms and cancels a uvloop timer of its own per caller: about 3 µs a call, more than
the relay's whole hand-off of a frame to its caller.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType
from typing import Final

TICK_S: Final = 0.05
"""Deadlines are kept at most this late: the relay's are whole seconds (`response_timeout_s`)."""


class Deadlines:
    """The deadlines of the callers waiting on one loop, grouped by tick."""

    __slots__ = ("_tick_s", "_ticks")

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._tick_s = tick_s
        self._ticks: dict[int, set[Deadline]] = {}
        """The deadlines entered and not yet left, per tick whose timer is armed."""

    def at(self, when: float) -> Deadline:
        """An async context manager: the block ends with TimeoutError if it runs past `when` (loop time)."""
        return Deadline(self, when)

    def _join(self, deadline: Deadline, when: float) -> set[Deadline]:
        tick = math.ceil(when / self._tick_s)
        members = self._ticks.get(tick)
        if members is None:
            # armed once per tick and left to fire even when its callers all finish early: a timer cancelled
            # and armed again for the next caller of the same tick would cost what one per caller costs
            members = self._ticks[tick] = set()
            asyncio.get_running_loop().call_at(tick * self._tick_s, self._expire, tick)
        members.add(deadline)
        return members

    def _expire(self, tick: int) -> None:
        for deadline in self._ticks.pop(tick, ()):
            deadline.expire()


class Deadline:
    """One caller's deadline (`Deadlines.at`); used once."""

    __slots__ = ("_cancelling", "_expired", "_members", "_owner", "_task", "_when")

    def __init__(self, owner: Deadlines, when: float) -> None:
        self._owner = owner
        self._when = when
        self._task: asyncio.Task[object] | None = None
        self._members: set[Deadline] | None = None
        self._cancelling = 0
        self._expired = False

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._members = self._owner._join(self, self._when)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._members is not None:
            self._members.discard(self)
            self._members = None
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
        if self._members is None or self._task is None:
            return
        self._members = None
        self._expired = True
        self._task.cancel()
