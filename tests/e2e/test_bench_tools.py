"""The tools in bench/ keep working: the soak's short mode, the idle-scale check with 20 servers, and the
`--targets` selection (each scenario the issue-20 targets table reads exists, once).

Each runs as the README says (`python -m bench.soak --short`, `python -m bench.scale --servers 20`) against
real relay, gateway and server processes on loopback; the test reads the JSON each writes. Numbers are
reported, never asserted: only that the runs happened, the sessions were real and every server came up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_the_soak_short_mode_cycles_real_sessions_and_prints_a_slope(tmp_path: Path) -> None:
    summary_file, samples = tmp_path / "soak.json", tmp_path / "soak.csv"
    done = run(
        "bench.soak",
        "--short",
        "--minutes",  # 24 s, 9 of them warm-up: enough to cycle the pool and fit a slope
        "0.4",
        "--warmup-minutes",
        "0.15",
        "--concurrency",
        "8",
        "--sessions",
        "40",
        "--calls-per-session",
        "5",
        "--json",
        str(summary_file),
        "--csv",
        str(samples),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(summary_file.read_text())
    assert summary["calls"] > 0
    assert summary["errors"] == 0, summary["error_kinds"]
    assert summary["sessions_opened"] > 40  # the pool of 40 was cycled: sessions ended and new ones opened
    assert {"gateway", "relay", "upstream"} <= summary["roles"].keys()
    assert "slope_kib_per_min" in summary["roles"]["gateway"]
    assert "KiB/min" in done.stdout
    header = samples.read_text().splitlines()[0]
    assert header == "t_s,calls,sessions_opened,errors,gateway_kib,relay_kib,upstream_kib"


def test_the_scale_tool_starts_20_idle_servers_and_reports_the_per_server_cost(tmp_path: Path) -> None:
    result_file = tmp_path / "scale.json"
    done = run(
        "bench.scale", "--servers", "20", "--settle", "1", "--idle", "1", "--json", str(result_file), timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(result_file.read_text())
    small, big = result["runs"]
    assert (small["servers_up"], big["servers_up"]) == (1, 20)
    assert big["after_idle"]["children"] == 20
    assert big["after_idle"]["gateway_tasks"] > small["after_idle"]["gateway_tasks"]  # bench.probe answered
    assert set(result["per_server"]) == {
        "gateway_rss_kib",
        "gateway_fds",
        "gateway_tasks",
        "gateway_threads",
        "children_pss_kib",
    }


def test_the_targets_selection_names_each_scenario_the_targets_table_reads() -> None:
    from bench.scenarios import matrix
    from bench.targets import SCENARIOS

    names = [s.name for s in matrix(False)]
    for part in SCENARIOS:
        assert sum(part in name for name in names) == 1, f"{part!r} must select exactly one scenario"
    listed = run("bench", "--targets", "--list", timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert len(listed.stdout.splitlines()) == len(SCENARIOS)
