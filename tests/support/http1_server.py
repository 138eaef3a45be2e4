"""A scripted HTTP/1.1 server on real sockets (127.0.0.1:0) for the keep-alive client's tests: it reads each
request (head up to the blank line, then a Content-Length body), records it with the index of the TCP connection
it came on, and answers with exactly the bytes the test scripts."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.tunnel.http1 import H1Client

Reply = Callable[["Received", asyncio.StreamWriter], Awaitable[None]]
WAIT_S = 10.0  # an upper bound for events that must happen; never a measured duration


@dataclass(frozen=True)
class Received:
    """One request as the server read it."""

    conn: int
    head: bytes
    """Request line and header lines, up to and including the blank line."""
    body: bytes

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, sep, value = line.partition(b":")
            if sep and key.strip().lower() == name.lower():
                return value.strip()
        return None


@dataclass
class Conn:
    index: int
    writer: asyncio.StreamWriter
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the connection is over: the client closed it, or the server did."""


def answer(data: bytes, *, close: bool = False) -> Reply:
    """Write `data` verbatim, then close the connection if asked."""

    async def reply(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()

    return reply


async def echo(request: Received, writer: asyncio.StreamWriter) -> None:
    """The default: 200 with the request's body as the response body."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(request.body), request.body))
    await writer.drain()


async def hang_up(request: Received, writer: asyncio.StreamWriter) -> None:
    """Close the connection without answering."""
    writer.close()


def hold(arrived: asyncio.Event) -> Reply:
    """Signal that the request arrived, then never answer (until the connection ends)."""

    async def reply(request: Received, writer: asyncio.StreamWriter) -> None:
        arrived.set()
        await asyncio.Event().wait()

    return reply


async def _read_request(reader: asyncio.StreamReader, conn: int) -> Received | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        request = Received(conn, head, b"")
        length = int(request.header(b"content-length") or b"0")
        return Received(conn, head, await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class ScriptedServer:
    """HTTP/1.1 on 127.0.0.1:0; `replies` answer requests in arrival order, then `default` answers the rest."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.conns: list[Conn] = []
        self.replies: collections.deque[Reply] = collections.deque()
        self.default: Reply = echo
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def accepted(self) -> int:
        return len(self.conns)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def ended(self, index: int) -> None:
        """Wait until connection `index` is over (fails the test if it never ends)."""
        await asyncio.wait_for(self.conns[index].ended.wait(), WAIT_S)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.conns:
            conn.writer.close()
        await asyncio.gather(*self._tasks)
        await self._server.wait_closed()
        await spin()  # let client transports see the EOF and close their sockets

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(len(self.conns), writer)
        self.conns.append(conn)
        pending: asyncio.Queue[tuple[Received, Reply]] = asyncio.Queue()
        responder = asyncio.create_task(self._respond(pending, writer))
        try:
            while (request := await _read_request(reader, conn.index)) is not None:
                self.received.append(request)
                pending.put_nowait((request, self.replies.popleft() if self.replies else self.default))
        finally:
            conn.ended.set()
            responder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await responder
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, pending: asyncio.Queue[tuple[Received, Reply]], writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            request, reply = await pending.get()
            try:
                await reply(request, writer)
            except ConnectionError:
                return


async def spin(turns: int = 20) -> None:
    """Yield to the loop a few times (no timer): lets already-delivered socket events be processed."""
    for _ in range(turns):
        await asyncio.sleep(0)


MakeClient = Callable[..., H1Client]
