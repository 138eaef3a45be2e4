"""A loopback TCP proxy in front of a test redis-server that can hold the server's replies, cut every
connection and refuse new ones: how the Redis tests make Redis slow, cut or unreachable on demand."""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    """A loopback TCP proxy in front of redis-server that can hold the server's replies, cut every
    connection, and refuse new ones."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.holding = False
        self.refusing = False
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.close()
            return
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers |= {client_writer, server_writer}
        loop = asyncio.get_running_loop()
        for task in (
            loop.create_task(self._pump(client_reader, server_writer, hold=False)),
            loop.create_task(self._pump(server_reader, client_writer, hold=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 20):
                if hold and self.holding:
                    self._held.append((writer, data))
                    continue
                writer.write(data)
        writer.close()

    def held(self) -> bool:
        """Some reply from Redis is held back (so what was sent before it reached Redis)."""
        return bool(self._held)

    def held_on(self) -> int:
        """How many connections have a reply held back."""
        return len({writer for writer, _ in self._held})

    def release(self) -> None:
        self.holding = False
        for writer, data in self._held:
            writer.write(data)
        self._held.clear()

    def cut(self) -> None:
        self._held.clear()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
