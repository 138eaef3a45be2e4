"""Turning a run into words: the machine, Markdown tables per group, ratios, limits, targets.

Owns the text of bench/out/report.md and of the generated part of
bench/RESULTS.md (between the `generated` markers). Pure: JSON in, text out
(apart from reading the machine's facts in `machine()`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench import targets as issue_targets
from bench.scenarios import PATH_LABELS
from bench.stacks import BENCH, NODE, ROOT

DASH = "\u2013"  # an en dash for empty cells
START = "<!-- generated:start (python -m bench --results rewrites this part) -->"
END = "<!-- generated:end -->"


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("aiohttp", "msgspec", "uvloop", "orjson", "opentelemetry-sdk", "mcp"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    peers = {}
    proxy_py = BENCH / ".venv-mcp-proxy" / "bin" / "python"
    if proxy_py.exists():
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            peers["mcp-proxy"] = _run(
                [
                    str(proxy_py),
                    "-c",
                    "import importlib.metadata as m;print(m.version('mcp-proxy'), 'with mcp', m.version('mcp'))",
                ]
            )
    for name, path in (
        ("supergateway", BENCH / ".node" / "node_modules" / "supergateway" / "package.json"),
        (
            "server-everything",
            ROOT / ".tools" / "node_modules" / "@modelcontextprotocol" / "server-everything" / "package.json",
        ),
    ):
        with contextlib.suppress(OSError, ValueError):
            peers[name] = json.loads(path.read_text())["version"]
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        peers["node"] = _run([NODE, "--version"])
    commit = ""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
        if _run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "gateway"]):
            commit += " + uncommitted changes in gateway/"
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libraries": versions,
        "peers": peers,
        "commit": commit,
        "loadavg_at_start": os.getloadavg(),
    }


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False).stdout.strip()


def machine_text(info: dict[str, Any]) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    peers = ", ".join(f"{k} {v}" for k, v in info["peers"].items())
    load = ", ".join(f"{v:.2f}" for v in info["loadavg_at_start"])
    return (
        f"- machine: {info['cores']} cores, {info['cpu_model']}, {info['memory_gib']} GiB, Linux {info['kernel']}\n"
        f"- Python {info['python']}; {libs}\n"
        f"- peers and servers: {peers}\n"
        f"- gateway commit: {info['commit']}\n"
        f"- load average at start: {load}"
    )


# --------------------------------------------------------------------------- tables

ROLE_ORDER = ("client", "relay", "delay-proxy", "gateway", "upstream", "otlp-sink")


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _size(n: int) -> str:
    return f"{n // 1048576} MB" if n >= 1048576 else f"{n // 1024} KB" if n >= 1024 else f"{n} B"


def _noise(other: float | None) -> str:
    """Flag windows where processes outside the benchmark used a noticeable share of the 2 cores."""
    return f"; other processes: {other:.1f} cores" if other is not None and other >= 0.2 else ""


def _path_label(record: dict[str, Any]) -> str:
    label = PATH_LABELS.get(record["path"], record["path"])
    return f"{label} [{record['variant']}]" if record.get("variant") else label


def group_table(records: list[dict[str, Any]]) -> str:
    head = (
        "| path | upstream | c | payload | era | calls/s | p50 ms | p90 ms | p99 ms | errors "
        "| CPU µs/call: client / relay / gateway / upstream (other) | peak RSS MiB gateway / upstream | limited by |\n"
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|---|"
    )
    rows = [head]
    for r in records:
        s = r.get("summary")
        if r["status"] not in ("ok",) or s is None:
            rows.append(
                f"| {_path_label(r)} | {r['upstream_label']} | {r['concurrency']} | {_size(r['payload'])} | {r['era']} "
                f"| **{r['status']}** | | | | | {r.get('why', '')[:200]} | | |"
            )
            continue
        cpu = s["cpu_us_per_call"]
        main = " / ".join(_fmt(cpu.get(role), 0) for role in ("client", "relay", "gateway", "upstream"))
        extra = [
            f"{role} {_fmt(cpu.get(role), 0)}"
            for role in ("relay-2", "redis", "delay-proxy", "otlp-sink")
            if role in cpu
        ]
        if extra:
            main += f" ({', '.join(extra)})"
        rss = s["peak_rss_mib"]
        counts = s.get("process_counts", {})
        up_rss = _fmt(rss.get("upstream"), 0)
        if counts.get("upstream", 1) > 1:
            up_rss += f" ({counts['upstream']} procs)"
        errors = _fmt(s["errors"])
        if s["errors"]:
            kinds = ", ".join(f"{k}: {v}" for k, v in list(s["error_kinds"].items())[:2])
            errors += f" ({kinds}; {_fmt(s.get('errors_per_s'), 0)}/s)"
        rows.append(
            f"| {_path_label(r)} | {r['upstream_label']} | {r['concurrency']} | {_size(r['payload'])} | {r['era']} "
            f"| {_fmt(s['throughput'], 0)} | {_fmt(s['p50_ms'], 2)} | {_fmt(s['p90_ms'], 2)} | {_fmt(s['p99_ms'], 2)} "
            f"| {errors} | {main} | {_fmt(rss.get('gateway'), 0)} / {up_rss} | {r.get('limited_by', '')}"
            f"{_noise(s.get('other_cores'))} |"
        )
    return "\n".join(rows)


GROUP_TITLES = {
    "fast-stdio": "Fast stdio server (bench/fast_server.py): the gateway is the bottleneck",
    "logging": "The tunnel at the default log level (INFO) of relay and gateway; the other tables run both at WARNING",
    "everything-stdio": "Reference server: @modelcontextprotocol/server-everything over stdio, `echo`",
    "fast-http": "HTTP upstream (the fast server's HTTP variant)",
    "payload": "Payload sizes (fast stdio server, c=16; 100 B is in the first table)",
    "eras": "MCP generations through the tunnel (client era x server era, c=64)",
    "tracing": "Tracing on (OTLP/HTTP to a loopback sink); tracing off is the first table",
    "rtt": "Simulated control-plane round trip (delay proxy between gateway and relay); 0 ms is the first table",
    "pool": "stdio pool (`processes: 4`)",
    "aggregate": "Aggregated channel of 10 stdio servers",
    "ratelimit": "Rate-limited route",
    "redis": "Relay on Redis: redis-server + 2 relay replicas (gateway polls replica 1, sessions alternate); "
    "CPU of replica 2 and redis-server in brackets",
}


# --------------------------------------------------------------------------- comparisons


def _find(records: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for r in records:
        if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _tp(record: dict[str, Any] | None) -> float | None:
    return None if record is None else record["summary"]["throughput"]


def ratios(records: list[dict[str, Any]]) -> str:
    """Our paths (the tunnel through a relay process; the embedded relay, the default) against the others."""
    rows = [
        "| ours | upstream | c | ours calls/s | direct | ours/direct | mcp-proxy | ours/mcp-proxy "
        "| supergateway | ours/supergateway |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for ours in ("tunnel", "embedded"):
        for group in ("fast-stdio", "everything-stdio", "fast-http"):
            for c in (1, 16, 64, 256):
                base = {"group": group, "concurrency": c, "payload": 100, "era": "legacy"}
                tunnel = _tp(_find(records, path=ours, **base))
                if tunnel is None:
                    continue
                cells = [ours, group, str(c), _fmt(tunnel, 0)]
                for path in ("direct", "mcp-proxy", "supergateway"):
                    other = _tp(_find(records, path=path, **base))
                    cells += [_fmt(other, 0), f"{tunnel / other:.2f}x" if other else DASH]
                rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def bridge_cpu(records: list[dict[str, Any]]) -> str:
    """CPU per call of the bridging processes: relay + gateway for the tunnel, the peer's own process
    for mcp-proxy and supergateway. Steadier than calls/s when the machine is shared."""
    rows = [
        "| upstream | c | tunnel: relay + gateway µs/call | mcp-proxy µs/call | supergateway µs/call "
        "| mcp-proxy / tunnel | supergateway / tunnel |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group in ("fast-stdio", "everything-stdio"):
        for c in (1, 16, 64, 256):
            base = {"group": group, "concurrency": c, "payload": 100, "era": "legacy"}
            tunnel = _find(records, path="tunnel", **base)
            if tunnel is None:
                continue
            cpu = tunnel["summary"]["cpu_us_per_call"]
            ours = (cpu.get("relay") or 0) + (cpu.get("gateway") or 0)
            cells = [group, str(c), _fmt(ours, 0)]
            peers = []
            for path in ("mcp-proxy", "supergateway"):
                peer = _find(records, path=path, **base)
                value = peer["summary"]["cpu_us_per_call"].get("gateway") if peer else None
                cells.append(_fmt(value, 0))
                peers.append(f"{value / ours:.1f}x" if value and ours else DASH)
            rows.append("| " + " | ".join(cells + peers) + " |")
    return "\n".join(rows)


def redis_comparison(records: list[dict[str, Any]]) -> str:
    """The Redis-backed relay (2 replicas) against the in-memory relay: same fast stdio server, same c.

    The in-memory figures are group 1's tunnel rows (fast-stdio); relay CPU on Redis is both replicas summed."""
    rows = [
        "| c | in-memory relay calls/s | Redis, 2 replicas calls/s | Redis / in-memory | p50 ms in-memory / Redis "
        "| relay CPU µs/call in-memory / Redis (replica 1 + 2) | redis-server µs/call "
        "| gateway µs/call in-memory / Redis | client µs/call in-memory / Redis "
        "| Redis round trips per call (scripts / PUBLISH) | Redis run limited by |",
        "|---:|---:|---:|---:|---|---|---:|---|---|---|---|",
    ]
    for c in sorted({r["concurrency"] for r in records if r["group"] == "redis"}):
        base = {"concurrency": c, "payload": 100, "era": "legacy", "path": "tunnel"}
        mem, red = _find(records, group="fast-stdio", **base), _find(records, group="redis", **base)
        if red is None:
            failed = next((r for r in records if r["group"] == "redis" and r["concurrency"] == c), None)
            why = f"**{failed['status']}**: {failed.get('why', '')[:160]}" if failed else DASH
            rows.append(f"| {c} | {_fmt(_tp(mem), 0)} | {why} | | | | | | | | |")
            continue
        ms, rs = (mem or {}).get("summary") or {}, red["summary"]
        mcpu, rcpu = ms.get("cpu_us_per_call", {}), rs["cpu_us_per_call"]
        relays = [v for k, v in rcpu.items() if (k == "relay" or k.startswith("relay-")) and v is not None]
        parts = " + ".join(_fmt(rcpu.get(k), 0) for k in sorted(rcpu) if k == "relay" or k.startswith("relay-"))
        ratio = f"{rs['throughput'] / ms['throughput']:.2f}x" if ms.get("throughput") else DASH
        trips = red.get("redis_per_call") or {}
        round_trips = f"{trips['scripts']:.2f} / {trips['publish']:.2f}" if trips else DASH
        rows.append(
            f"| {c} | {_fmt(ms.get('throughput'), 0)} | {_fmt(rs['throughput'], 0)} | {ratio} "
            f"| {_fmt(ms.get('p50_ms'), 1)} / {_fmt(rs['p50_ms'], 1)} "
            f"| {_fmt(mcpu.get('relay'), 0)} / {_fmt(sum(relays), 0)} ({parts}) | {_fmt(rcpu.get('redis'), 0)} "
            f"| {_fmt(mcpu.get('gateway'), 0)} / {_fmt(rcpu.get('gateway'), 0)} "
            f"| {_fmt(mcpu.get('client'), 0)} / {_fmt(rcpu.get('client'), 0)} | {round_trips} "
            f"| {red.get('limited_by', '')} |"
        )
    return "\n".join(rows)


def added_latency(records: list[dict[str, Any]]) -> list[tuple[str, float | None, float | None, float | None]]:
    out = []
    for group in ("fast-stdio", "everything-stdio", "fast-http"):
        base = {"group": group, "concurrency": 1, "payload": 100, "era": "legacy"}
        tunnel, direct = _find(records, path="tunnel", **base), _find(records, path="direct", **base)
        if tunnel and direct:
            t, d = tunnel["summary"]["p50_ms"], direct["summary"]["p50_ms"]
            out.append((group, t, d, round(t - d, 3)))
    return out


def targets(records: list[dict[str, Any]], scale: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """(target, measured, met?, by how much)."""
    rows: list[tuple[str, str, str, str]] = []
    head = _find(records, group="fast-stdio", path="tunnel", concurrency=64, payload=100, era="legacy")
    if head:
        tp = head["summary"]["throughput"]
        rows.append(_row("fast server, full path, c=64: >= 2,000 calls/s", f"{tp:,.0f}/s", tp >= 2000, tp / 2000))
        cpu = head["summary"]["cpu_us_per_call"].get("gateway")
        if cpu is not None:
            rows.append(_row("gateway CPU per command <= 150 µs", f"{cpu:.0f} µs", cpu <= 150, 150 / cpu if cpu else 0))
    else:
        rows.append(("fast server, full path, c=64: >= 2,000 calls/s", "not measured", DASH, ""))
    lat = {g: (t, d, a) for g, t, d, a in added_latency(records)}
    if "fast-stdio" in lat:
        t, d, a = lat["fast-stdio"]
        assert a is not None
        rows.append(
            _row(
                "added latency at c=1 (p50, full path minus direct) <= 1 ms",
                f"{a:.2f} ms ({t:.2f} - {d:.2f})",
                a <= 1.0,
                1.0 / a if a > 0 else 99,
            )
        )
    for c in (64,):
        base = {"group": "everything-stdio", "concurrency": c, "payload": 100, "era": "legacy"}
        tunnel = _tp(_find(records, path="tunnel", **base))
        proxy = _tp(_find(records, path="mcp-proxy", **base))
        sg = _tp(_find(records, path="supergateway", **base))
        if tunnel and proxy:
            rows.append(
                _row(
                    f"server-everything c={c}: tunnel >= 2x mcp-proxy",
                    f"{tunnel / proxy:.2f}x ({tunnel:,.0f} vs {proxy:,.0f})",
                    tunnel >= 2 * proxy,
                    tunnel / (2 * proxy),
                )
            )
        if tunnel and sg:
            rows.append(
                _row(
                    f"server-everything c={c}: tunnel > supergateway --stateful",
                    f"{tunnel / sg:.2f}x ({tunnel:,.0f} vs {sg:,.0f})",
                    tunnel > sg,
                    tunnel / sg,
                )
            )
    zero = _tp(_find(records, group="fast-stdio", path="tunnel", concurrency=256, payload=100, era="legacy"))
    for variant, settings in (("rtt100ms", "defaults"), ("rtt100ms-8polls", "polls_in_flight 8, max_inflight 512")):
        slow = _tp(_find(records, group="rtt", path="tunnel", concurrency=256, variant=variant))
        if zero and slow:
            rows.append(
                _row(
                    f"RTT 100 ms, c=256 ({settings}): >= half the 0 ms throughput",
                    f"{slow / zero:.2f} ({slow:,.0f} vs {zero:,.0f})",
                    slow >= zero / 2,
                    slow / (zero / 2),
                )
            )
    if scale:
        ready = scale.get(f"ready_s_{scale['servers']}")
        growth = scale.get("rss_growth_mib_per_server")
        if ready is not None:
            rows.append(
                _row(
                    f"{scale['servers']} stdio servers: start-up to ready < 15 s",
                    f"{ready:.1f} s",
                    ready < 15,
                    15 / ready if ready else 99,
                )
            )
        if growth is not None:
            rows.append(
                _row(
                    "gateway RSS growth per idle server < 1 MB",
                    f"{growth:.2f} MiB",
                    growth < 1,
                    1 / growth if growth > 0 else 99,
                )
            )
    return rows


def _row(target: str, measured: str, met: bool, factor: float) -> tuple[str, str, str, str]:
    how = f"{factor:.2f}x of target" if met else f"short: reaches {factor:.0%} of the target"
    return (target, measured, "**met**" if met else "**not met**", how)


def _rounds(run: dict[str, Any]) -> str:
    rounds = run.get("rounds", 1)
    return f"{rounds} rounds (each scenario once per round), each with " if rounds > 1 else ""


def render(run: dict[str, Any]) -> str:
    records = run["results"]
    parts = [
        f"Run {run['started']} ({run['mode']}: warm-up {run['timing']['warmup_s']} s, "
        f"{_rounds(run)}{run['timing']['runs']} run(s) of {run['timing']['duration_s']} s per scenario; medians shown; "
        f"command `{run['command']}`)",
        "",
        machine_text(run["machine"]),
        "",
        "CPU µs/call is each process's CPU time (utime+stime) in the measured windows divided by completed calls "
        "(= CPU ms per 1,000 calls). 'other' in the log lines is CPU used by processes outside the benchmark "
        "(other users of the machine): the noise indicator.",
        "",
        "### Targets (issue 20)",
        "",
        *issue_targets.table(records),
        "",
        "### Targets (issue 7)",
        "",
        "| target | measured | | |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(records, run.get("scale"))),
        "",
        "### Ratios to the baselines and peers (same server, same load, 100 B)",
        "",
        ratios(records),
        "",
        "### CPU per call of the bridge (the steadier comparison on a shared machine)",
        "",
        bridge_cpu(records),
        "",
        "### Added latency at c=1 (p50, tunnel minus direct)",
        "",
        "| upstream | tunnel p50 ms | direct p50 ms | added ms |",
        "|---|---:|---:|---:|",
        *(f"| {g} | {t} | {d} | {a} |" for g, t, d, a in added_latency(records)),
        "",
    ]
    if any(r["group"] == "redis" for r in records):
        parts += [
            "### Relay on Redis (issue 9): 2 replicas vs the in-memory relay (fast stdio server, 100 B)",
            "",
            redis_comparison(records),
            "",
        ]
    for group, title in GROUP_TITLES.items():
        members = [r for r in records if r["group"] == group]
        if not members:
            continue
        parts += [f"### {title}", "", group_table(members), ""]
    if run.get("scale"):
        s = run["scale"]
        n = s["servers"]
        parts += [
            f"### {n} idle stdio servers behind one gateway (fast server)",
            "",
            "| servers | start-up to `gateway: ready` s | gateway RSS MiB (idle, 3 s after ready) | servers up |",
            "|---:|---:|---:|---:|",
            f"| 1 | {s.get('ready_s_1')} | {s.get('gateway_rss_mib_1')} | {s.get('servers_up_1')} |",
            f"| {n} | {s.get(f'ready_s_{n}')} | {s.get(f'gateway_rss_mib_{n}')} | {s.get(f'servers_up_{n}')} |",
            "",
            f"RSS growth per idle server: {s.get('rss_growth_mib_per_server')} MiB.",
            "",
        ]
    if run.get("micro"):
        parts += [
            "### Micro-measurements of hot-path mechanisms, before and now (`python -m bench.micro`; one process)",
            "",
            "| mechanism | CPU µs per command |",
            "|---|---:|",
            *(f"| {name} | {value:,.1f} |" for name, value in run["micro"].items()),
            "",
        ]
    for key in ("profile", "profile_tracing"):
        if run.get(key):
            parts += [profile_text(run[key]), ""]
    return "\n".join(parts)


def profile_text(prof: dict[str, Any]) -> str:
    if prof.get("status") != "ok":
        return f"### Profile\n\nnot available: {prof.get('why', '')}"
    load = prof.get("load", {})
    lines = [
        f"### Profile{' with tracing on' if prof.get('tracing') else ''} "
        f"(py-spy, fast stdio server through the tunnel, c={prof['concurrency']}; "
        f"{_fmt(load.get('throughput'), 0)} calls/s while sampled)",
        "",
    ]
    for role in ("gateway", "relay"):
        data = prof.get(role, {})
        if "self" not in data:
            lines += [f"{role}: {data.get('why', 'no samples')}", ""]
            continue
        lines += [
            f"**{role}** ({data['samples']} samples, raw stacks in `{data.get('raw')}`) — where the time goes "
            "(inclusive share of samples; categories overlap):",
            "",
            "| category | % of samples |",
            "|---|---:|",
            *(f"| {c} | {p} |" for c, p in data.get("categories", [])),
            "",
            f"**{role}** — top self time:",
            "",
            "| function | self % |",
            "|---|---:|",
            *(f"| `{f}` | {p} |" for f, p in data["self"][:15]),
            "",
            f"**{role}** — project functions by inclusive time:",
            "",
            "| function | inclusive % |",
            "|---|---:|",
            *(f"| `{f}` | {p} |" for f, p in data["inclusive_gateway"][:15]),
            "",
        ]
    if prof.get("svg"):
        lines.append(f"Flame graph of the gateway: `{prof['svg']}` (open it in a browser).")
    return "\n".join(lines)


def write_results(text: str, path: Path) -> None:
    """Replace the generated part of RESULTS.md (everything between the markers)."""
    old = path.read_text() if path.exists() else f"# Benchmark results\n\n{START}\n{END}\n"
    if START not in old or END not in old:
        old = old.rstrip() + f"\n\n{START}\n{END}\n"
    before, rest = old.split(START, 1)
    _, after = rest.split(END, 1)
    path.write_text(f"{before}{START}\n\n{text}\n\n{END}{after}")
