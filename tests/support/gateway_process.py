"""The real gateway process for control-plane tests: `run_gateway` starts `python -m gateway.cli --routes` on a
routing document (written with `routes` and `stdio`) and collects its stdout and stderr lines as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tests.support.harness import PYTHON, ROOT, SERVERS
from tests.support.scripted_cp import KEY, ScriptedControlPlane

PROXY_VARIABLES: Final = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def stdio(script: str = "sdk_server.py", *args: str, **server: Any) -> dict[str, Any]:
    """A `servers.NAME` entry for one of the test servers over stdio."""
    return {"stdio": {"command": PYTHON, "args": [str(SERVERS / script), *args]}, **server}


def routes(
    servers: dict[str, dict[str, Any]],
    channels: dict[str, str] | None = None,
    *,
    control_plane: dict[str, Any] | None = None,
    **gateway: Any,
) -> str:
    """A routing.yaml document (JSON is YAML): channels map to one server each (default: same names)."""
    document: dict[str, Any] = {
        "servers": servers,
        "channels": {name: [server] for name, server in (channels or {s: s for s in servers}).items()},
    }
    if gateway:
        document["gateway"] = gateway
    if control_plane is not None:
        document["control_plane"] = control_plane
    return json.dumps(document, indent=1)


@dataclass
class GatewayProcess:
    """The real gateway, its stdout and stderr lines collected as they arrive."""

    proc: asyncio.subprocess.Process
    routes_file: Path
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)
    _new_line: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        while line := await stream.readline():
            lines.append(line.decode(errors="replace").rstrip("\n"))
            self._new_line.set()
        self._new_line.set()

    async def wait_for(self, pattern: str, *, stream: str = "stdout", within_s: float = 60.0) -> re.Match[str]:
        """The first line of `stream` matching `pattern` (seen already or still to come)."""
        lines = self.stdout if stream == "stdout" else self.stderr
        regex = re.compile(pattern)
        async with asyncio.timeout(within_s):
            while True:
                for line in lines:
                    if match := regex.search(line):
                        return match
                if all(reader.done() for reader in self._readers):
                    raise AssertionError(f"gateway exited ({self.proc.returncode}) before printing {pattern!r}")
                self._new_line.clear()
                await self._new_line.wait()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, within_s: float = 30.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), within_s)
        await asyncio.gather(*self._readers)
        return code

    async def stop(self, within_s: float = 20.0) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), within_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(*self._readers)
        return self.proc.returncode if self.proc.returncode is not None else -1


def gateway_env(**extra: str) -> dict[str, str]:
    """The test process's environment without proxy settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARIABLES}
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def run_gateway(
    document: str,
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready: bool | str = True,
) -> AsyncIterator[GatewayProcess]:
    """`gateway --routes` on a routing document; by default waits for `gateway: ready`, or for a
    stdout line matching `ready` when it is a pattern (a `waiting: …` line when something is down on
    purpose), or for nothing when False. `env` replaces the environment (default:
    `gateway_env(TUNNEL_API_KEY=KEY)`)."""
    file = tmp_path / "routing.yaml"
    file.write_text(document)
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "gateway.cli",
        "--routes",
        str(file),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env if env is not None else gateway_env(TUNNEL_API_KEY=KEY),
        cwd=ROOT,
    )
    gw = GatewayProcess(proc, file)
    assert proc.stdout is not None
    assert proc.stderr is not None
    gw._readers = [
        asyncio.create_task(gw._read(proc.stdout, gw.stdout)),
        asyncio.create_task(gw._read(proc.stderr, gw.stderr)),
    ]
    try:
        if ready:
            await gw.wait_for(r"^gateway: ready$" if ready is True else ready)
        yield gw
    finally:
        await gw.stop()
        print("---- gateway stderr (last 60 lines) ----")
        print("\n".join(gw.stderr[-60:]))


def cli_args(cp: ScriptedControlPlane) -> tuple[str, ...]:
    return ("--control-plane", cp.url, "--tunnel-id", cp.tunnel_id)
