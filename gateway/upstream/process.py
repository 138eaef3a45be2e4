"""Local server processes the gateway starts and keeps running (`http.spawn`), and the supervision
pieces the stdio transport shares. Spawns without a shell; speaks no MCP.

Owns a process's life: spawn without a shell, its output into the gateway's log, restart with
capped backoff when it exits, and stdin-EOF, TERM, then KILL when the gateway stops. The HTTP
transport reaches the process at its URL like any other server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from typing import Final

from gateway.config.routing import ProgramSpec
from gateway.upstream.environment import ChildEnvironment

log = logging.getLogger(__name__)

BACKOFF_START_S: Final = 0.2
STABLE_AFTER_S: Final = 10.0
"""A process that ran this long is restarted at once the next time it exits (backoff reset)."""
STOP_GRACE_S: Final = 3.0


class RestartPacing:
    """The pause before each restart: doubles from `start_s` up to `max_s`, and starts over after a
    run that lasted `STABLE_AFTER_S` (a server that crashes once a day restarts at once)."""

    def __init__(self, start_s: float, max_s: float) -> None:
        self._start = start_s
        self._max = max_s
        self._next = start_s

    def after(self, ran_s: float) -> float:
        """The pause now, after a run of `ran_s` seconds."""
        if ran_s > STABLE_AFTER_S:
            self._next = self._start
        delay, self._next = self._next, min(self._next * 2, self._max)
        return delay


async def end_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a task the caller owns (None: nothing to do) and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def stop_process(proc: asyncio.subprocess.Process, grace_s: float = STOP_GRACE_S) -> None:
    """Close its stdin (if it has one), then SIGTERM, then SIGKILL, each after `grace_s`; reaps it."""
    if proc.returncode is not None:
        return
    steps: list[Callable[[], None] | None] = [proc.terminate, proc.kill]
    if proc.stdin is not None:
        proc.stdin.close()
        steps.insert(0, None)  # first a grace period for the EOF alone
    for step in steps:
        if step is not None:
            with contextlib.suppress(ProcessLookupError):
                step()
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace_s)
            return
        except TimeoutError:
            continue
    await proc.wait()


class SupervisedProcess:
    """One program, restarted whenever it exits until `close()`; `on_exit(reason)` hears each exit."""

    def __init__(
        self,
        name: str,
        spec: ProgramSpec,
        *,
        backoff_max_s: float,
        on_exit: Callable[[str], None],
        environment: ChildEnvironment | None = None,
    ) -> None:
        self.name = name
        self._spec = spec
        self._environment = environment or ChildEnvironment.of(spec)
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
        await end_task(task)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        pacing = RestartPacing(BACKOFF_START_S, self._backoff_max_s)
        while True:
            began = loop.time()
            reason = await self._run_once()
            self._on_exit(reason)
            delay = pacing.after(loop.time() - began)
            log.warning("server %r: its process %s; restarting in %.1fs", self.name, reason, delay)
            await asyncio.sleep(delay)
            self.restarts += 1

    async def _run_once(self) -> str:
        """Run the program until it exits; the reason, in words, for the log and readiness."""
        spec = self._spec
        env = self._environment.for_spawn()
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
            await stop_process(proc)
            self.pid = None
        return f"exited with status {code}"
