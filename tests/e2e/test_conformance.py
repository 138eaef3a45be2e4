"""The official MCP conformance suite through the tunnel, measured against the same server directly.

Runs `@modelcontextprotocol/conformance` (server scenarios, active suite) twice: against the
reference server `@modelcontextprotocol/server-everything` over Streamable HTTP, then against the
relay's MCP URL with that server behind the gateway over stdio. Every scenario the server passes
directly must pass through the tunnel too. The Node 22 toolchain lives in `.tools/` (gitignored),
installed by `bash scripts/conformance-tools.sh` (scripts/test.sh runs it before pytest).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.conformance_tools import (
    BIN,
    CONFORMANCE,
    EVERYTHING,
    LOOPBACK,
    NODE,
    everything_stdio_routes,
    require_tools,
)
from tests.support.harness import ROOT, Process, gateway

pytestmark = pytest.mark.conformance

SUITE_TIMEOUT_S = 45.0
RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d\d-\d\dT[\d-]+Z$")
RUNNER_TOTAL = re.compile(r"\d+ passed, \d+ failed")
"""The runner's closing line, which CI's log reader would take for pytest's summary: never echo it."""


@dataclass(frozen=True)
class SuiteRun:
    """One run of the server suite: every scenario's checks, as written to `checks.json`."""

    checks: dict[str, list[dict[str, object]]]
    output: str
    """The runner's stdout and stderr, with its `N passed, N failed` lines masked."""

    @property
    def passed(self) -> set[str]:
        return {name for name, checks in self.checks.items() if not _failures(checks)}


def _failures(checks: list[dict[str, object]]) -> list[dict[str, object]]:
    return [check for check in checks if check.get("status") == "FAILURE"]


def _runner_env() -> dict[str, str]:
    return {**os.environ, "PATH": os.pathsep.join((str(BIN), os.environ.get("PATH", "")))}


@contextlib.asynccontextmanager
async def _everything_http() -> AsyncIterator[str]:
    """server-everything over Streamable HTTP on 127.0.0.1; yields its MCP URL.

    stderr is merged into the collected stdout so the chatty per-request log is drained, and the
    environment holds only `PORT` (the server's `get-env` tool returns its environment).
    """
    proc = await asyncio.create_subprocess_exec(
        *map(str, (NODE, "--require", LOOPBACK, EVERYTHING, "streamableHttp")),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"PORT": "0"},
        cwd=ROOT,
    )
    handle = Process(proc)
    handle._reader = asyncio.create_task(handle._read())
    try:
        match = await handle.wait_for(r"^LISTENING (http://127\.0\.0\.1:\d+)$", within_s=20)
        yield f"{match[1]}/mcp"
    finally:
        await handle.stop()


async def _run_suite(url: str, out: Path) -> SuiteRun:
    """Run the active server suite against `url`; the runner's output is captured, never shown."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, (NODE, CONFORMANCE, "server", "--url", url, "-o", out)),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=_runner_env(),
        cwd=out.parent,
    )
    try:
        async with asyncio.timeout(SUITE_TIMEOUT_S):
            raw, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        raw, _ = await proc.communicate()
        pytest.fail(f"conformance runner against {url} took over {SUITE_TIMEOUT_S} s:\n{_mask(raw)}", pytrace=False)
    run = SuiteRun(_read_checks(out), _mask(raw))
    if not run.checks:
        pytest.fail(
            f"conformance runner against {url} wrote no results (exit {proc.returncode}):\n{run.output}",
            pytrace=False,
        )
    return run


def _read_checks(out: Path) -> dict[str, list[dict[str, object]]]:
    """Each scenario's checks from `-o` output: one `server-<scenario>-<timestamp>/checks.json` per scenario."""
    checks: dict[str, list[dict[str, object]]] = {}
    for directory in sorted(out.iterdir()) if out.is_dir() else ():
        match = RESULT_DIR.match(directory.name)
        if match is not None and (directory / "checks.json").is_file():
            checks[match["scenario"]] = json.loads((directory / "checks.json").read_text())
    return checks


def _mask(raw: bytes) -> str:
    return RUNNER_TOTAL.sub("<runner totals>", raw.decode(errors="replace"))


def _explain(scenarios: set[str], run: SuiteRun) -> str:
    """The failing checks of `scenarios` in `run`, as JSON, for the assertion message."""
    report = {
        name: _failures(run.checks[name]) if name in run.checks else "no checks.json written"
        for name in sorted(scenarios)
    }
    return json.dumps(report, indent=2)


async def test_tunnel_passes_every_scenario_the_server_passes_directly(tmp_path: Path) -> None:
    require_tools()

    async with _everything_http() as url:
        direct = await _run_suite(url, tmp_path / "direct")
    async with gateway(everything_stdio_routes(), tmp_path) as gw:
        tunnel = await _run_suite(gw.urls["main"], tmp_path / "tunnel")

    print(f"direct ({len(direct.passed)}/{len(direct.checks)}): {sorted(direct.passed)}")
    print(f"tunnel ({len(tunnel.passed)}/{len(tunnel.checks)}): {sorted(tunnel.passed)}")
    print(f"only through the tunnel: {sorted(tunnel.passed - direct.passed)}")

    assert "server-initialize" in direct.passed, (
        f"the direct baseline is broken:\n{_explain({'server-initialize'}, direct)}"
    )
    lost = direct.passed - tunnel.passed
    assert not lost, f"scenarios that pass directly but fail through the tunnel:\n{_explain(lost, tunnel)}"
