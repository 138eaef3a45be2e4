"""`python -m bench`: run the benchmark suite and write bench/out/*.json and *.md.

    .venv/bin/python -m bench                 # full run: 3 rounds of a 10 s run per scenario, profile, scale
    .venv/bin/python -m bench --quick         # short runs to check the harness (numbers are indicative only)
    .venv/bin/python -m bench --only fast-stdio/tunnel      # scenarios whose name contains the text
    .venv/bin/python -m bench --only tunnel/fast-stdio-legacy/c64,tracing-on/c64   # any of several
    .venv/bin/python -m bench --targets       # only the scenarios the issue-20 targets table reads, 3 rounds (~15 min)
    .venv/bin/python -m bench --only c64 --rounds 3   # every scenario once per round, 3 rounds, medians across them
    .venv/bin/python -m bench --results       # also rewrite the generated part of bench/RESULTS.md
    .venv/bin/python -m bench --list          # print the scenario names and exit

Owns argument parsing and the order of a run; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from bench import micro, report, targets
from bench.runner import Timing, analyse_collapsed, idle_scale, log, profile, run_rounds, select
from bench.scenarios import matrix
from bench.stacks import BENCH, OUT, ROOT, TunnelOptions


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="MCP tunnel gateway benchmarks")
    parser.add_argument("--quick", action="store_true", help="short runs (harness check); numbers are noisy")
    parser.add_argument("--only", metavar="TEXT", help="only scenarios whose name contains TEXT (or any of TEXT,TEXT2)")
    parser.add_argument(
        "--targets", action="store_true", help="only the scenarios the issue-20 targets table reads (adds to --only)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="passes over all the scenarios, each running every scenario once; medians across them "
        "(default 3, quick 1)",
    )
    parser.add_argument("--runs", type=int, help="measured runs per scenario per round (default 1; 3 with --rounds 1)")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10, quick 2)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before measuring (default 3, quick 0.5)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles and micro-measurements")
    parser.add_argument("--no-scale", action="store_true", help="skip the 100-server start-up/RSS check")
    parser.add_argument("--scale-servers", type=int, default=100)
    parser.add_argument("--results", action="store_true", help="rewrite the generated part of bench/RESULTS.md")
    parser.add_argument("--list", action="store_true", help="list scenario names and exit")
    parser.add_argument("--render", metavar="JSON", help="only re-render a saved run (bench/out/results-*.json)")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> int:
    quick = args.quick
    rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    if rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    timing = Timing(
        warmup_s=args.warmup if args.warmup is not None else (0.5 if quick else 3.0),
        duration_s=args.duration if args.duration is not None else (2.0 if quick else 10.0),
        runs=args.runs if args.runs is not None else (1 if quick or rounds > 1 else 3),
    )
    sampled = Timing(timing.warmup_s, timing.duration_s, timing.runs * rounds)
    """The profiles record as long as a scenario is measured in all (they run once, after the rounds)."""
    scenarios = matrix(quick)
    if args.targets:
        args.only = ",".join(filter(None, [args.only, *targets.SCENARIOS]))
    if args.render:
        return rerender(Path(args.render), results=args.results)
    if args.list:
        for s in select(scenarios, args.only):
            print(s.name + (f"   (requires {s.requires})" if s.requires else ""))
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    info = report.machine()
    log(report.machine_text(info))
    run: dict[str, Any] = {
        "started": started,
        "mode": "QUICK (provisional, noisy)" if quick else "full",
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "timing": timing.__dict__,
        "rounds": rounds,
        "machine": info,
        "results": [],
    }
    out_json = OUT / f"results-{stamp}.json"

    def save() -> None:
        text = json.dumps(run, indent=1)
        out_json.write_text(text)
        (OUT / "latest.json").write_text(text)

    try:
        await run_rounds(scenarios, timing, args.only, run["results"], rounds)
        save()
        if not args.no_scale and not args.only:
            log(f"idle scale: {args.scale_servers} stdio servers ...")
            run["scale"] = await idle_scale(args.scale_servers)
            log(f"idle scale: {run['scale']}")
            save()
        if not args.no_profile and not args.only:
            log("profile: py-spy on gateway and relay ...")
            run["profile"] = await profile(sampled)
            save()
            log("micro-measurements of the proposed fixes ...")
            run["micro"] = await micro.main()
            save()
            log("profile with tracing on ...")
            run["profile_tracing"] = await profile(sampled, label="tracing", options=TunnelOptions(tracing=True))
            save()
    finally:
        save()
        text = report.render(run)
        (OUT / f"report-{stamp}.md").write_text(text)
        (OUT / "report.md").write_text(text)
        print(text)
        if args.results:
            report.write_results(text, BENCH / "RESULTS.md")
        log(f"saved {out_json.relative_to(BENCH.parent)} and bench/out/report.md")
    return 0


def rerender(path: Path, *, results: bool) -> int:
    """Re-render a saved run (profile tables recomputed from the raw stacks when they are still there)."""
    run = json.loads(path.read_text())
    for key in ("profile", "profile_tracing"):
        prof = run.get(key) or {}
        for role in ("gateway", "relay"):
            raw = prof.get(role, {}).get("raw")
            if raw and (ROOT / raw).exists():
                prof[role] = {**analyse_collapsed((ROOT / raw).read_text()), "raw": raw}
    text = report.render(run)
    (OUT / "report.md").write_text(text)
    print(text)
    if results:
        report.write_results(text, BENCH / "RESULTS.md")
    return 0


if __name__ == "__main__":
    arguments = parse(None)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        sys.exit(runner.run(main(arguments)))
