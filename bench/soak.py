"""`python -m bench.soak`: the full path under steady load for minutes, RSS sampled to show memory stays flat.

Owns cycling a pool of distinct MCP client sessions (handshake era: `initialize`, `Mcp-Session-Id`, a few
calls, `DELETE`, then a fresh session in that slot) at a fixed concurrency, sampling the resident memory of
the gateway, the relay and the stdio server every few seconds into a CSV, and the least-squares slope after
a warm-up with its verdict. Processes come from bench.stacks, the MCP client from bench.load; must not change
how either works.

    .venv/bin/python -m bench.soak --minutes 10 --concurrency 64 --sessions 1000     # the full soak
    .venv/bin/python -m bench.soak --short                                          # ~40 s smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench import procstat
from bench.load import CallFailed, HttpSession
from bench.scale import probe
from bench.stacks import OUT, TunnelOptions, fast_stdio, tunnel_stack

FLAT_PCT_PER_MIN = 0.1
"""Verdict threshold: a slope under 0.1 % of the role's mean RSS per minute (6 %/hour) counts as flat."""
VERDICT_ROLES = ("gateway", "relay")
ROLES = ("gateway", "relay", "upstream")


@dataclass
class Slot:
    """One of the pool's distinct client sessions; reopened as a new session after `calls_per_session` calls."""

    lifetime: int
    """Calls before this slot's session is replaced (the first lifetimes are staggered so churn is steady)."""
    session: HttpSession | None = None
    calls: int = 0


@dataclass
class Tally:
    calls: int = 0
    opened: int = 0
    closed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def slope_kib_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, KiB) points, in KiB per minute; None with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


def verdicts(rows: list[dict[str, float]], warmup_s: float) -> dict[str, dict[str, Any]]:
    """Per role: slope after the warm-up (KiB/min), mean RSS, slope as % of it per minute, flat or not."""
    out: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        points = [(r["t_s"], r[f"{role}_kib"]) for r in rows if r["t_s"] >= warmup_s and r.get(f"{role}_kib")]
        slope = slope_kib_per_min(points)
        if slope is None:
            out[role] = {"samples": len(points), "verdict": "too few samples"}
            continue
        mean = sum(v for _, v in points) / len(points)
        pct = 100.0 * slope / mean
        verdict = ("flat" if pct < FLAT_PCT_PER_MIN else "GROWING") if role in VERDICT_ROLES else "(informative)"
        out[role] = {
            "samples": len(points),
            "first_kib": points[0][1],
            "last_kib": points[-1][1],
            "mean_kib": round(mean),
            "slope_kib_per_min": round(slope, 1),
            "slope_pct_per_min": round(pct, 4),
            "verdict": verdict,
        }
    return out


async def _drive(
    url: str, args: argparse.Namespace, tally: Tally, stop: asyncio.Event, http: aiohttp.ClientSession
) -> None:
    """`concurrency` workers taking sessions from a FIFO pool of `sessions` slots (each slot in use by one worker)."""
    pool: asyncio.Queue[Slot] = asyncio.Queue()
    for index in range(args.sessions):
        pool.put_nowait(Slot(lifetime=1 + index % args.calls_per_session))
    arguments = {"message": "x" * 100}

    async def close(slot: Slot) -> None:
        if slot.session is not None:
            await slot.session.close()
            tally.closed += 1
        slot.session, slot.calls = None, 0

    async def worker() -> None:
        while not stop.is_set():
            slot = await pool.get()
            try:
                async with asyncio.timeout(60):
                    if slot.session is None:
                        slot.session = HttpSession(http, url, "legacy", {})
                        await slot.session.initialize()
                        tally.opened += 1
                    await slot.session.call("echo", arguments)
                tally.calls += 1
                slot.calls += 1
                if slot.calls >= slot.lifetime:
                    await close(slot)
                    slot.lifetime = args.calls_per_session
            except (CallFailed, TimeoutError, aiohttp.ClientError, OSError) as exc:
                tally.errors[f"{type(exc).__name__}: {exc}"[:80]] += 1
                slot.session, slot.calls = None, 0  # start over with a fresh session
                await asyncio.sleep(0.05)
            finally:
                pool.put_nowait(slot)

    workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    try:
        await stop.wait()
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        while not pool.empty():
            slot = pool.get_nowait()
            with contextlib.suppress(Exception):
                await close(slot)


def _rss(pids: list[int]) -> float:
    return float(sum(v for pid in pids if (v := procstat.status_kib(pid, "VmRSS")) is not None))


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    duration_s = args.minutes * 60.0
    warmup_s = args.warmup_minutes * 60.0
    OUT.mkdir(parents=True, exist_ok=True)
    csv_path = Path(args.csv) if args.csv else OUT / "soak-latest.csv"
    rows: list[dict[str, float]] = []
    tally = Tally()
    options = TunnelOptions()
    probe_file = OUT / "soak-probe.json"
    if args.tracemalloc:
        # The gateway runs under bench.probe: a snapshot at the end of the warm-up, a diff against it at the end.
        os.environ.update(BENCH_TRACEMALLOC=str(args.tracemalloc), BENCH_PROBE_OUT=str(probe_file))
        options = TunnelOptions(gateway_module="bench.probe")
    probes: list[dict[str, Any]] = []
    async with tunnel_stack(fast_stdio("legacy"), options, "soak") as stack:
        url = stack.target["url"]
        gateway = stack.roles["gateway"]
        relay = stack.roles["relay"]
        stop = asyncio.Event()
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=60),
            auto_decompress=False,
        )
        started = time.monotonic()
        driver = asyncio.create_task(_drive(url, args, tally, stop, http))
        fields = ["t_s", "calls", "sessions_opened", "errors", "gateway_kib", "relay_kib", "upstream_kib"]
        try:
            with csv_path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                next_report = 0.0
                probe_at = [warmup_s, duration_s - 2 * args.interval] if args.tracemalloc else []
                while (elapsed := time.monotonic() - started) < duration_s and not driver.done():
                    upstream = procstat.children(gateway[0])
                    row = {
                        "t_s": round(elapsed, 1),
                        "calls": tally.calls,
                        "sessions_opened": tally.opened,
                        "errors": sum(tally.errors.values()),
                        "gateway_kib": _rss(gateway),
                        "relay_kib": _rss(relay),
                        "upstream_kib": _rss(upstream),
                    }
                    rows.append(row)
                    writer.writerow(row)
                    fh.flush()
                    if probe_at and elapsed >= probe_at[0]:
                        probe_at.pop(0)
                        probes.append(await probe(gateway[0], probe_file))
                    if elapsed >= next_report:
                        print(
                            f"soak t={elapsed:5.0f}s calls={tally.calls} sessions={tally.opened} "
                            f"errors={row['errors']} rss KiB gateway={row['gateway_kib']:.0f} "
                            f"relay={row['relay_kib']:.0f} upstream={row['upstream_kib']:.0f}",
                            file=sys.stderr,
                            flush=True,
                        )
                        next_report = elapsed + args.report_every
                    await asyncio.sleep(args.interval)
        finally:
            stop.set()
            await driver
            await http.close()
    measured_s = max(rows[-1]["t_s"] - warmup_s, 1e-9) if rows else 0.0
    after = [r for r in rows if r["t_s"] >= warmup_s]
    calls_after = (after[-1]["calls"] - after[0]["calls"]) if len(after) > 1 else 0
    return {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes,
        "concurrency": args.concurrency,
        "sessions": args.sessions,
        "calls_per_session": args.calls_per_session,
        "calls": tally.calls,
        "sessions_opened": tally.opened,
        "sessions_closed": tally.closed,
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors.most_common(5)),
        "sessions_opened_at_warmup": int(after[0]["sessions_opened"]) if after else None,
        "throughput_after_warmup": round(calls_after / measured_s, 1) if measured_s else None,
        "flat_threshold_pct_per_min": FLAT_PCT_PER_MIN,
        "roles": verdicts(rows, warmup_s),
        "csv": str(csv_path),
        **({"tracemalloc": probes[-1]} if probes else {}),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="smoke run: 0.75 min, 15 s warm-up, 1 s samples")
    parser.add_argument("--minutes", type=float, help="total length including warm-up (default 10, short 0.75)")
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        help="samples before this are not in the slope (default 4, or 40 %% of a shorter run)",
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sessions", type=int, default=1000, help="distinct client sessions in the pool")
    parser.add_argument("--calls-per-session", type=int, default=20, help="calls before a session is replaced")
    parser.add_argument("--interval", type=float, help="seconds between RSS samples (default 5, short 1)")
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds between progress lines")
    parser.add_argument("--csv", help="where to write the samples (default bench/out/soak-latest.csv)")
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="run the gateway under bench.probe with tracemalloc; print what grew after the warm-up",
    )
    parser.add_argument("--json", help="also write the summary here (default bench/out/soak-latest.json)")
    args = parser.parse_args(argv)
    if args.minutes is None:
        args.minutes = 0.75 if args.short else 10.0
    if args.short:
        args.report_every = 10.0
    if args.warmup_minutes is None:
        args.warmup_minutes = 0.25 if args.short else min(4.0, args.minutes * 0.4)
    if args.interval is None:
        args.interval = 1.0 if args.short else 5.0
    return args


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"soak: {summary['minutes']} min at c={summary['concurrency']}, pool of {summary['sessions']} sessions "
        f"({summary['calls_per_session']} calls each): {summary['calls']} calls, {summary['sessions_opened']} "
        f"sessions opened, {summary['errors']} errors, {summary['throughput_after_warmup']} calls/s",
        f"slope after {summary['warmup_minutes']} min warm-up ({summary['sessions_opened_at_warmup']} sessions opened "
        f"by then; flat: < {summary['flat_threshold_pct_per_min']} % of mean RSS per minute):",
    ]
    for role, v in summary["roles"].items():
        if "slope_kib_per_min" not in v:
            lines.append(f"  {role:9} {v['verdict']}")
            continue
        lines.append(
            f"  {role:9} {v['slope_kib_per_min']:+9.1f} KiB/min  ({v['slope_pct_per_min']:+.4f} %/min of "
            f"{v['mean_kib'] / 1024:.1f} MiB; {v['first_kib'] / 1024:.1f} -> {v['last_kib'] / 1024:.1f} MiB)  "
            f"{v['verdict']}"
        )
    for growth in summary.get("tracemalloc", {}).get("growth_since_first", [])[:12]:
        lines.append(
            f"  grew {growth['kib']:+8.1f} KiB {growth['blocks']:+6d} blocks  "
            + " <- ".join(
                w.strip() for w in reversed(growth["where"]) if w.strip() and not w.strip().startswith(("File", "^"))
            )[:300]
        )
    lines.append(f"samples: {summary['csv']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the gateway's own dependency
        summary = runner.run(soak(args))
    Path(args.json or OUT / "soak-latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(render(summary), flush=True)
    growing = [r for r in VERDICT_ROLES if summary["roles"].get(r, {}).get("verdict") == "GROWING"]
    if not summary["calls"]:
        return 2
    return 1 if growing and not args.short else 0  # a short run's slope is too noisy to fail on


if __name__ == "__main__":
    sys.exit(main())
