"""The distribution works on its own: sdist and wheel built, the wheel installed into a fresh virtualenv
from the lock (no editable install, no project tree on sys.path), and the shipped routing.yaml served
by `gateway --routes routing.yaml` with its virtualenv NOT on PATH, as a systemd unit runs it.

An official MCP SDK client of each era (handshake-era and 2026-07-28) lists and calls tools on every
channel the gateway prints, all at once, with no retry.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from mcp import Client
from mcp_types import TextContent

from tests.support.harness import ROOT, free_port, process

UV = ROOT / ".tools" / "uv" / "bin" / "uv"
TOOL_CALLS = {"main": ("now", {"timezone": "UTC"}), "notes": ("add_note", {"title": "t", "body": "b", "tags": []})}
"""One tool of each demo server and arguments it accepts."""


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{args[:3]} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the built wheel and exactly the locked runtime dependencies."""
    if not UV.exists():
        pytest.fail(f"{UV} is missing: run `bash scripts/bootstrap.sh` (it installs the pinned uv)")
    work = tmp_path_factory.mktemp("dist")
    dist = work / "dist"
    # `uv build` builds the sdist, then the wheel from the sdist: the sdist must be complete.
    _run(UV, "build", "--quiet", "--out-dir", dist, ROOT, cwd=work)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    with tarfile.open(sdist) as archive:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in archive.getnames()}
    assert {"pyproject.toml", "README.md", "gateway/cli.py", "gateway/demo/clock.py"} <= names
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
    assert {"gateway/demo/clock.py", "gateway/demo/notes.py", "gateway/relay/app.py"} <= members
    console = {f"gateway/observe/console/{name}" for name in ("index.html", "app.js", "style.css")}
    assert console <= members, "the operator console's page ships in the wheel"
    assert not any(m.startswith("tests/") for m in members), "tests stay out of the wheel"

    venv = work / "venv"
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run(base_python, "-m", "venv", "--without-pip", venv, cwd=work)
    python = venv / "bin" / "python"
    lock = ROOT / "requirements" / "runtime.txt"
    _run(UV, "pip", "install", "--quiet", "--python", python, "--require-hashes", "-r", lock, cwd=work)
    _run(UV, "pip", "install", "--quiet", "--python", python, "--no-deps", wheel, cwd=work)
    return venv


def test_installed_package_comes_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    located = _run(installed / "bin" / "python", "-c", "import gateway; print(gateway.__file__)", cwd=tmp_path, env=env)
    assert Path(located.stdout.strip()).is_relative_to(installed), "the package is installed, not read from the tree"
    checked = _run(installed / "bin" / "gateway", "check", "--routes", ROOT / "routing.yaml", cwd=tmp_path, env=env)
    assert checked.stdout.strip().endswith("OK (2 servers, 2 channels)")


async def test_shipped_routing_yaml_serves_both_eras_on_every_channel(installed: Path, tmp_path: Path) -> None:
    # The shipped file, with free ports instead of 8780/8781 so the test never collides with a running gateway.
    relay_port, notes_port = free_port(), free_port()
    shipped = (ROOT / "routing.yaml").read_text()
    routes = shipped.replace("127.0.0.1:8780", f"127.0.0.1:{relay_port}").replace("8781", str(notes_port))
    assert routes.count(str(notes_port)) == 2, "the notes URL and the port its spawned server listens on"
    (tmp_path / "routing.yaml").write_text(routes)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": os.environ.get("LANG", "C.UTF-8")}
    gateway = installed / "bin" / "gateway"
    async with process(gateway, "--routes", "routing.yaml", cwd=tmp_path, env=env) as gw:
        await gw.wait_for(r"^gateway: ready$")
        urls = dict(re.findall(r"^MCP endpoint \(channel (\S+)\): (\S+)$", "\n".join(gw.lines), re.M))
        assert set(urls) == set(TOOL_CALLS)

        async def use(channel: str, mode: str) -> str:
            tool, arguments = TOOL_CALLS[channel]
            async with Client(urls[channel], mode=mode) as client:
                assert tool in {t.name for t in (await client.list_tools()).tools}
                result = await client.call_tool(tool, arguments)
                assert not result.is_error, result
                (content,) = result.content
                assert isinstance(content, TextContent)
                return client.protocol_version

        pairs = [(channel, mode) for channel in urls for mode in ("legacy", "2026-07-28")]
        versions = await asyncio.gather(*(use(channel, mode) for channel, mode in pairs))
        for (_channel, mode), version in zip(pairs, versions, strict=True):
            assert (version == "2026-07-28") == (mode == "2026-07-28"), version
    assert json.dumps(gw.lines).count("gateway: ready") == 1, "ready once, never lost"
