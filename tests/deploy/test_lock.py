"""The lock is the install: pyproject.toml, uv.lock and requirements/runtime.txt agree, and the
bootstrap (the first step of the test command) refuses, naming the command to run, when they do not."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import ROOT

UV = ROOT / ".tools" / "uv" / "bin" / "uv"
FIX = "bash scripts/lock.sh"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The files the bootstrap reads, in a scratch tree that shares the installed uv."""
    if not UV.exists():
        pytest.fail(f"{UV} is missing: run `bash scripts/bootstrap.sh`")
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts" / "bootstrap.sh")
    (tmp_path / ".tools").mkdir()
    (tmp_path / ".tools" / "uv").symlink_to(UV.parent.parent)
    return tmp_path


def _bootstrap(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    return subprocess.run(
        ["bash", "scripts/bootstrap.sh", "test"], cwd=tree, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_committed_lock_matches_pyproject(tree: Path) -> None:
    checked = subprocess.run([UV, "lock", "--check"], cwd=tree, capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr
    exported = subprocess.run(
        [UV, "export", "--quiet", "--frozen", "--no-header", "--no-emit-project", "--format", "requirements-txt"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert exported.stdout.strip() == (tree / "requirements" / "runtime.txt").read_text().strip()
    assert "--hash=sha256:" in exported.stdout, "every pin carries its hashes"


def test_a_dependency_missing_from_the_lock_stops_the_test_command(tree: Path) -> None:
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace('    "pytest>=8",\n', '    "pytest>=8",\n    "six>=1.16",\n', 1))
    result = _bootstrap(tree)
    assert result.returncode == 1
    assert "pyproject.toml and uv.lock disagree" in result.stderr
    assert FIX in result.stderr
    assert not (tree / ".venv").exists(), "nothing installed from a stale lock"


def test_a_stale_runtime_requirements_file_stops_the_test_command(tree: Path) -> None:
    runtime = tree / "requirements" / "runtime.txt"
    runtime.write_text(runtime.read_text().replace("aiohttp==", "aiohttp===", 1))
    result = _bootstrap(tree)
    assert result.returncode == 1
    assert "requirements/runtime.txt is not the runtime half of uv.lock" in result.stderr
    assert FIX in result.stderr
