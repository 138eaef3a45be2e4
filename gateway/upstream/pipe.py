"""Writing newline-delimited messages to a server's stdin, gathered per event-loop tick.
Owns only when bytes reach the pipe, not what they say.

Every line written during one loop tick goes out in one `writelines` at the end
of it, so a batch of polled commands costs one system call and one wake-up of the
server instead of one each. Callers wait only when the pipe is backed up.
"""

from __future__ import annotations

import asyncio
import contextlib


class LineWriter:
    """Newline-terminated lines to one process's stdin, coalesced per loop tick."""

    def __init__(self, stdin: asyncio.StreamWriter) -> None:
        self._stdin = stdin
        self._lines: list[bytes] = []
        self._scheduled = False

    @property
    def closed(self) -> bool:
        return self._stdin.is_closing()

    def write(self, line: bytes) -> None:
        """Queue `line` for this tick's write. A write that fails because the process went away is
        dropped here: the process's exit fails every call still waiting for it."""
        self._lines += (line, b"\n")
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def drain(self) -> None:
        """Wait while the pipe holds more than its high-water mark (the server is not reading)."""
        transport = self._stdin.transport
        if transport.get_write_buffer_size() > 0 and not transport.is_closing():
            await self._stdin.drain()

    def _flush(self) -> None:
        self._scheduled = False
        lines, self._lines = self._lines, []
        if not self._stdin.is_closing():
            with contextlib.suppress(OSError):
                self._stdin.writelines(lines)
