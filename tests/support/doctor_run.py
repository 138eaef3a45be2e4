"""`gateway doctor` run as an operator runs it (the installed console script, a subprocess), and
the lookups tests make in its `--json` report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from gateway.doctor.report import CheckResult, Report, decode_json
from tests.support.gateway_process import gateway_env
from tests.support.harness import PYTHON

GATEWAY = Path(PYTHON).parent / "gateway"
"""The installed console script, as an operator runs it."""
RUN_WITHIN_S = 120.0


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def report(self) -> Report:
        return decode_json(self.stdout.encode())


async def doctor(routes_file: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    proc = await asyncio.create_subprocess_exec(
        str(GATEWAY),
        "doctor",
        "--routes",
        str(routes_file),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else gateway_env(),
        cwd=routes_file.parent,
    )
    out, err = await asyncio.wait_for(proc.communicate(), RUN_WITHIN_S)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def report_of(document: str, tmp_path: Path, env: dict[str, str] | None = None) -> tuple[Run, Report]:
    file = tmp_path / "routing.yaml"
    file.write_text(document)
    run = await doctor(file, "--json", env=env)
    print(run.stdout, run.stderr)
    return run, run.report()


def one(report: Report, name: str, target: str) -> CheckResult:
    found = [c for c in report.checks if c.name == name and c.target == target]
    assert len(found) == 1, (name, target, report.checks)
    return found[0]


def failing(report: Report, name: str, target: str) -> CheckResult:
    result = one(report, name, target)
    assert result.status == "fail", result
    assert result.cause
    assert "\n" not in result.cause
    assert result.mitigation
    assert "\n" not in result.mitigation
    return result
