"""A local server process the gateway starts and keeps running (`http.spawn` in routing.yaml).

Owns the process's life: spawn without a shell, its output into the gateway's log, restart with
capped backoff when it exits, and TERM-then-KILL when the gateway stops. Speaks no MCP: the HTTP
transport reaches the process at its URL like any other server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Final

from gateway.config.routing import ProgramSpec

log = logging.getLogger(__name__)

BACKOFF_START_S: Final = 0.2
STABLE_AFTER_S: Final = 10.0
"""A process that ran this long is restarted at once the next time it exits (backoff reset)."""
STOP_GRACE_S: Final = 3.0


class SupervisedProcess:
    """One program, restarted whenever it exits until `close()`; `on_exit(reason)` hears each exit."""

    def __init__(
        self,
        name: str,
        spec: ProgramSpec,
        *,
        backoff_max_s: float,
        on_exit: Callable[[str], None],
    ) -> None:
        self.name = name
        self._spec = spec
        self._backoff_max_s = backoff_max_s
        self._on_exit = on_exit
        self._task: asyncio.Task[None] | None = None
        self.pid: int | None = None
        self.restarts = 0

    def start(self) -> None:
        """Begin supervising (idempotent); the task is this object's and ends in `close()`."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"spawned-server:{self.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_START_S
        while True:
            began = loop.time()
            reason = await self._run_once()
            self._on_exit(reason)
            if loop.time() - began > STABLE_AFTER_S:
                backoff = BACKOFF_START_S
            log.warning("server %r: its process %s; restarting in %.1fs", self.name, reason, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max_s)
            self.restarts += 1

    async def _run_once(self) -> str:
        """Run the program until it exits; the reason, in words, for the log and readiness."""
        spec = self._spec
        env = dict(os.environ) if spec.inherit_env else {}
        env.update(spec.env)
        try:
            proc = await asyncio.create_subprocess_exec(
                spec.executable(sys.executable),
                *spec.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=spec.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            return f"could not be started ({exc.strerror or exc})"
        self.pid = proc.pid
        log.info("server %r: started its process (pid %d)", self.name, proc.pid)
        try:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                log.info("[%s] %s", self.name, line.decode(errors="replace").rstrip())
            code = await proc.wait()
        finally:
            await _stop(proc)
            self.pid = None
        return f"exited with status {code}"


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after a grace period; reaps it either way."""
    if proc.returncode is not None:
        return
    for send in (proc.terminate, proc.kill):
        with contextlib.suppress(ProcessLookupError):
            send()
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_GRACE_S)
            return
        except TimeoutError:
            continue
    await proc.wait()
