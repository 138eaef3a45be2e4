"""Where the deployment artifacts are (deploy/) and the small tools the deploy tests share: test ids relative to the
repository, the command-line tools the `test` extra ships, a subprocess run, YAML loading, Go durations."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.harness import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
OPS_PORT = 9090


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def tool(name: str) -> str:
    """A command-line tool shipped by a package of the `test` extra (installed into this venv)."""
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` not found: install the test extra (pip install -e '.[test]')")
    return found


def run_command(
    *argv: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def go_duration_s(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match, text
    return int(match[1] or 0) * 60 + int(match[2] or 0)
