"""Per-call counters for the status page: a `CallSink` that keeps sliding-window rates and latency
percentiles per channel and server, errors by source, rejections, and a bounded ring of recent
failures. Bounded memory whatever the traffic; holds names and outcomes only, never a payload.
"""

from __future__ import annotations

import math
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Final

import msgspec

from gateway.observe.records import CallRecord

WINDOW_S: Final = 60
"""Rates and percentiles cover the last this many seconds."""
SAMPLES: Final = 1024
"""Latency samples kept per key (the newest); percentiles are over those inside the window."""
MAX_ERROR_KINDS: Final = 32
"""Distinct error sources counted per key; the rest count as `other`."""
MAX_KEYS: Final = 512
"""(channel, server) pairs tracked; calls of further pairs count under the channel alone."""
FAILURES: Final = 50
"""Recent failures kept."""
CHANNEL: Final = ""
"""The server slot of a channel's own totals (every call of the channel, routed or not)."""


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """One failed call as the page lists it: names and outcome only, no arguments or results."""

    time: float
    channel: str
    method: str
    outcome: str
    status: int
    server: str | None = None
    name: str | None = None
    error: str | None = None


class WindowFigures(msgspec.Struct, frozen=True, kw_only=True):
    """One key's figures: calls and rate over the window, latency percentiles (None without calls),
    and counts since start."""

    calls: int
    calls_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    total: int
    errors: dict[str, int]
    rejections: int


class CallWindow:
    """Sliding-window figures of one key: per-second call counts for the rate, a ring of the newest
    latency samples for the percentiles, and cumulative error and rejection counts."""

    __slots__ = ("_counts", "_durations", "_next", "_seconds", "_stamps", "errors", "rejections", "total")

    def __init__(self) -> None:
        self._counts = array("l", [0]) * WINDOW_S
        self._seconds = array("q", [-1]) * WINDOW_S
        self._stamps = array("d", [-math.inf]) * SAMPLES
        self._durations = array("d", [0.0]) * SAMPLES
        self._next = 0
        self.total = 0
        self.errors: dict[str, int] = {}
        self.rejections = 0

    def add(self, now: float, duration_s: float, error: str | None, rejected: bool) -> None:
        second = int(now)
        slot = second % WINDOW_S
        if self._seconds[slot] != second:
            self._seconds[slot], self._counts[slot] = second, 0
        self._counts[slot] += 1
        self.total += 1
        if rejected:
            self.rejections += 1
        else:  # a rejection never reached a server: its time says nothing of latency
            index = self._next
            self._stamps[index], self._durations[index] = now, duration_s
            self._next = (index + 1) % SAMPLES
        if error is not None:
            if error not in self.errors and len(self.errors) >= MAX_ERROR_KINDS:
                error = "other"
            self.errors[error] = self.errors.get(error, 0) + 1

    def figures(self, now: float) -> WindowFigures:
        second = int(now)
        calls = sum(
            count
            for count, stamp in zip(self._counts, self._seconds, strict=True)
            if second - WINDOW_S < stamp <= second
        )
        since = now - WINDOW_S
        recent = sorted(d for d, t in zip(self._durations, self._stamps, strict=True) if t > since)
        return WindowFigures(
            calls=calls,
            calls_per_s=round(calls / WINDOW_S, 3),
            p50_ms=_ms(percentile(recent, 0.50)),
            p99_ms=_ms(percentile(recent, 0.99)),
            total=self.total,
            errors=dict(self.errors),
            rejections=self.rejections,
        )


def percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank percentile `q` (0..1) of sorted values; None when there are none."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


class CallStats:
    """The sink (`runtime.dispatcher.records.add(stats)`): figures per (channel, server) and per
    channel, and the newest failures. `clock` is the wall clock the windows count in."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._windows: dict[tuple[str, str], CallWindow] = {}
        self.failures: deque[Failure] = deque(maxlen=FAILURES)

    def record(self, call: CallRecord) -> None:
        now = self._clock()
        rejected = call.outcome == "rejected"
        failed = call.outcome not in ("ok", "cancelled")
        error = (call.error or call.outcome) if failed else None
        keys = [(call.channel, CHANNEL)]
        if call.server is not None:
            keys.append((call.channel, call.server))
        for key in keys:
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= MAX_KEYS:
                    continue
                window = self._windows[key] = CallWindow()
            window.add(now, call.duration_s, error, rejected)
        if failed:  # the fields `Failure` names; session, tenant, subject and sizes stay behind
            self.failures.append(msgspec.convert(call, Failure, from_attributes=True))

    def figures(self, channel: str, server: str = CHANNEL) -> WindowFigures:
        """The figures of a channel (`server` omitted) or of one server within it."""
        window = self._windows.get((channel, server))
        if window is None:
            return WindowFigures(calls=0, calls_per_s=0.0, p50_ms=None, p99_ms=None, total=0, errors={}, rejections=0)
        return window.figures(self._clock())

    def recent_failures(self) -> list[Failure]:
        """Newest first."""
        return list(reversed(self.failures))
