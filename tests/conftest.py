"""Shared fixtures: the recording relay (tests/recording_relay.py), the fuzz report (tests/fuzz_budget.py)."""

import pytest

from tests.fuzz_budget import fuzz_report, terminal_summary

pytest_plugins = ["tests.recording_relay"]

__all__ = ["fuzz_report"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    terminal_summary(terminalreporter, config)
