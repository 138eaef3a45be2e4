"""Shared fixtures and hooks: the recording relay (support/recording_relay.py), a redis-server per test
(support/redis_server.py), the fuzz report and its xdist hand-over (support/fuzz_budget.py)."""

import pytest

from tests.support.fuzz_budget import fuzz_report, session_finish, terminal_summary, worker_done

pytest_plugins = ["tests.support.recording_relay", "tests.support.redis_server"]

__all__ = ["fuzz_report"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    terminal_summary(terminalreporter, config)


def pytest_sessionfinish(session: pytest.Session) -> None:
    session_finish(session)


def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist: a worker ended; its fuzz counts join the controller's summary."""
    config = getattr(node, "config", None)
    workeroutput = getattr(node, "workeroutput", None)
    if isinstance(config, pytest.Config) and isinstance(workeroutput, dict):
        worker_done(config, workeroutput)
