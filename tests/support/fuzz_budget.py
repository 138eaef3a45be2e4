"""The fuzz suites' budgets and their report, in one place.

`GATEWAY_FUZZ_SCALE` multiplies every budget (default 1: the CI run, about two minutes for all
fuzz tests on two cores; `scripts/soak.sh` sets it higher). `FUZZ` is the one hypothesis
settings object the property tests use. `FuzzReport` (the `fuzz_report` fixture) collects what
each fuzz test generated and checked; the terminal summary prints it whether or not `-s` is given.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Final

import pytest
from hypothesis import HealthCheck, settings

SCALE: Final = max(0.01, float(os.environ.get("GATEWAY_FUZZ_SCALE", "1")))
SEED: Final = int(os.environ.get("GATEWAY_FUZZ_SEED", "14"))
"""Seed of the live fuzzers' generators (the property tests use hypothesis's own)."""


def budget(ci: int) -> int:
    """A budget: its CI size times `GATEWAY_FUZZ_SCALE`."""
    return max(1, round(ci * SCALE))


def timeout_s(ci_s: float) -> float:
    """A pytest-timeout for a fuzz test whose CI run takes well under `ci_s`, grown with the budget."""
    return ci_s * max(1.0, SCALE)


FUZZ: Final = settings(
    max_examples=budget(300),
    deadline=None,  # a loaded two-core machine makes per-example timing meaningless
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    # (`fuzz_report` is function-scoped but hands every example the same session-wide report)
    database=None,  # no example database left behind in the worktree
    derandomize=False,
)

REPORT_KEY: Final = pytest.StashKey["FuzzReport"]()


class FuzzReport:
    """Counts per fuzz target, printed at the end of the run."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}

    def add(self, target: str, what: str, n: int = 1) -> None:
        self.counts.setdefault(target, Counter())[what] += n

    def lines(self) -> list[str]:
        return [
            f"{target}: " + ", ".join(f"{what} {n:,}" for what, n in sorted(counts.items()))
            for target, counts in sorted(self.counts.items())
        ]


@pytest.fixture
def fuzz_report(request: pytest.FixtureRequest) -> FuzzReport:
    """The session's fuzz report (created on first use)."""
    stash = request.config.stash
    if REPORT_KEY not in stash:
        stash[REPORT_KEY] = FuzzReport()
    return stash[REPORT_KEY]


def terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """conftest's `pytest_terminal_summary`: the counts, when a fuzz test ran."""
    report = config.stash.get(REPORT_KEY, None)
    if report is None or not report.counts:
        return
    terminalreporter.section(f"fuzz counts (GATEWAY_FUZZ_SCALE={SCALE:g})")
    for line in report.lines():
        terminalreporter.write_line(line)


def session_finish(session: pytest.Session) -> None:
    """conftest's `pytest_sessionfinish`: an xdist worker hands its counts to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    report = session.config.stash.get(REPORT_KEY, None)
    if workeroutput is not None and report is not None:
        workeroutput["fuzz_counts"] = {target: dict(counts) for target, counts in report.counts.items()}


def worker_done(config: pytest.Config, workeroutput: dict[str, object]) -> None:
    """conftest's `pytest_testnodedown`: the controller adds a worker's counts to the session's."""
    counts = workeroutput.get("fuzz_counts")
    if not isinstance(counts, dict):
        return
    if REPORT_KEY not in config.stash:
        config.stash[REPORT_KEY] = FuzzReport()
    report = config.stash[REPORT_KEY]
    for target, by_what in counts.items():
        for what, n in by_what.items():
            report.add(target, what, n)
