"""Rate limits and concurrency caps from routing.yaml, and what happens when one is hit (wait or reject).
Waiting is bounded (no unbounded queues) and budgets are per key: one tenant at its limit never delays another.

Owns the budgets (an aiolimiter leaky bucket and/or a concurrency gate per
scope value: global, channel, server, tool, routing-rule key, tenant), the
`wait`/`reject` policies with bounded waiting, and the admitted/waited/rejected
counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from aiolimiter import AsyncLimiter

from gateway.config.routing import LimitSpec, LimitsSpec
from gateway.protocol.errors import RateLimited

MAX_BUDGETS: Final = 10_000
"""Per-key budgets kept at once (tenants are unbounded); the least recently used idle one goes first."""


@dataclass(frozen=True, slots=True)
class Subject:
    """What a request is, for limiting: the values each scope keys on (None: not applicable)."""

    channel: str
    server: str | None = None
    tool: str | None = None
    route: str | None = None
    tenant: str | None = None

    def value(self, scope: str) -> str | None:
        if scope == "global":
            return ""
        return {
            "channel": self.channel,
            "server": self.server,
            "tool": self.tool,
            "route": self.route,
            "tenant": self.tenant,
        }[scope]


class _Budget:
    """One rule's budget for one key."""

    __slots__ = ("gate", "rate", "rate_per_s", "waiting")

    def __init__(self, rule: LimitSpec) -> None:
        self.rate_per_s = rule.rate_per_s()
        self.rate: AsyncLimiter | None = None
        if self.rate_per_s is not None:
            burst = rule.burst if rule.burst is not None else max(1, math.floor(self.rate_per_s))
            self.rate = AsyncLimiter(burst, burst / self.rate_per_s)
        self.gate = asyncio.Semaphore(rule.concurrency) if rule.concurrency is not None else None
        self.waiting = 0

    @property
    def idle(self) -> bool:
        return self.waiting == 0 and (self.gate is None or not self.gate.locked())

    def retry_after_ms(self) -> int:
        if self.rate_per_s is None:
            return 100  # a concurrency cap: soon
        return max(1, math.ceil(1000 / self.rate_per_s))


class Limits:
    """All budgets of one gateway; `admit()` holds a request until every applicable limit passes."""

    def __init__(self, spec: LimitsSpec, *, on_wait: Callable[[str], None] | None = None) -> None:
        self._spec = spec
        self._budgets: OrderedDict[tuple[int, str], _Budget] = OrderedDict()
        self._on_wait = on_wait
        self.counts: Counter[tuple[str, str]] = Counter()
        """(limit label, `admitted` | `waited` | `rejected`) -> requests."""

    @property
    def enabled(self) -> bool:
        return bool(self._spec.rules)

    @property
    def tenant_header(self) -> str | None:
        return self._spec.tenant_header

    @contextlib.asynccontextmanager
    async def admit(self, subject: Subject) -> AsyncIterator[None]:
        """Enter when every limit allows; raises RateLimited when one rejects. Concurrency
        slots are held until the block exits."""
        held: list[asyncio.Semaphore] = []
        try:
            for index, rule in enumerate(self._spec.rules):
                value = subject.value(rule.scope)
                if value is None or (rule.match is not None and rule.match != value):
                    continue
                budget = self._budget(index, value, rule)
                await self._pass(rule, budget)
                if budget.gate is not None:
                    held.append(budget.gate)
            yield
        finally:
            for gate in held:
                gate.release()

    async def _pass(self, rule: LimitSpec, budget: _Budget) -> None:
        label = rule.label
        wait = (rule.policy or self._spec.policy) == "wait"
        rate_ready = budget.rate is None or budget.rate.has_capacity()
        gate_ready = budget.gate is None or not budget.gate.locked()
        if not (rate_ready and gate_ready):
            if not wait or budget.waiting >= self._spec.max_waiting:
                self.counts[label, "rejected"] += 1
                raise RateLimited(label, budget.retry_after_ms())
            self.counts[label, "waited"] += 1
            if self._on_wait is not None:
                self._on_wait(label)
        budget.waiting += 1
        try:
            async with asyncio.timeout(self._spec.max_wait_s):
                if budget.rate is not None:
                    await budget.rate.acquire()
                if budget.gate is not None:
                    await budget.gate.acquire()
        except TimeoutError:
            self.counts[label, "rejected"] += 1
            raise RateLimited(label, budget.retry_after_ms()) from None
        finally:
            budget.waiting -= 1
        self.counts[label, "admitted"] += 1

    def _budget(self, index: int, value: str, rule: LimitSpec) -> _Budget:
        key = (index, value)
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = _Budget(rule)
            if len(self._budgets) > MAX_BUDGETS:
                for old_key, old in self._budgets.items():
                    if old.idle and old_key != key:
                        del self._budgets[old_key]
                        break
        else:
            self._budgets.move_to_end(key)
        return budget
