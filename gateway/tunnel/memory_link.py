"""An in-process byte stream between two asyncio protocols: the gateway's link to its embedded relay.
Carries bytes only: no HTTP, no policy (both ends keep their own), no socket.

With no control plane configured, the gateway and the relay it embeds run on one event loop. Their
poll and response exchanges are the same HTTP/1.1 requests as over TCP (the gateway's `http1`
client on one side, the relay's lean server, or aiohttp's, on the other); only the kernel is left
out: no socket, no system call, no wake-up of the loop by epoll. What one side writes reaches the
other's `data_received` one loop step later, in order, never from inside `write`.

Owns the two `asyncio.Transport` ends and their flow control: a reader that pauses reading keeps
what arrives buffered, and the writer is told `pause_writing` while more than `HIGH_WATER` bytes
wait for that reader (`resume_writing` once under `LOW_WATER`). `close` is a TCP close: the bytes
already written are delivered, then both protocols see `connection_lost(None)`; `abort` drops them,
and the peer sees `ConnectionResetError`, as after a reset.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
PEER_NAME: Final = ("127.0.0.1", 0)
"""What `get_extra_info("peername")` and `"sockname"` answer: a loopback peer, as the TCP link had."""


class MemoryTransport(asyncio.Transport):
    """One end of a link made by `connect`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._peer: MemoryTransport | None = None
        self._inbox: list[bytes] = []
        """Bytes the peer wrote, not yet handed to this end's protocol."""
        self._inbox_size = 0
        self._scheduled = False
        self._reading = True
        self._closing = False
        self._eof = False
        """The peer closed: once the inbox is delivered, this end is lost too."""
        self._lost = False
        self._writing_paused = False

    # what the protocol on this end calls -----------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        peer = self._peer
        if self._closing or peer is None or peer._closing or not data:
            return  # to or from a closed end: dropped, as by a closed socket (connection_lost reports the end)
        peer._receive(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("the memory link has no half-close")

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Deliver what this end wrote, then end the link for both protocols."""
        if self._closing or self._lost:
            return
        self._closing = True
        peer = self._peer
        if peer is not None and not peer._lost:
            peer._eof = True
            peer._schedule()
        self._loop.call_soon(self._lose, None)

    def abort(self) -> None:
        """End the link now: nothing more is delivered; the peer sees a reset."""
        if self._lost:
            return
        self._closing = True
        self._inbox.clear()
        self._inbox_size = 0
        peer = self._peer
        if peer is not None and not peer._lost:
            peer._inbox.clear()
            peer._inbox_size = 0
            peer._closing = True
            self._loop.call_soon(peer._lose, ConnectionResetError("the link was reset by its peer"))
        self._loop.call_soon(self._lose, None)

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._schedule()

    def is_reading(self) -> bool:
        return self._reading and not self._lost

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def get_write_buffer_size(self) -> int:
        return self._peer._inbox_size if self._peer is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return LOW_WATER, HIGH_WATER

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # fixed limits: the two ends are this module's own

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("peername", "sockname"):
            return PEER_NAME
        return default  # no socket, no TLS

    # delivery --------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        self._inbox.append(data)
        self._inbox_size += len(data)
        self._schedule()
        peer = self._peer
        if peer is not None and not peer._writing_paused and self._inbox_size > HIGH_WATER:
            peer._writing_paused = True
            _call(peer._protocol, "pause_writing")

    def _schedule(self) -> None:
        if not self._scheduled and self._reading and not self._lost and (self._inbox or self._eof):
            self._scheduled = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        if self._lost or self._closing or not self._reading:
            return  # an end that closed (or was reset) reads nothing more, as a closed socket
        if self._inbox:
            data = self._inbox[0] if len(self._inbox) == 1 else b"".join(self._inbox)
            self._inbox.clear()
            self._inbox_size = 0
            peer = self._peer
            if peer is not None and peer._writing_paused and not peer._lost:
                peer._writing_paused = False
                _call(peer._protocol, "resume_writing")
            protocol = self._protocol
            assert isinstance(protocol, asyncio.Protocol)
            protocol.data_received(data)
        if self._eof and not self._inbox and not self._lost:
            self._lose(None)

    def _lose(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = self._closing = True
        self._inbox.clear()
        self._inbox_size = 0
        self._protocol.connection_lost(exc)


def _call(protocol: asyncio.BaseProtocol, name: str) -> None:
    method: Callable[[], None] | None = getattr(protocol, name, None)
    if method is not None:
        method()


def connect(client: asyncio.Protocol, server_factory: Callable[[], asyncio.BaseProtocol]) -> MemoryTransport:
    """Link `client` to a new protocol from `server_factory` (a listener's factory, as for an accepted
    connection); returns the client's transport. Both `connection_made` calls happen here, the server's
    first."""
    loop = asyncio.get_running_loop()
    server = server_factory()
    near, far = MemoryTransport(loop, client), MemoryTransport(loop, server)
    near._peer, far._peer = far, near
    server.connection_made(far)
    client.connection_made(near)
    return near
