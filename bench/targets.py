"""The issue-20 targets as a table: each target's ratio computed from the scenarios measured in this run,
met / not met, or "not measured" when a scenario it needs was not run. Renders text; measures nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

NOT_MEASURED: Final = "not measured"
ADDED_P50_BEFORE_MS: Final = 1.43
"""Added p50 latency at c=1 on the fast stdio server in the last full run before issue 20 (RESULTS.md)."""

SCENARIOS: Final = (
    "fast-stdio/direct/fast-stdio-legacy/c1/100B/",
    "fast-stdio/tunnel/fast-stdio-legacy/c1/100B/",
    "fast-stdio/tunnel/fast-stdio-legacy/c64/100B/",
    "fast-stdio/mcp-proxy/fast-stdio-legacy/c1/100B/",
    "fast-stdio/mcp-proxy/fast-stdio-legacy/c64/100B/",
    "fast-stdio/supergateway/fast-stdio-legacy/c1/100B/",
    "fast-stdio/supergateway/fast-stdio-legacy/c64/100B/",
    "everything-stdio/tunnel/everything-stdio/c1/100B/",
    "everything-stdio/tunnel/everything-stdio/c64/100B/",
    "everything-stdio/mcp-proxy/everything-stdio/c1/100B/",
    "everything-stdio/mcp-proxy/everything-stdio/c64/100B/",
    "everything-stdio/supergateway/everything-stdio/c1/100B/",
    "tracing/tunnel/fast-stdio-legacy/tracing-on/c64/",
    "tracing/tunnel/fast-stdio-legacy/metrics-only/c64/",
    "redis/tunnel/fast-stdio-legacy/redis-2replicas/c64/",
    "fast-stdio/embedded/fast-stdio-legacy/c1/100B/",
    "fast-stdio/embedded/fast-stdio-legacy/c64/100B/",
    "everything-stdio/embedded/everything-stdio/c1/100B/",
    "everything-stdio/embedded/everything-stdio/c64/100B/",
)
"""The scenarios `issue20` and `embedded` read (`python -m bench --targets` runs exactly these): targets 1-5,
and the same peer comparisons for the default deployment, in one run."""

EMBEDDED_ROWS: Final = (
    ("fast-stdio", 1, "supergateway", 1.0),
    ("fast-stdio", 1, "mcp-proxy", 1.0),
    ("everything-stdio", 1, "supergateway", 1.0),
    ("everything-stdio", 1, "mcp-proxy", 1.0),
    ("fast-stdio", 64, "supergateway", 2.5),
    ("fast-stdio", 64, "mcp-proxy", 4.0),
    ("everything-stdio", 64, "mcp-proxy", 4.0),
)
"""(upstream, c, peer, factor) of the embedded path's comparisons: targets 3 and 4 for the default deployment."""

Row = tuple[str, str, str]
Record = dict[str, Any]


def _find(records: list[Record], **match: Any) -> Record | None:
    for r in records:
        if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


@dataclass(frozen=True)
class Measured:
    """A scenario's figure: the median the verdict uses, and the figure of each round (`--rounds`), by round."""

    median: float
    rounds: dict[int, float]


def _measured(record: Record | None, median: Any, of_run: Callable[[Record], Any]) -> Measured | None:
    if record is None or not median:
        return None
    rounds: dict[int, list[float]] = {}
    for run in record["raw"]["runs"] if record.get("raw") else ():
        value = of_run(run)
        if "round" in run and value:
            rounds.setdefault(run["round"], []).append(float(value))
    return Measured(float(median), {index: statistics.median(values) for index, values in rounds.items()})


def _cpu(record: Record | None, role: str) -> Measured | None:
    if record is None:
        return None
    return _measured(record, record["summary"]["cpu_us_per_call"].get(role), lambda run: run["cpu_ms_per_1k"].get(role))


def _tp(record: Record | None) -> Measured | None:
    if record is None:
        return None
    return _measured(record, record["summary"]["throughput"], lambda run: run["throughput"])


def _paired(top: Measured, bottom: Measured, combine: Callable[[float, float], float]) -> list[float]:
    """`combine` of the two figures of each round both were measured in; empty unless there were rounds."""
    both = sorted(top.rounds.keys() & bottom.rounds.keys())
    return [combine(top.rounds[i], bottom.rounds[i]) for i in both] if len(both) > 1 else []


def _ratio_row(
    target: str,
    top: Measured | None,
    bottom: Measured | None,
    met: Callable[[float], bool],
    unit: str = "",
) -> Row:
    """`top / bottom` with both medians shown, or "not measured" when either is missing. Measured in
    rounds, the ratio is the median of each round's ratio (a pair measured minutes apart at most), which
    the verdict uses, with every round's shown; else the ratio of the medians."""
    if top is None or bottom is None:
        return (target, NOT_MEASURED, NOT_MEASURED)
    ratio = top.median / bottom.median
    shown = f"{top.median:,.0f}{unit} / {bottom.median:,.0f}{unit}"
    by_round = _paired(top, bottom, lambda a, b: a / b)
    if by_round:
        ratio = statistics.median(by_round)
        shown = f"rounds {' / '.join(f'{r:.2f}' for r in by_round)}; medians {shown}"
    return (target, f"{ratio:.2f}x ({shown})", "**met**" if met(ratio) else "**not met**")


def _tunnel(records: list[Record], group: str, c: int, **extra: Any) -> Record | None:
    return _find(records, group=group, path="tunnel", concurrency=c, payload=100, era="legacy", **extra)


def _peer(records: list[Record], group: str, path: str, c: int) -> Record | None:
    return _find(records, group=group, path=path, concurrency=c, payload=100, era="legacy")


def issue20(records: list[Record]) -> list[Row]:
    """(target, measured ratio, met?) for every target of issue 20, in the issue's order."""
    off = _tunnel(records, "fast-stdio", 64)
    on = _find(records, group="tracing", path="tunnel", concurrency=64, variant="tracing-on")
    rows = [
        _ratio_row(
            "1. tracing on: gateway CPU per command <= 1.5x tracing off (c=64)",
            _cpu(on, "gateway"),
            _cpu(off, "gateway"),
            lambda r: r <= 1.5,
            " µs",
        ),
        _ratio_row(
            "1. tracing on: relay CPU per call <= 1.3x tracing off (c=64)",
            _cpu(on, "relay"),
            _cpu(off, "relay"),
            lambda r: r <= 1.3,
            " µs",
        ),
        _ratio_row(
            "1. tracing on: throughput >= 0.8x tracing off (c=64)",
            _tp(on),
            _tp(off),
            lambda r: r >= 0.8,
            "/s",
        ),
        _ratio_row(
            "1. metrics always on: gateway CPU per command <= 1.1x off (c=64)",
            _cpu(_find(records, group="tracing", path="tunnel", concurrency=64, variant="metrics-only"), "gateway"),
            _cpu(off, "gateway"),
            lambda r: r <= 1.1,
            " µs",
        ),
        _ratio_row(
            "2. relay CPU per call <= the gateway's (c=64, tracing off)",
            _cpu(off, "relay"),
            _cpu(off, "gateway"),
            lambda r: r <= 1.0,
            " µs",
        ),
    ]
    for group in ("fast-stdio", "everything-stdio"):
        one = _tunnel(records, group, 1)
        for peer in ("supergateway", "mcp-proxy"):
            rows.append(
                _ratio_row(
                    f"3. {group} c=1: tunnel throughput >= {peer}",
                    _tp(one),
                    _tp(_peer(records, group, peer, 1)),
                    lambda r: r >= 1.0,
                    "/s",
                )
            )
    one, direct = _tunnel(records, "fast-stdio", 1), _peer(records, "fast-stdio", "direct", 1)
    if one is None or direct is None:
        rows.append(("3. fast-stdio c=1: added p50 <= half of before", NOT_MEASURED, NOT_MEASURED))
    else:
        added = one["summary"]["p50_ms"] - direct["summary"]["p50_ms"]
        shown = ""
        ours = _measured(one, one["summary"]["p50_ms"], lambda run: run["p50_ms"])
        base = _measured(direct, direct["summary"]["p50_ms"], lambda run: run["p50_ms"])
        by_round = _paired(ours, base, lambda a, b: a - b) if ours and base else []
        if by_round:  # as `_ratio_row`: the median of each round's figure
            added = statistics.median(by_round)
            shown = f"; rounds {' / '.join(f'{a:.2f}' for a in by_round)} ms"
        shown = f"{added / ADDED_P50_BEFORE_MS:.2f}x ({added:.2f} ms / {ADDED_P50_BEFORE_MS} ms){shown}"
        rows.append(
            (
                f"3. fast-stdio c=1: added p50 <= half of before ({ADDED_P50_BEFORE_MS} ms)",
                shown,
                "**met**" if added <= ADDED_P50_BEFORE_MS / 2 else "**not met**",
            )
        )
    for group, peer, factor in (
        ("fast-stdio", "supergateway", 2.5),
        ("fast-stdio", "mcp-proxy", 4.0),
        ("everything-stdio", "mcp-proxy", 4.0),
    ):
        rows.append(
            _ratio_row(
                f"4. {group} c=64: tunnel >= {factor}x {peer}",
                _tp(_tunnel(records, group, 64)),
                _tp(_peer(records, group, peer, 64)),
                lambda r, f=factor: r >= f,
                "/s",
            )
        )
    rows.append(
        _ratio_row(
            "5. Redis, 2 replicas >= 0.7x one in-memory relay (c=64)",
            _tp(_tunnel(records, "redis", 64)),
            _tp(off),
            lambda r: r >= 0.7,
            "/s",
        )
    )
    rows.append(("6. 10-minute soak at c=64, 1,000 sessions: flat RSS", NOT_MEASURED, NOT_MEASURED))
    rows.append(("6. 1,000 idle stdio servers: under today's per-server cost", NOT_MEASURED, NOT_MEASURED))
    return rows


def embedded(records: list[Record]) -> list[Row]:
    """Targets 3 and 4's peer comparisons for the default deployment: `gateway --routes routing.yaml` with its
    embedded relay (one process) instead of a relay process. Not the issue's rows, which are the tunnel's."""
    return [
        _ratio_row(
            f"{group} c={c}: embedded >= {factor:g}x {peer}",
            _tp(_find(records, group=group, path="embedded", concurrency=c, payload=100, era="legacy")),
            _tp(_peer(records, group, peer, c)),
            lambda r, f=factor: r >= f,
            "/s",
        )
        for group, c, peer, factor in EMBEDDED_ROWS
    ]


def table(records: list[Record]) -> list[str]:
    """The markdown tables' lines: the issue's targets, then the default deployment's comparisons."""
    return [
        "| target (issue 20) | measured in this run | |",
        "|---|---|---|",
        *(f"| {target} | {measured} | {met} |" for target, measured, met in issue20(records)),
        "",
        "| the default deployment, embedded relay (not an issue-20 row) | measured in this run | |",
        "|---|---|---|",
        *(f"| {target} | {measured} | {met} |" for target, measured, met in embedded(records)),
    ]
