"""`python -m bench.scale`: N idle stdio servers behind one gateway: start-up time and what each server costs it.

Owns generating a routing.yaml of N minimal stdio servers (bench/idle_server.sh; one channel each, or one
aggregated channel), starting a relay and the gateway (under bench.probe, to count its asyncio tasks), and
reading, after the servers are up and again after an idle spell: the gateway's RSS, open fds, threads and
tasks, the children's total RSS and PSS, and the same for 1 server, so the per-server cost is the difference
divided by N - 1. Processes come from bench.stacks; measures, never asserts.

    .venv/bin/python -m bench.scale --servers 1000                  # one channel per server
    .venv/bin/python -m bench.scale --servers 1000 --layout aggregate
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procstat
from bench.stacks import BENCH, OUT, PYTHON, RELAY_YAML, ROOT, Proc, routing_yaml, spawn

IDLE_SERVER = ("/bin/sh", str(BENCH / "idle_server.sh"))
PER_SERVER = ("gateway_rss_kib", "gateway_fds", "gateway_tasks", "gateway_threads", "children_pss_kib")


def server_block() -> str:
    command, script = IDLE_SERVER
    return f'{{stdio: {{command: "{command}", args: ["{script}"]}}}}'


def layout(count: int, kind: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    names = [f"s{i}" for i in range(count)]
    servers = {n: server_block() for n in names}
    if kind == "aggregate":
        return servers, {"main": names}
    return servers, {f"c{i}": [n] for i, n in enumerate(names)}


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def open_files_limit(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return f"{soft}/{hard}"
    except OSError:
        pass
    return "?"


def _written(out: Path) -> int:
    return out.stat().st_mtime_ns if out.exists() else 0


def _newer(out: Path, before: int) -> dict[str, Any] | None:
    if _written(out) == before:
        return None
    return json.loads(out.read_text())  # type: ignore[no-any-return]


async def probe(pid: int, out: Path, within_s: float = 30.0) -> dict[str, Any]:
    """Ask bench.probe inside process `pid` for its task, thread and fd counts (SIGUSR2, then its JSON file)."""
    before = _written(out)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if (found := _newer(out, before)) is not None:
            return found
        await asyncio.sleep(0.1)
    return {}


async def reading(gateway: Proc, probe_file: Path) -> dict[str, Any]:
    kids = procstat.children(gateway.pid)
    inside = await probe(gateway.pid, probe_file)
    return {
        "gateway_rss_kib": procstat.status_kib(gateway.pid, "VmRSS") or 0,
        "gateway_fds": fd_count(gateway.pid),
        "gateway_threads": procstat.status_kib(gateway.pid, "Threads") or 0,
        "gateway_tasks": inside.get("tasks", 0),
        "task_kinds": inside.get("task_kinds", {}),
        "children": len(kids),
        "children_rss_kib": sum(procstat.status_kib(k, "VmRSS") or 0 for k in kids),
        "children_pss_kib": sum(pss_kib(k) for k in kids),
        **({"largest": inside["largest"]} if "largest" in inside else {}),  # BENCH_TRACEMALLOC=FRAMES set
    }


async def one(count: int, args: argparse.Namespace) -> dict[str, Any]:
    """Relay + gateway with `count` idle servers: start-up, a reading once up, another after the idle spell."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        relay_file = Path(tmp) / "relay.yaml"
        relay_file.write_text(RELAY_YAML)
        async with spawn(
            f"scale{count}-relay", PYTHON, "-m", "gateway.cli", "relay", "--config", str(relay_file)
        ) as relay:
            relay_url = (await relay.wait_for(r"relay: ready (\S+)"))[1]
            servers, channels = layout(count, args.layout)
            routes = Path(tmp) / "routing.yaml"
            routes.write_text(routing_yaml(relay_url, servers, channels))
            probe_file = Path(tmp) / "probe.json"
            started = time.monotonic()
            async with spawn(
                f"scale{count}-gateway",
                PYTHON,
                "-m",
                "bench.probe",
                "--log-level",
                "INFO",
                "--routes",
                str(routes),
                env={"BENCH_PROBE_OUT": str(probe_file)},
            ) as gateway:
                await gateway.wait_for(r"^gateway: ready", within_s=args.ready_timeout)
                ready_s = time.monotonic() - started
                up = sum(1 for line in gateway.lines if "up (" in line and "server '" in line)
                not_ready = sum(1 for line in gateway.lines if "NOT ready" in line)
                await asyncio.sleep(args.settle)
                first = await reading(gateway, probe_file)
                await asyncio.sleep(args.idle)
                later = await reading(gateway, probe_file)
                restarts = sum(1 for line in gateway.lines if "restarting in" in line)
                return {
                    "servers": count,
                    "ready_s": round(ready_s, 2),
                    "servers_up": up,
                    "servers_not_ready": not_ready,
                    "restarts": restarts,
                    "open_files_limit": open_files_limit(gateway.pid),
                    "after_start": first,
                    "after_idle": later,
                }


def per_server(small: dict[str, Any], big: dict[str, Any]) -> dict[str, float]:
    """What one more idle server costs: the difference between the two runs' idle readings over N - 1."""
    n = big["servers"] - small["servers"]
    return {key: round((big["after_idle"][key] - small["after_idle"][key]) / n, 2) for key in PER_SERVER}


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "gateway"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "?"
    return out.stdout.strip() + (" (+ uncommitted gateway changes)" if dirty.stdout.strip() else "")


async def scale(args: argparse.Namespace) -> dict[str, Any]:
    small = await one(1, args)
    big = await one(args.servers, args)
    return {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "layout": args.layout,
        "servers": args.servers,
        "runs": [small, big],
        "per_server": per_server(small, big),
    }


def render(result: dict[str, Any]) -> str:
    small, big = result["runs"]
    lines = [f"scale: {result['servers']} idle stdio servers, layout {result['layout']}, commit {result['commit']}"]
    for run in (small, big):
        r = run["after_idle"]
        lines.append(
            f"  {run['servers']:5} servers: ready in {run['ready_s']} s, up {run['servers_up']}, not ready "
            f"{run['servers_not_ready']}, restarts {run['restarts']}; gateway RSS {r['gateway_rss_kib'] / 1024:.1f} "
            f"MiB (after start {run['after_start']['gateway_rss_kib'] / 1024:.1f}), fds {r['gateway_fds']} "
            f"(limit {run['open_files_limit']}), threads {r['gateway_threads']}, tasks {r['gateway_tasks']}; "
            f"children {r['children']}: RSS {r['children_rss_kib'] / 1024:.1f} MiB, "
            f"PSS {r['children_pss_kib'] / 1024:.1f} MiB"
        )
    kinds = big["after_idle"]["task_kinds"]
    lines.append("  tasks by coroutine: " + ", ".join(f"{k} {v}" for k, v in list(kinds.items())[:8]))
    per = result["per_server"]
    lines.append(
        f"  per server: gateway RSS {per['gateway_rss_kib']} KiB, fds {per['gateway_fds']}, "
        f"tasks {per['gateway_tasks']}, threads {per['gateway_threads']}; "
        f"the server process itself (PSS) {per['children_pss_kib']} KiB"
    )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--layout", choices=("channels", "aggregate"), default="channels")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after ready before the first reading")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds idle before the second reading")
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--json", help="where to write the result (default bench/out/scale-<layout>-latest.json)")
    args = parser.parse_args(argv)
    if args.servers < 2:
        parser.error("--servers must be at least 2 (the cost per server is the difference to 1 server)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = asyncio.run(scale(args))
    OUT.mkdir(parents=True, exist_ok=True)
    Path(args.json or OUT / f"scale-{args.layout}-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(render(result), flush=True)
    big = result["runs"][-1]
    return 0 if big["servers_up"] == big["servers"] else 1


if __name__ == "__main__":
    sys.exit(main())
