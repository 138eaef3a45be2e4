"""Fixtures of the deploy tests: compose.yaml as `docker compose config` resolves it (compose and collector tests)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.deploy_files import DEPLOY, run_command, tool


@pytest.fixture(scope="module")
def compose_model() -> dict[str, Any]:
    """compose.yaml as `docker compose config` resolves it (anchors merged, paths absolute)."""
    result = run_command(tool("docker-compose"), "-f", DEPLOY / "compose.yaml", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))
