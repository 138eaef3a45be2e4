"""gateway.observe.callstats with a hand-driven clock: the sliding window (rates and percentiles forget what
is older than the window), nearest-rank percentiles, errors by source, rejections, and the bounds on memory
(latency samples, error kinds, keys, the failure ring)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.observe import callstats
from gateway.observe.callstats import FAILURES, MAX_ERROR_KINDS, SAMPLES, WINDOW_S, CallStats, percentile
from gateway.observe.records import CallRecord


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def call(**fields: Any) -> CallRecord:
    base: dict[str, Any] = {
        "time": 0.0,
        "tunnel": "t",
        "channel": "main",
        "method": "tools/call",
        "outcome": "ok",
        "status": 200,
        "duration_s": 0.010,
        "server": "clock",
        "name": "now",
    }
    return CallRecord(**{**base, **fields})


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_rates_and_percentiles_cover_the_window_only() -> None:
    clock = Clock()
    stats = CallStats(clock)
    for ms in range(1, 101):  # 100 calls of 1..100 ms in one second
        stats.record(call(duration_s=ms / 1000))
    figures = stats.figures("main", "clock")
    assert figures.calls == 100
    assert figures.calls_per_s == pytest.approx(100 / WINDOW_S, abs=1e-3)
    assert (figures.p50_ms, figures.p99_ms) == (50.0, 99.0)
    assert stats.figures("main").calls == 100  # the channel's totals count them too

    clock.now += WINDOW_S - 1  # still inside the window
    stats.record(call(duration_s=1.0))
    assert stats.figures("main", "clock").calls == 101
    clock.now += 2  # the first second has left the window; the last call has not
    figures = stats.figures("main", "clock")
    assert figures.calls == 1
    assert (figures.p50_ms, figures.p99_ms) == (1000.0, 1000.0)
    assert figures.total == 101
    clock.now += WINDOW_S
    figures = stats.figures("main", "clock")
    assert (figures.calls, figures.p50_ms, figures.p99_ms) == (0, None, None)


def test_a_second_slot_is_reused_after_the_window() -> None:
    clock = Clock()
    stats = CallStats(clock)
    stats.record(call())
    clock.now += WINDOW_S  # the same slot of the ring, a new second: the old count is not added
    stats.record(call())
    assert stats.figures("main", "clock").calls == 1


def test_latency_samples_are_bounded_to_the_newest() -> None:
    clock = Clock()
    stats = CallStats(clock)
    for _ in range(SAMPLES):
        stats.record(call(duration_s=5.0))
    for _ in range(SAMPLES):  # as many fast ones: the slow samples are overwritten
        stats.record(call(duration_s=0.001))
    figures = stats.figures("main", "clock")
    assert figures.p99_ms == 1.0
    assert figures.calls == 2 * SAMPLES  # the rate still counts every call


def test_errors_by_source_rejections_and_the_failure_ring() -> None:
    clock = Clock()
    stats = CallStats(clock)
    stats.record(call(outcome="error", error="transport_closed", status=502))
    stats.record(call(outcome="error", error="timeout", status=502))
    stats.record(call(outcome="rejected", error="limit server", status=429, server=None))
    stats.record(call(outcome="cancelled"))  # the caller left: not a failure
    stats.record(call(outcome="timeout", error=None, status=0))
    server = stats.figures("main", "clock")
    assert server.errors == {"transport_closed": 1, "timeout": 2}
    assert server.rejections == 0
    channel = stats.figures("main")
    assert channel.rejections == 1
    assert channel.errors == {"transport_closed": 1, "timeout": 2, "limit server": 1}
    failures = stats.recent_failures()
    assert [f.outcome for f in failures] == ["timeout", "rejected", "error", "error"]  # newest first
    assert failures[-1].error == "transport_closed"
    assert failures[-1].name == "now"

    for index in range(FAILURES + 10):
        stats.record(call(outcome="error", error=f"kind-{index}"))
    assert len(stats.recent_failures()) == FAILURES
    assert stats.recent_failures()[0].error == f"kind-{FAILURES + 9}"
    errors = stats.figures("main", "clock").errors
    assert len(errors) <= MAX_ERROR_KINDS + 1
    assert errors["other"] > 0


def test_rejected_calls_never_count_as_latency() -> None:
    stats = CallStats(Clock())
    stats.record(call(outcome="rejected", error="limit", duration_s=9.0))
    figures = stats.figures("main", "clock")
    assert (figures.calls, figures.rejections, figures.p50_ms) == (1, 1, None)


def test_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callstats, "MAX_KEYS", 4)
    stats = CallStats(Clock())
    for index in range(10):
        stats.record(call(channel=f"c{index}", server="s"))
    assert len(stats._windows) == 4
    assert stats.figures("c9", "s").calls == 0  # past the bound: not tracked, nothing fails


def test_a_key_without_calls_has_empty_figures() -> None:
    figures = CallStats(Clock()).figures("nowhere", "none")
    assert (figures.calls, figures.total, figures.errors, figures.p50_ms) == (0, 0, {}, None)
