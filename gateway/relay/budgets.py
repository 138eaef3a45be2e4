"""Per-caller request budgets: one aiolimiter leaky bucket per caller key, in a bounded table.
Decides only whether one more request fits now; who a caller is, and what a refusal answers, is the user's.

Used by the front door (`client_rate`, per client token) and the token endpoint (`token_rate_per_s`,
per peer address). The table keeps at most `max_callers` keys; past that the oldest key goes first,
so a flood of new keys costs memory it gives back, never the relay's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, Generic, TypeVar

from aiolimiter import AsyncLimiter

MAX_CALLERS: Final = 10_000
"""Budgets kept at once by default; the oldest goes first."""

K = TypeVar("K", bound=Hashable)


class CallerBudgets(Generic[K]):
    """Rate budgets keyed by caller. Each is made on its key's first request with the rate and burst
    given then; a forgotten key starts again with a full burst."""

    def __init__(self, max_callers: int = MAX_CALLERS) -> None:
        self._limiters: dict[K, AsyncLimiter] = {}
        self._max_callers = max_callers

    def __len__(self) -> int:
        return len(self._limiters)

    async def take(self, key: K, per_s: float, burst: int) -> float | None:
        """One request from `key`'s budget (`burst` at once, refilled at `per_s` a second): None when
        it fits, else the seconds until one would (at most one request's refill: a refused budget is
        less than one request short). Never waits."""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = AsyncLimiter(burst, burst / per_s)
            if len(self._limiters) > self._max_callers:
                del self._limiters[next(iter(self._limiters))]
        if not limiter.has_capacity():
            return limiter.time_period / limiter.max_rate
        await limiter.acquire()  # returns at once: there is capacity
        return None
