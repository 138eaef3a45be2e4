"""Running scenarios: stacks up, load process, medians, profile, the 100-server start-up check.

Owns the order of a run (probes, then each stack once with its scenarios in
ascending concurrency; with rounds, that whole pass again per round, so every
scenario is measured once per round and drift of the host's speed reaches all of
them alike), handing a scenario to the load process (`python -m bench.load`),
folding repeated runs and rounds into medians, the py-spy profile of the gateway
and relay under load, and the idle-scale measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import procstat, stacks
from bench.scenarios import Scenario, probe
from bench.stacks import (
    OUT,
    PYTHON,
    ROOT,
    Stack,
    StackError,
    TunnelOptions,
    fast_stdio,
    routing_yaml,
    server_block,
    spawn,
)


@dataclass(frozen=True)
class Timing:
    warmup_s: float
    duration_s: float
    runs: int


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def open_stack(scenario: Scenario, tag: str) -> AsyncIterator[Stack]:
    if scenario.path == "tunnel":
        async with stacks.tunnel_stack(scenario.upstream, scenario.options, tag) as stack:
            yield stack
    elif scenario.path == "embedded":
        async with stacks.embedded_stack(scenario.upstream, tag) as stack:
            yield stack
    elif scenario.path == "direct":
        async with stacks.direct_stack(scenario.upstream, tag) as stack:
            yield stack
    elif scenario.path == "mcp-proxy":
        async with stacks.mcp_proxy_stack(scenario.upstream, tag) as stack:
            yield stack
    elif scenario.path == "supergateway":
        async with stacks.supergateway_stack(scenario.upstream, tag) as stack:
            yield stack
    else:
        raise ValueError(scenario.path)


async def run_load(stack: Stack, scenario: Scenario, timing: Timing) -> dict[str, Any]:
    spec = {
        "target": stack.target,
        "roles": stack.roles,
        "children_of": stack.children_of,
        "concurrency": scenario.concurrency,
        "payload": scenario.payload,
        "era": scenario.era,
        "warmup_s": timing.warmup_s,
        "duration_s": timing.duration_s,
        "runs": timing.runs,
        "init_batch": 8 if scenario.path == "supergateway" else 32,
        "discover_tools": scenario.group == "aggregate",
    }
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "bench.load",
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    budget = 120 + timing.warmup_s + timing.runs * timing.duration_s + 120
    try:
        out, err = await asyncio.wait_for(proc.communicate(), budget)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise StackError(f"load process did not finish within {budget:.0f}s") from None
    for line in out.decode().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])  # type: ignore[no-any-return]
    raise StackError(f"load process failed ({proc.returncode}): {err.decode()[-600:]}")


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Medians over the runs (errors summed); CPU per role as µs per call and utilisation."""
    runs = result["runs"]

    def med(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    roles = sorted({role for r in runs for role in r["cpu_s"]})
    cpu_us = {}
    util = {}
    for role in roles:
        per_call = [r["cpu_ms_per_1k"][role] for r in runs if r["cpu_ms_per_1k"].get(role) is not None]
        cpu_us[role] = round(statistics.median(per_call), 1) if per_call else None
        util[role] = round(statistics.median(r["cpu_s"][role] / r["seconds"] for r in runs if r["seconds"]), 2)
    other = [r.get("other_cpu_s", 0) / r["seconds"] for r in runs if r["seconds"]]
    return {
        "throughput": med("throughput"),
        "p50_ms": med("p50_ms"),
        "p90_ms": med("p90_ms"),
        "p99_ms": med("p99_ms"),
        "calls": sum(r["calls"] for r in runs),
        "errors": sum(r["errors"] for r in runs) + sum(result.get("init_errors", {}).values()),
        "errors_per_s": round(sum(r["errors"] for r in runs) / max(sum(r["seconds"] for r in runs), 1e-9), 1),
        "error_kinds": _merge_kinds([r["error_kinds"] for r in runs] + [result.get("init_errors", {})]),
        "cpu_us_per_call": cpu_us,
        "cpu_cores": util,
        "other_cores": round(statistics.median(other), 2) if other else None,
        "peak_rss_mib": result.get("peak_rss_mib", {}),
        "sessions": result.get("sessions"),
        "process_counts": {role: len(pids) for role, pids in result.get("roles", {}).items()},
        "runs": [r["throughput"] for r in runs],
    }


def _merge_kinds(dicts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for d in dicts:
        for key, value in d.items():
            merged[key] = merged.get(key, 0) + value
    return merged


def limiter(summary: dict[str, Any], *, concurrency: int, rtt_ms: float) -> str:
    """Which process saturates (CPU per process tells), or what else bounds the scenario."""
    util: dict[str, float] = summary.get("cpu_cores", {})
    if not util:
        return "n/a"
    role, top = max(util.items(), key=lambda kv: kv[1])
    total = sum(util.values()) + (summary.get("other_cores") or 0)
    if top >= 0.85:
        return f"{role} CPU-bound ({top:.0%} of a core)"
    if total >= 1.7:
        return f"machine CPU ({total:.1f} of 2 cores busy; top: {role} {top:.0%})"
    if rtt_ms:
        return f"control-plane RTT (top: {role} {top:.0%})"
    if concurrency == 1:
        return f"latency chain at c=1 (top: {role} {top:.0%})"
    return f"no process saturated (top: {role} {top:.0%}; total {total:.1f} cores)"


async def run_rounds(
    scenarios: list[Scenario], timing: Timing, only: str | None, results: list[dict[str, Any]], rounds: int
) -> None:
    """`run_all` `rounds` times, then one record per scenario with the runs of every round folded in
    (`merge_rounds`). A ratio of two scenarios then compares runs made minutes, not a run's length,
    apart: on a host whose speed drifts, the drift lands on both sides."""
    if rounds <= 1:
        await run_all(scenarios, timing, only, results)
        return
    passes: list[list[dict[str, Any]]] = []
    for index in range(rounds):
        log(f"round {index + 1} of {rounds}")
        passes.append([])
        await run_all(scenarios, timing, only, passes[-1])
    results.extend(merge_rounds(passes))


def merge_rounds(passes: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One record per scenario from the records of several rounds: the measured runs of its rounds that
    succeeded, summarised together (medians over all of them), in the first round's order. A scenario
    that failed in some rounds keeps the others and says which failed; one that never succeeded keeps
    its first round's record."""
    order: list[str] = []
    by_name: dict[str, list[dict[str, Any]]] = {}
    for records in passes:
        for record in records:
            if record["name"] not in by_name:
                order.append(record["name"])
                by_name[record["name"]] = []
            by_name[record["name"]].append(record)
    merged = []
    for name in order:
        records = by_name[name]
        good = [r for r in records if r["status"] == "ok"]
        if not good:
            merged.append({**records[0], "rounds": len(records)})
            continue
        raw = {
            **good[0]["raw"],
            "runs": [
                {**run, "round": index + 1}
                for index, r in enumerate(records)
                if r["status"] == "ok"
                for run in r["raw"]["runs"]
            ],
            "init_errors": _merge_kinds([r["raw"].get("init_errors", {}) for r in good]),
            "peak_rss_mib": _peaks([r["raw"].get("peak_rss_mib", {}) for r in good]),
        }
        summary = summarize(raw)
        record = {**good[-1], "summary": summary, "raw": raw, "rounds": len(records)}
        record["limited_by"] = limiter(summary, concurrency=record["concurrency"], rtt_ms=record["rtt_ms"])
        trips = [r["redis_per_call"] for r in good if r.get("redis_per_call")]
        if trips:
            record["redis_per_call"] = {
                key: round(statistics.median(t[key] for t in trips), 2) for key in trips[0] if key in trips[-1]
            }
        failed = [f"round {i + 1}: {r['status']} ({r['why']})" for i, r in enumerate(records) if r["status"] != "ok"]
        if failed:
            record["why"] = "; ".join(failed)
        merged.append(record)
    return merged


def _peaks(peaks: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for peak in peaks:
        for role, value in peak.items():
            if value is not None and (out.get(role) is None or value > out[role]):
                out[role] = value
    return out


def select(scenarios: list[Scenario], only: str | None) -> list[Scenario]:
    """The scenarios whose name contains any of `only`'s comma-separated parts (all when None)."""
    if not only:
        return scenarios
    wanted = [part for part in only.split(",") if part]
    return [s for s in scenarios if any(part in s.name for part in wanted)]


async def run_all(scenarios: list[Scenario], timing: Timing, only: str | None, results: list[dict[str, Any]]) -> None:
    """Run every scenario (grouped by stack), appending one record per scenario to `results`."""
    scenarios = select(scenarios, only)
    probes: dict[str, tuple[bool, str, str]] = {}
    for need in sorted({s.requires for s in scenarios if s.requires}):
        probes[need] = await probe(need)
        log(f"probe {need}: {'available' if probes[need][0] else 'not available'} ({probes[need][1][:160]})")
    groups: dict[tuple[object, ...], list[Scenario]] = {}
    for scenario in scenarios:
        groups.setdefault(scenario.stack_key, []).append(scenario)
    for index, members in enumerate(groups.values()):
        members.sort(key=lambda s: (s.payload, s.era, s.concurrency))
        first = members[0]
        if first.requires:
            ok, why, extra = probes[first.requires]
            if not ok:
                for s in members:
                    why_not = why if first.requires == "redis" else f"gateway check refused it: {why}"
                    results.append(_record(s, status="not available", why=why_not))
                    log(f"-- {s.name}: not available")
                continue
            if extra:
                members = [replace(s, options=replace(s.options, extra_sections=extra)) for s in members]
        tag = f"{index:02d}-{first.group}-{first.path}"
        try:
            async with open_stack(members[0], tag) as stack:
                for scenario in members:
                    started = time.monotonic()
                    try:
                        before = await redis_commands(stack.redis_url)
                        raw = await run_load(stack, scenario, timing)
                        after = await redis_commands(stack.redis_url)
                    except StackError as exc:
                        results.append(_record(scenario, status="failed", why=str(exc)))
                        log(f"!! {scenario.name}: {exc}")
                        continue
                    summary = summarize(raw)
                    record = _record(scenario, status="ok", summary=summary, raw=raw)
                    record["limited_by"] = limiter(
                        summary, concurrency=scenario.concurrency, rtt_ms=scenario.options.rtt_ms
                    )
                    if stack.redis_url:
                        record["redis_per_call"] = redis_per_call(before, after)
                    if scenario.options.tracing:
                        exports = sum(1 for line in stack.procs["otlp-sink"].lines if line.startswith("EXPORT"))
                        record["otlp_exports"] = exports
                    results.append(record)
                    log(_line(record, time.monotonic() - started))
                if first.options.tracing:
                    # Exports are batched: count again once the gateway and relay flushed at exit.
                    sink = stack.procs["otlp-sink"]
                    for proc in ("gateway", "relay"):
                        await stack.procs[proc].stop()
                    await asyncio.sleep(0.5)
                    exports = sum(1 for line in sink.lines if line.startswith("EXPORT"))
                    for record in results:
                        if record["name"] in {s.name for s in members}:
                            record["otlp_exports"] = exports
                            if exports == 0 and record["status"] == "ok":
                                record["status"] = "no telemetry"
                                record["why"] = "the gateway and relay exported nothing to OTLP: telemetry not present"
        except StackError as exc:
            for s in members:
                if not any(r["name"] == s.name for r in results):
                    results.append(_record(s, status="failed", why=str(exc)))
            log(f"!! stack {tag}: {exc}")


async def redis_commands(url: str | None) -> dict[str, int]:
    """Commands the redis-server has run so far, by name (`INFO commandstats`); {} without Redis."""
    if url is None:
        return {}
    from redis.asyncio import Redis  # the project's own client; only Redis scenarios need it

    client = Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def redis_per_call(before: dict[str, int], after: dict[str, int]) -> dict[str, float] | None:
    """Round trips per MCP call over the scenario (warm-up included): scripts (EVALSHA), PUBLISHes and
    all commands, each divided by the INCRs (one per enqueued command, run only by the ENQUEUE script)."""
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    calls = delta.get("incr", 0)
    if calls <= 0:
        return None
    inside = sum(n for name, n in delta.items() if name not in ("evalsha", "eval", "info"))
    return {
        "scripts": round(delta.get("evalsha", 0) / calls, 2),
        "publish": round(delta.get("publish", 0) / calls, 2),
        "commands_in_scripts": round(inside / calls, 1),
    }


def _record(
    scenario: Scenario,
    *,
    status: str,
    why: str = "",
    summary: dict[str, Any] | None = None,
    raw: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": scenario.name,
        "group": scenario.group,
        "path": scenario.path,
        "upstream": scenario.upstream.key,
        "upstream_label": scenario.upstream.label,
        "variant": scenario.variant,
        "concurrency": scenario.concurrency,
        "payload": scenario.payload,
        "era": scenario.era,
        "rtt_ms": scenario.options.rtt_ms,
        "tracing": scenario.options.tracing,
        "status": status,
        "why": why,
        "summary": summary,
        "raw": raw,
    }


def _trips(record: dict[str, Any]) -> str:
    trips = record.get("redis_per_call")
    return f" redis/call[scripts={trips['scripts']} publish={trips['publish']}]" if trips else ""


def _line(record: dict[str, Any], took: float) -> str:
    s = record["summary"]
    cpu = " ".join(f"{k}={v}" for k, v in s["cpu_us_per_call"].items())
    return (
        f"ok {record['name']}: {s['throughput']}/s p50={s['p50_ms']}ms p99={s['p99_ms']}ms "
        f"err={s['errors']} cpu_us/call[{cpu}] other={s['other_cores']}{_trips(record)} ({took:.0f}s)"
    )


# --------------------------------------------------------------------------- idle scale


async def idle_scale(servers: int = 100) -> dict[str, Any]:
    """Start-up to ready with N stdio servers, and gateway RSS growth per idle server (vs 1 server)."""
    out: dict[str, Any] = {"servers": servers}
    upstream = fast_stdio("legacy")
    for count in (1, servers):
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            relay_file = Path(tmp) / "relay.yaml"
            relay_file.write_text(stacks.RELAY_YAML)
            async with spawn(
                f"scale{count}-relay", PYTHON, "-m", "gateway.cli", "relay", "--config", str(relay_file)
            ) as relay:
                relay_url = (await relay.wait_for(r"relay: ready (\S+)"))[1]
                names = [f"s{i}" for i in range(count)]
                routes = Path(tmp) / "routing.yaml"
                routes.write_text(
                    routing_yaml(
                        relay_url,
                        {n: server_block(upstream) for n in names},
                        {f"c{i}": [n] for i, n in enumerate(names)},
                    )
                )
                started = time.monotonic()
                async with spawn(f"scale{count}-gateway", PYTHON, "-m", "gateway.cli", "--routes", str(routes)) as gw:
                    await gw.wait_for(r"^gateway: ready", within_s=180)
                    ready_s = time.monotonic() - started
                    await asyncio.sleep(3.0)  # idle: let start-up garbage settle before reading RSS
                    rss = procstat.rss_mib(gw.pid)
                    kids = procstat.children(gw.pid)
                    up = sum(1 for line in gw.lines if "up (" in line)
                    out[f"ready_s_{count}"] = round(ready_s, 2)
                    out[f"gateway_rss_mib_{count}"] = round(rss or 0, 1)
                    out[f"children_{count}"] = len(kids)
                    out[f"servers_up_{count}"] = up
    out["rss_growth_mib_per_server"] = round(
        (out[f"gateway_rss_mib_{servers}"] - out["gateway_rss_mib_1"]) / (servers - 1), 3
    )
    return out


# --------------------------------------------------------------------------- profile


async def profile(
    timing: Timing, *, label: str = "default", options: TunnelOptions | None = None, concurrency: int = 64
) -> dict[str, Any]:
    """py-spy on the gateway and the relay during the headline scenario (fast stdio, tunnel, c=64).

    Writes bench/out/profile-{label}-{gateway,relay}.txt (collapsed stacks) and a flame graph
    profile-{label}-gateway.svg from a second, shorter recording on the same load.
    """
    from bench.scenarios import Scenario as S

    py_spy = str(Path(PYTHON).parent / "py-spy")
    if not stacks.installed(py_spy):
        return {"status": "not available", "why": "py-spy is not installed (bash bench/setup.sh)"}
    options = options or TunnelOptions()
    scenario = S("profile", "tunnel", fast_stdio("legacy"), concurrency, options=options)
    out: dict[str, Any] = {"status": "ok", "label": label, "concurrency": concurrency, "tracing": options.tracing}
    duration = max(int(timing.duration_s * timing.runs), 3)
    profile_timing = Timing(warmup_s=timing.warmup_s + 1.0, duration_s=duration + 3, runs=1)
    async with stacks.tunnel_stack(scenario.upstream, options, f"profile-{label}") as stack:
        load = asyncio.create_task(run_load(stack, scenario, profile_timing))
        await asyncio.sleep(profile_timing.warmup_s + 1.5)
        spies = {}
        for role in ("gateway", "relay"):
            raw = OUT / f"profile-{label}-{role}.txt"
            spies[role] = (raw, await _py_spy(py_spy, stack.roles[role][0], duration, raw, raw_format=True))
        for role, (raw, spy) in spies.items():
            _, err = await spy.communicate()
            if spy.returncode != 0 or not stacks.installed(str(raw)):
                out[role] = {"status": "failed", "why": err.decode()[-400:]}
                continue
            out[role] = analyse_collapsed(raw.read_text())
            out[role]["raw"] = str(raw.relative_to(ROOT))
        out["load"] = summarize(await load)
        load2 = asyncio.create_task(run_load(stack, scenario, Timing(1.0, 7.0, 1)))
        await asyncio.sleep(2.5)
        svg = OUT / f"profile-{label}-gateway.svg"
        await (await _py_spy(py_spy, stack.roles["gateway"][0], 4, svg, raw_format=False)).communicate()
        await load2
        out["svg"] = str(svg.relative_to(ROOT)) if stacks.installed(str(svg)) else None
    return out


async def _py_spy(py_spy: str, pid: int, seconds: int, output: Path, *, raw_format: bool) -> asyncio.subprocess.Process:
    fmt = ["--format", "raw"] if raw_format else []
    return await asyncio.create_subprocess_exec(
        py_spy, "record", "--pid", str(pid), "--rate", "200", "--duration", str(seconds), *fmt,
        "--output", str(output), "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


def analyse_collapsed(text: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            incl_counts[frame] = incl_counts.get(frame, 0) + count

    def table(counts: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, round(100 * c / total, 1)) for f, c in sorted(counts.items(), key=lambda kv: -kv[1])[:top]]

    gateway_incl = {f: c for f, c in incl_counts.items() if "gateway/" in f}
    return {
        "samples": total,
        "self": table(self_counts),
        "inclusive_gateway": table(gateway_incl),
        "categories": categories(text, total),
    }


CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("response POST to the control plane (ControlPlane.post, whole exchange)", ("ControlPlane.post ",)),
    ("poll GET and batch decode (ControlPlane.poll, Poller.run)", ("ControlPlane.poll ", "Poller.run ")),
    (
        "aiohttp client code, self time (request building, headers, connection pool)",
        ("self:aiohttp/client", "self:aiohttp/connector"),
    ),
    ("aiohttp server code, self time (protocol, router, request/response objects)", ("self:aiohttp/web_",)),
    (
        "aiohttp shared HTTP code, self time (http_writer, parser, helpers, multidict, yarl)",
        ("self:aiohttp/http_", "self:aiohttp/helpers", "self:aiohttp/streams", "self:multidict", "self:yarl/"),
    ),
    ("access log (aiohttp web_log)", ("aiohttp/web_log",)),
    ("logging (stdlib logging + gateway/observe/logs.py)", ("logging/__init__", "gateway/observe/logs.py")),
    (
        "telemetry, all (gateway/observe/hooks.py and otel*.py, relay/tracing.py, the OpenTelemetry SDK)",
        (
            "gateway/observe/hooks.py",
            "gateway/observe/otel",
            "opentelemetry/",
            "relay/tracing.py",
            "trace_encoder",
            "BatchProcessor",
        ),
    ),
    ("telemetry: OTLP export thread (BatchProcessor: encode + POST)", ("BatchProcessor",)),
    ("telemetry: span start/end (SDK trace)", ("trace/__init__.py",)),
    ("telemetry: metrics recording (SDK metrics)", ("metrics/_internal",)),
    ("stdio write + drain (StdioUpstream._write)", ("StdioUpstream._write ",)),
    ("stdio read + route (StdioUpstream._read/_route)", ("StdioUpstream._read ", "StdioUpstream._route ")),
    ("channel, whole call incl. the upstream exchange (Channel.run)", ("Channel.run ",)),
    ("era bridge (gateway/protocol/eras.py)", ("gateway/protocol/eras.py",)),
    (
        "header filtering/copying (strip_hop_by_hop, _forwarded_headers, allowed_response_headers, forwarded_headers)",
        ("strip_hop_by_hop", "_forwarded_headers", "allowed_response_headers", "forwarded_headers"),
    ),
    (
        "per-command task + timeout (Dispatcher.submit, asyncio timeouts/tasks)",
        ("Dispatcher.submit ", "asyncio/timeouts.py", "asyncio/tasks.py"),
    ),
    ("relay front door (FrontDoor.post)", ("FrontDoor.post ",)),
    ("relay poll handler (TunnelAPI.poll)", ("TunnelAPI.poll ",)),
    ("relay response handler (TunnelAPI.response)", ("TunnelAPI.response ",)),
    ("relay queue (gateway/relay/queue.py)", ("gateway/relay/queue.py",)),
)


def categories(text: str, total: int) -> list[tuple[str, float]]:
    """Inclusive share of samples whose stack touches each category (categories overlap)."""
    counts = dict.fromkeys((label for label, _ in CATEGORIES), 0)
    loop_self = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        leaf = stack.rsplit(";", 1)[-1]
        for label, needles in CATEGORIES:
            if any(n[5:] in leaf if n.startswith("self:") else n in stack for n in needles):
                counts[label] += count
        if stack.rsplit(";", 1)[-1].startswith("Runner.run "):
            loop_self += count
    out = [(label, round(100 * c / total, 1)) for label, c in counts.items() if c and total]
    out.append(
        (
            "event loop itself: uvloop C code, syscalls, callbacks (self time in Runner.run)",
            round(100 * loop_self / total, 1) if total else 0.0,
        )
    )
    return sorted(out, key=lambda kv: -kv[1])


def _frame(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (pkg/file.py)`, shortened to the package-relative path."""
    frame = frame.strip()
    if "(" not in frame:
        return frame
    func, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{func} ({path})"
