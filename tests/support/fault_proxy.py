"""A TCP fault proxy on 127.0.0.1:0 in front of one loopback port, for fault-injection tests.

Forwards bytes both ways until told otherwise: `reset()` aborts every open connection
with a TCP RST (both sides), `drop()` closes every connection unanswered and keeps doing
so to new ones until `restore()`, `stall()` stops forwarding (connections stay open, bytes
wait) until `restore()`. It counts what it did. It knows nothing of HTTP or the tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal

CHUNK = 65536

Mode = Literal["pass", "drop", "stall"]


@dataclass(eq=False)
class _Pair:
    """One proxied connection: the accepted side and the side toward the target."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.target) if w is not None]


class FaultProxy:
    """Use as an async context manager; `port` is where to connect instead of `target_port`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.mode: Mode = "pass"
        self.connections = 0
        self.resets = 0
        self.dropped = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._pairs: set[_Pair] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._flowing.set()
        for pair in list(self._pairs):
            _abort(pair, rst=False)
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ faults

    def reset(self) -> int:
        """Abort every open connection with a RST; returns how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            _abort(pair, rst=True)
        self.resets += len(pairs)
        return len(pairs)

    def drop(self) -> None:
        """Close every connection unanswered, now and as they arrive, until `restore()`."""
        self.mode = "drop"
        self._flowing.set()
        for pair in list(self._pairs):
            _abort(pair, rst=False)
            self.dropped += 1

    def stall(self) -> None:
        """Stop forwarding bytes (both ways, every connection, new ones too) until `restore()`."""
        self.mode = "stall"
        self._flowing.clear()

    def restore(self) -> None:
        self.mode = "pass"
        self._flowing.set()

    # ------------------------------------------------------------------ forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        pair = _Pair(writer)
        self._pairs.add(pair)
        try:
            if self.mode == "drop":
                self.dropped += 1
                return
            target_reader, pair.target = await asyncio.open_connection("127.0.0.1", self.target_port)
            pair.pumps = [
                asyncio.create_task(self._pump(reader, pair.target)),
                asyncio.create_task(self._pump(target_reader, writer)),
            ]
            # Either direction ending (EOF, reset, abort) ends the connection.
            await asyncio.wait(pair.pumps, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        finally:
            for pump in pair.pumps:
                pump.cancel()
            await asyncio.gather(*pair.pumps, return_exceptions=True)
            _abort(pair, rst=False)
            self._pairs.discard(pair)
            self._handlers.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()


def _abort(pair: _Pair, *, rst: bool) -> None:
    for writer in pair.writers():
        sock = writer.get_extra_info("socket")
        if rst and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
