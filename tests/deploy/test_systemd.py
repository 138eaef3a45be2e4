"""deploy/systemd: the unit's hardening and lifecycle settings, `systemd-analyze verify` and `systemd-analyze
security` (skipped without systemd-analyze)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.config import routing as routing_config
from tests.support.deploy_files import DEPLOY, go_duration_s, run_command

SYSTEMD_UNIT = DEPLOY / "systemd" / "gateway.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package `systemd`)"
)


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in SYSTEMD_UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def test_systemd_unit_hardening_and_lifecycle() -> None:
    settings = _unit_settings()
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }.items():
        assert _one(settings, key) == value, key
    assert set(_one(settings, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in settings["SystemCallFilter"]
    assert go_duration_s(_one(settings, "RestartSec")) > 0
    routes = routing_config.load(DEPLOY / "systemd" / "routing.example.yaml")
    assert int(_one(settings, "TimeoutStopSec")) > routes.gateway.drain_timeout_s + 5
    # The credential LoadCredential= provides is the file routing.yaml reads the key from.
    name, _, source = _one(settings, "LoadCredential").partition(":")
    assert source.startswith("/etc/")
    assert routes.control_plane is not None
    assert routes.control_plane.api_key == f"file:/run/credentials/{SYSTEMD_UNIT.name}/{name}"
    assert _one(settings, "ExecStart").split()[1:] == ["--routes", "/etc/mcp-tunnel-gateway/routing.yaml"]


def _systemd_root(tmp_path: Path, unit_text: str) -> Path:
    """A file-system root holding the unit, stubs of the programs it runs and the system's units."""
    root = tmp_path / "root"
    for line in unit_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip().startswith("Exec") and value.strip():
            program = root / value.strip().lstrip("-@:+!").split()[0].lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    system_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    unit = root / "etc/systemd/system" / SYSTEMD_UNIT.name
    unit.parent.mkdir(parents=True)
    unit.write_text(unit_text)
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    unit = root / "etc/systemd/system" / SYSTEMD_UNIT.name
    return run_command(SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={root}", unit)


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify(_systemd_root(tmp_path, SYSTEMD_UNIT.read_text()))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
    # verify reports a misspelt setting only as a message: the check above must see it.
    broken = SYSTEMD_UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    result = _verify(_systemd_root(tmp_path / "broken", broken))
    assert "ProtectSystm" in result.stdout + result.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_ok() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = run_command(SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", "--no-pager", SYSTEMD_UNIT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match
    assert float(match[1]) <= 2.0
