"""Usage budgets (`budgets:` in routing.yaml): calls counted per key in fixed UTC hour or day windows,
the alert thresholds they cross, and the refusal at 100 %. Sans-IO: a clock is injected, nothing awaits,
and each `Alert` goes to a callback (logging, metrics and webhooks are `gateway.observe.alerts`).

Owns the counting (bounded: a key lives only as long as its window) and which keys a call spends from.
A client token is known here only as a SHA-256 of the Authorization header value, never the value.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.config.admin import BudgetSpec
from gateway.observe.alerts import Alert
from gateway.protocol.errors import RateLimited

MAX_KEYS: Final = 50_000
"""Keys one budget counts at once in a window; more share one `(other)` count (memory stays bounded)."""
OTHER: Final = "(other)"
WINDOW_S: Final = {"hour": 3600, "day": 86400}
COUNTED: Final = frozenset({"tools/call", "prompts/get", "resources/read"})
"""The requests a budget counts: the ones that use a tool, prompt or resource."""


def token_key(authorization: str | None) -> str | None:
    """The key a client token is counted under: `sha256:` and the first 32 hex digits of its SHA-256."""
    if not authorization:
        return None
    return "sha256:" + hashlib.sha256(authorization.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Caller:
    """What a call is, for budgets: the values each scope keys on (None: not known)."""

    channel: str
    tenant: str | None = None
    client_token: str | None = None
    """`token_key` of the Authorization header."""

    def value(self, scope: str) -> str | None:
        return {"channel": self.channel, "tenant": self.tenant, "client_token": self.client_token}[scope]


def _identity(spec: BudgetSpec) -> tuple[str, str, str | None, str]:
    """What makes a reloaded budget the same budget: its counts carry over."""
    return spec.name, spec.scope, spec.match, spec.per


class _Count:
    __slots__ = ("alerted", "calls")

    def __init__(self) -> None:
        self.calls = 0
        self.alerted: set[int] = set()


class _Window:
    """One budget's counts in its current window (all dropped when the window moves on)."""

    __slots__ = ("counts", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.counts: dict[str, _Count] = {}


class Budgets:
    """Every budget of one configuration; `spend()` counts a call and raises RateLimited on refusal."""

    def __init__(
        self,
        specs: Sequence[BudgetSpec],
        *,
        clock: Callable[[], float],
        on_alert: Callable[[Alert], None] = lambda alert: None,
    ) -> None:
        self.specs = tuple(specs)
        self._clock = clock
        self._on_alert = on_alert
        self._windows: list[_Window | None] = [None] * len(self.specs)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def carried(self, specs: Sequence[BudgetSpec], on_alert: Callable[[Alert], None] | None = None) -> Budgets:
        """Budgets for `specs` (a reload) keeping the current window's counts, and thresholds already
        alerted, of every budget whose name, scope, match and period are unchanged; a new limit,
        thresholds or refusal apply from the next call. Other budgets start counting from zero."""
        new = Budgets(specs, clock=self._clock, on_alert=on_alert or self._on_alert)
        kept = {_identity(spec): window for spec, window in zip(self.specs, self._windows, strict=True)}
        new._windows = [kept.get(_identity(spec)) for spec in new.specs]
        return new

    def keys(self) -> int:
        """Keys counted in current windows (memory in use)."""
        return sum(len(w.counts) for w in self._windows if w is not None)

    def check(self, method: str, caller: Caller) -> None:
        """Raise RateLimited (retry after the window ends) when a refusing budget this request falls under
        is at its limit; counts nothing (the dispatcher asks before the rate limits, spends after them)."""
        self._spending(method, caller)

    def spend(self, method: str, caller: Caller) -> None:
        """Count one request against every budget it falls under (only `COUNTED` methods count).

        A refusing budget at its limit raises RateLimited (retry after the window ends) and the call
        is not counted against any budget; alerts for thresholds crossed go to `on_alert`."""
        for spec, window, key in self._spending(method, caller):
            self._count(spec, window, key)

    def _spending(self, method: str, caller: Caller) -> list[tuple[BudgetSpec, _Window, str]]:
        """The (budget, window, key) a request would spend from; RateLimited when one refuses it."""
        if method not in COUNTED or not self.specs:
            return []
        now = self._clock()
        spending: list[tuple[BudgetSpec, _Window, str]] = []
        for index, spec in enumerate(self.specs):
            key = caller.value(spec.scope)
            if key is None or (spec.match is not None and spec.match != key):
                continue
            window = self._window(index, spec, now)
            count = window.counts.get(key)
            if spec.refuse and count is not None and count.calls >= spec.calls:
                end = window.start + WINDOW_S[spec.per]
                raise RateLimited(f"budget:{spec.name}", max(1, math.ceil((end - now) * 1000)))
            spending.append((spec, window, key))
        return spending

    def _window(self, index: int, spec: BudgetSpec, now: float) -> _Window:
        length = WINDOW_S[spec.per]
        start = math.floor(now / length) * length  # the epoch is midnight UTC: hours and days align
        window = self._windows[index]
        if window is None or window.start != start:
            window = self._windows[index] = _Window(start)
        return window

    def _count(self, spec: BudgetSpec, window: _Window, key: str) -> None:
        count = window.counts.get(key)
        if count is None:
            if len(window.counts) >= MAX_KEYS:
                key = OTHER
                count = window.counts.get(key)
            if count is None:
                count = window.counts[key] = _Count()
        count.calls += 1
        for threshold in sorted(spec.alerts):
            if threshold in count.alerted or count.calls * 100 < threshold * spec.calls:
                continue
            count.alerted.add(threshold)
            end = window.start + WINDOW_S[spec.per]
            refusing = spec.refuse and count.calls >= spec.calls
            alert = Alert(
                budget=spec.name,
                scope=spec.scope,
                key=key,
                threshold=threshold,
                calls=count.calls,
                limit=spec.calls,
                window_start=window.start,
                window_end=end,
                refusing=refusing,
            )
            self._on_alert(alert)
