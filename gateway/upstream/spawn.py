"""Starting a stdio server's process so that an idle one costs the gateway little: its stderr lines go to a
callback (no reader task, no stream buffer per process), and an unchanged environment is inherited, not copied.
Speaks no MCP and decides nothing about restarts; the caller owns the process it gets.

A process started with a copied environment keeps that copy for its whole life (the event loop holds the
`KEY=value` strings until the process handle is freed); `env=None` lets the child inherit the gateway's.
A stderr line is bounded (`STDERR_LINE_MAX`): a longer one is cut there and the rest of it dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, cast

STDOUT_BUFFER: Final = 64 * 1024
"""The stdout reader's pause threshold (asyncio's default)."""
STDERR_LINE_MAX: Final = 64 * 1024
"""Bytes of one stderr line kept before the line is cut (the reader this replaced refused longer lines)."""


class _StderrLines(asyncio.subprocess.SubprocessStreamProtocol):
    """The usual stdin writer and stdout reader; stderr as whole lines to `on_line`, then `stderr_done`."""

    def __init__(self, on_line: Callable[[bytes], None], limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self._on_line = on_line
        self._partial = bytearray()
        self._cut = False
        """The current line already went out cut at STDERR_LINE_MAX; drop the rest of it."""
        self.stderr_done = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.stderr = None  # the stream reader is not used: lines arrive through pipe_data_received
        if cast(asyncio.SubprocessTransport, transport).get_pipe_transport(2) is None:
            self.stderr_done.set()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd != 2:
            super().pipe_data_received(fd, data)
            return
        assert isinstance(data, bytes)
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._take(data[start:end])
            self._emit()
            self._cut = False
            start = end + 1
        self._take(data[start:])

    def _take(self, piece: bytes) -> None:
        if self._cut:
            return
        self._partial += piece
        if len(self._partial) >= STDERR_LINE_MAX:
            del self._partial[STDERR_LINE_MAX:]
            self._emit()
            self._cut = True

    def _emit(self) -> None:
        if not self._cut:
            line, self._partial = bytes(self._partial), bytearray()
            self._on_line(line)
        self._partial.clear()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 2:
            if self._partial:
                self._emit()
            self.stderr_done.set()
        super().pipe_connection_lost(fd, exc)


async def spawn_stdio(
    program: str,
    args: tuple[str, ...] | list[str],
    *,
    on_stderr_line: Callable[[bytes], None],
    env: Mapping[str, str] | None,
    cwd: str | Path | None,
) -> tuple[asyncio.subprocess.Process, asyncio.Event]:
    """Start `program` in a session of its own with stdin, stdout and stderr on pipes; returns the process
    and an event set once its stderr has closed (every line delivered). `env=None`: the gateway's own."""
    loop = asyncio.get_running_loop()
    protocols: list[_StderrLines] = []

    def protocol() -> _StderrLines:
        protocols.append(_StderrLines(on_stderr_line, STDOUT_BUFFER, loop))
        return protocols[-1]

    transport, _ = await loop.subprocess_exec(
        protocol,
        program,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    return asyncio.subprocess.Process(transport, protocols[0], loop), protocols[0].stderr_done
