"""gateway/tunnel/http1.py: the keep-alive HTTP/1.1 client, against a scripted server on real sockets (127.0.0.1:0).

The server reads each request (head up to the blank line, then a Content-Length body), records it with the
index of the TCP connection it came on, and answers with exactly the bytes the test scripts.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.tunnel.http1 import H1Client, H1Error, Origin, valid_field_value

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


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    await scripted.start()
    try:
        yield scripted
    finally:
        await scripted.stop()


MakeClient = Callable[..., H1Client]


@pytest.fixture
async def make_client(server: ScriptedServer) -> AsyncIterator[MakeClient]:
    """H1Clients for the scripted server (or any URL), all closed before the server stops."""
    clients: list[H1Client] = []

    def make(url: str | None = None, **settings: object) -> H1Client:
        client = H1Client(url or f"http://127.0.0.1:{server.port}/v1/response", **settings)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    await spin()


# Requests and responses ----------------------------------------------------------------------------------------


async def test_post_sends_exact_head_and_body_and_returns_status_retry_after_body(
    server: ScriptedServer, make_client: MakeClient
) -> None:
    """The request line, Host (with port), the caller's header lines, Content-Length and body arrive byte for
    byte; the status, Retry-After and body come back."""
    server.replies.append(answer(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nslow"))
    client = make_client(f"http://127.0.0.1:{server.port}/v1/tunnels/t1/response")
    headers = b"Authorization: Bearer key-1\r\nContent-Type: application/json\r\n"
    body = b'{"id":1,"result":{}}'

    response = await client.post(headers, body)

    assert server.received == [
        Received(
            0,
            b"POST /v1/tunnels/t1/response HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: %d\r\n\r\n"
            % (server.port, headers, len(body)),
            body,
        )
    ]
    assert (response.status, response.retry_after, response.body, response.truncated) == (429, "7", b"slow", False)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"", None),
        (b"retry-after: 3\r\n", "3"),
        (b"RETRY-AFTER: Wed, 21 Oct 2015 07:28:00 GMT\r\n", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ],
)
async def test_retry_after_is_found_case_insensitively(
    server: ScriptedServer, make_client: MakeClient, header: bytes, expected: str | None
) -> None:
    """Retry-After is read whatever the name's case, verbatim, and is None when absent."""
    server.replies.append(answer(b"HTTP/1.1 503 Service Unavailable\r\n%sContent-Length: 0\r\n\r\n" % header))
    response = await make_client().post(b"", b"x")
    assert (response.status, response.retry_after, response.body) == (503, expected, b"")


async def test_empty_post_sends_content_length_zero(server: ScriptedServer, make_client: MakeClient) -> None:
    """An empty body still carries `Content-Length: 0`, and the next request parses cleanly after it."""
    client = make_client()
    assert (await client.post(b"", b"")).body == b""
    assert (await client.post(b"", b"after")).body == b"after"
    assert server.received[0].header(b"content-length") == b"0"
    assert server.received[0].body == b""
    assert server.received[1].body == b"after"


async def test_get_replaces_the_url_query_and_sends_no_body(server: ScriptedServer, make_client: MakeClient) -> None:
    """`get(query=...)` sends the path with that query instead of the URL's own, and no body or length;
    without `query` the URL's own query is kept."""
    client = make_client(f"http://127.0.0.1:{server.port}/v1/poll?own=1")
    server.replies.extend([answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")] * 2)

    first = await client.get(b"Authorization: Bearer k\r\n", query="?limit=3&timeout_ms=10")
    second = await client.get(b"")

    host = b"Host: 127.0.0.1:%d\r\n" % server.port
    assert [r.head for r in server.received] == [
        b"GET /v1/poll?limit=3&timeout_ms=10 HTTP/1.1\r\n" + host + b"Authorization: Bearer k\r\n\r\n",
        b"GET /v1/poll?own=1 HTTP/1.1\r\n" + host + b"\r\n",
    ]
    assert [r.body for r in server.received] == [b"", b""]
    assert (first.status, first.body, second.body) == (200, b"[]", b"[]")
    assert server.accepted == 1


async def test_chunked_body_is_read_whole_and_connection_reused(
    server: ScriptedServer, make_client: MakeClient
) -> None:
    """A chunked body is reassembled, and its end is found: the next request reuses the connection."""
    server.replies.append(
        answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    )
    client = make_client()
    response = await client.post(b"", b"x")
    assert (response.status, response.body, response.truncated) == (200, b"hello world", False)
    assert (await client.post(b"", b"next")).body == b"next"
    assert server.accepted == 1


async def test_body_without_length_ends_with_the_connection(server: ScriptedServer, make_client: MakeClient) -> None:
    """A response with neither Content-Length nor chunking is read until the server closes, then returned;
    the next request uses a new connection."""
    server.replies.append(answer(b"HTTP/1.1 200 OK\r\nRetry-After: 2\r\n\r\nuntil the end", close=True))
    client = make_client()
    response = await client.post(b"", b"x")
    assert (response.status, response.retry_after, response.body) == (200, "2", b"until the end")
    assert (await client.post(b"", b"next")).body == b"next"
    assert [r.conn for r in server.received] == [0, 1]


async def test_response_split_into_single_bytes_parses(server: ScriptedServer, make_client: MakeClient) -> None:
    """A response that arrives in many small pieces (header names and values split) parses the same."""
    data = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 12\r\nContent-Length: 5\r\n\r\nlater"

    async def trickle(request: Received, writer: asyncio.StreamWriter) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)

    server.replies.append(trickle)
    response = await make_client().post(b"", b"x")
    assert (response.status, response.retry_after, response.body) == (429, "12", b"later")


@pytest.mark.parametrize(("max_body", "truncated"), [(0, True), (10, True), (99, True), (100, False), (1000, False)])
async def test_max_body_keeps_the_start_and_flags_truncation(
    server: ScriptedServer, make_client: MakeClient, max_body: int, truncated: bool
) -> None:
    """At most `max_body` bytes are kept, `truncated` says whether more came, and the rest of the body is still
    consumed: the connection is reused for the next request."""
    body = bytes(range(100))
    server.replies.append(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body))
    client = make_client()
    response = await client.post(b"", b"x", max_body=max_body)
    assert (response.body, response.truncated) == (body[:max_body], truncated)
    assert (await client.post(b"", b"next")).body == b"next"
    assert server.accepted == 1


async def test_max_body_across_chunks(server: ScriptedServer, make_client: MakeClient) -> None:
    """Truncation counts bytes across chunk boundaries."""
    server.replies.append(
        answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    )
    response = await make_client().post(b"", b"x", max_body=7)
    assert (response.body, response.truncated) == (b"hello w", True)


async def test_headers_at_is_when_headers_arrived_not_when_body_did(
    server: ScriptedServer, make_client: MakeClient
) -> None:
    """`headers_at` is the loop time the headers arrived: before the body was released, not after it ended."""
    head_sent, release = asyncio.Event(), asyncio.Event()

    async def slow_body(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        await writer.drain()
        head_sent.set()
        await release.wait()
        writer.write(b"body")
        await writer.drain()

    server.replies.append(slow_body)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(make_client().post(b"", b"x"))
    await asyncio.wait_for(head_sent.wait(), WAIT_S)
    await spin()  # the head is already in the client's socket buffer: let the client read it
    released_at = loop.time()
    release.set()
    response = await task
    done_at = loop.time()
    assert response.body == b"body"
    assert 0 < response.headers_at <= released_at <= done_at


# Connections ---------------------------------------------------------------------------------------------------


async def test_sequential_posts_share_one_connection(server: ScriptedServer, make_client: MakeClient) -> None:
    """20 POSTs one after another use a single TCP connection, each getting its own answer."""
    client = make_client()
    for i in range(20):
        assert (await client.post(b"", b"n=%d" % i)).body == b"n=%d" % i
    assert server.accepted == 1
    assert [r.body for r in server.received] == [b"n=%d" % i for i in range(20)]


async def test_concurrent_posts_grow_the_pool_then_reuse_it(server: ScriptedServer, make_client: MakeClient) -> None:
    """10 concurrent POSTs open 10 connections (one request at a time each); afterwards sequential and concurrent
    POSTs reuse them and no new connection is opened; no answer goes to the wrong caller."""
    client = make_client(idle_s=60.0)

    async def batch(tag: bytes) -> None:
        bodies = [b"%s-%d" % (tag, i) for i in range(10)]
        responses = await asyncio.gather(*(client.post(b"", body) for body in bodies))
        assert [r.body for r in responses] == bodies

    await batch(b"a")
    assert server.accepted == 10
    for i in range(20):
        assert (await client.post(b"", b"s-%d" % i)).body == b"s-%d" % i
    await batch(b"b")
    assert server.accepted == 10
    assert len(server.received) == 40


@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connection_close_is_honoured(server: ScriptedServer, make_client: MakeClient, first: bytes) -> None:
    """After `Connection: close` (or an HTTP/1.0 answer) the client closes that connection itself, even though
    the server keeps it open, and the next request goes on a new one."""
    server.replies.append(answer(first))
    client = make_client()
    assert (await client.post(b"", b"x")).body == b"ok"
    await server.ended(0)
    assert (await client.post(b"", b"next")).body == b"next"
    assert [r.conn for r in server.received] == [0, 1]


async def test_idle_connection_closed_by_server_is_not_reused(server: ScriptedServer, make_client: MakeClient) -> None:
    """A pooled connection the server closed while idle is skipped: the next request succeeds on a new one."""
    server.replies.append(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=True))
    client = make_client()
    assert (await client.post(b"", b"x")).body == b"ok"
    await server.ended(0)
    await spin()  # the FIN is already in the client's socket: let it see it
    assert (await client.post(b"", b"next")).body == b"next"
    assert [r.conn for r in server.received] == [0, 1]


async def test_idle_connection_expires(server: ScriptedServer, make_client: MakeClient) -> None:
    """A connection idle longer than `idle_s` is dropped (the server sees it close) and not reused."""
    client = make_client(idle_s=0.05)
    assert (await client.post(b"", b"x")).body == b"x"
    await asyncio.sleep(0.2)
    assert (await client.post(b"", b"next")).body == b"next"
    assert [r.conn for r in server.received] == [0, 1]
    await server.ended(0)


async def test_cancelled_post_drops_its_connection(server: ScriptedServer, make_client: MakeClient) -> None:
    """Cancelling a POST while the server holds the answer closes that connection (its state is unknown), and
    the next POST succeeds on a new one."""
    arrived = asyncio.Event()
    server.replies.append(hold(arrived))
    client = make_client()
    task = asyncio.create_task(client.post(b"", b"first"))
    await asyncio.wait_for(arrived.wait(), WAIT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await server.ended(0)
    assert (await client.post(b"", b"second")).body == b"second"
    assert [r.conn for r in server.received] == [0, 1]


async def test_close_aborts_idle_and_busy_connections(server: ScriptedServer, make_client: MakeClient) -> None:
    """`close()` ends every connection, idle or in use (the server sees both close); the request in flight
    fails with `sent=True`."""
    arrived = asyncio.Event()

    async def quick_or_hold(request: Received, writer: asyncio.StreamWriter) -> None:
        await (hold(arrived) if request.body == b"hold" else echo)(request, writer)

    server.default = quick_or_hold
    client = make_client()
    busy = asyncio.create_task(client.post(b"", b"hold"))
    quick = asyncio.create_task(client.post(b"", b"quick"))
    assert (await quick).body == b"quick"
    await asyncio.wait_for(arrived.wait(), WAIT_S)
    assert server.accepted == 2

    client.close()

    with pytest.raises(H1Error) as failed:
        await asyncio.wait_for(busy, WAIT_S)
    assert failed.value.sent is True
    await server.ended(0)
    await server.ended(1)


async def test_most_recently_used_connection_is_reused_first(server: ScriptedServer, make_client: MakeClient) -> None:
    """With two idle connections, the next request takes the one that finished last (its peer is the least
    likely to have closed it)."""
    arrived = {b"early": asyncio.Event(), b"late": asyncio.Event()}
    release = {b"early": asyncio.Event(), b"late": asyncio.Event()}

    async def on_release(request: Received, writer: asyncio.StreamWriter) -> None:
        if request.body in release:
            arrived[request.body].set()
            await release[request.body].wait()
        await echo(request, writer)

    server.default = on_release
    client = make_client(idle_s=60.0)
    early = asyncio.create_task(client.post(b"", b"early"))
    late = asyncio.create_task(client.post(b"", b"late"))
    for name in (b"early", b"late"):
        await asyncio.wait_for(arrived[name].wait(), WAIT_S)
    release[b"early"].set()
    assert (await early).body == b"early"
    release[b"late"].set()
    assert (await late).body == b"late"
    late_conn = next(r.conn for r in server.received if r.body == b"late")

    assert (await client.post(b"", b"next")).body == b"next"
    assert server.received[-1].conn == late_conn
    assert server.accepted == 2


# Errors --------------------------------------------------------------------------------------------------------


async def test_refused_connection_is_not_sent() -> None:
    """Nothing listening on the port: `H1Error` with `sent=False`."""
    with socket.socket() as reserved:  # bound, not listening: connecting is refused, and nobody else gets the port
        reserved.bind(("127.0.0.1", 0))
        client = H1Client(f"http://127.0.0.1:{reserved.getsockname()[1]}/v1/response")
        with pytest.raises(H1Error, match="cannot connect") as failed:
            await client.post(b"", b"x")
        client.close()
    assert failed.value.sent is False


async def test_server_hang_up_is_sent_error_and_client_recovers(
    server: ScriptedServer, make_client: MakeClient
) -> None:
    """The server reads the request and closes without answering: `H1Error` with `sent=True`; then a new
    connection works."""
    server.replies.append(hang_up)
    client = make_client()
    with pytest.raises(H1Error) as failed:
        await client.post(b"", b"x")
    assert failed.value.sent is True
    assert server.received[0].body == b"x"
    assert (await client.post(b"", b"next")).body == b"next"
    assert [r.conn for r in server.received] == [0, 1]


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 abc\r\n\r\n",
        b"\x00\x01\x02 not http at all\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["status", "bytes", "length", "chunk-size"],
)
async def test_malformed_response_is_sent_error_and_client_recovers(
    server: ScriptedServer, make_client: MakeClient, garbage: bytes
) -> None:
    """A response httptools rejects: `H1Error` with `sent=True`, the connection is dropped (the server sees it
    close while it still holds it open), and the next request succeeds on a new connection."""
    server.replies.append(answer(garbage))
    client = make_client()
    with pytest.raises(H1Error, match="malformed") as failed:
        await client.post(b"", b"x")
    assert failed.value.sent is True
    await server.ended(0)
    assert (await client.post(b"", b"next")).body == b"next"
    assert [r.conn for r in server.received] == [0, 1]


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_body_cut_short_is_an_error(server: ScriptedServer, make_client: MakeClient, partial: bytes) -> None:
    """A body shorter than its Content-Length (or a chunked body without its last chunk) followed by the
    server closing is a failed exchange, not a 200 with part of the body."""
    server.replies.append(answer(partial, close=True))
    with pytest.raises(H1Error) as failed:
        await make_client().post(b"", b"x")
    assert failed.value.sent is True


async def test_interim_100_continue_is_skipped(server: ScriptedServer, make_client: MakeClient) -> None:
    """An unsolicited `100 Continue` before the real answer is skipped; the caller gets the final response."""
    server.replies.append(
        answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 4\r\n\r\ndone")
    )
    response = await make_client().post(b"", b"x")
    assert (response.status, response.body) == (202, b"done")


# Proxies -------------------------------------------------------------------------------------------------------


async def test_http_target_through_proxy_uses_absolute_form_and_auth(
    server: ScriptedServer, make_client: MakeClient
) -> None:
    """An http:// URL through a proxy: the proxy gets absolute-form requests carrying Proxy-Authorization."""
    target = f"http://127.0.0.1:{server.port}/v1/response"
    client = make_client(target, proxy=f"http://user:pw@127.0.0.1:{server.port}")
    assert (await client.post(b"X-A: 1\r\n", b"body")).body == b"body"
    assert server.received[0].head == (
        b"POST http://127.0.0.1:%d/v1/response HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Proxy-Authorization: Basic %s\r\nX-A: 1\r\nContent-Length: 4\r\n\r\n"
        % (server.port, server.port, base64.b64encode(b"user:pw"))
    )


async def test_connect_refused_by_proxy_hides_password(server: ScriptedServer, make_client: MakeClient) -> None:
    """An https:// URL through a proxy opens a CONNECT tunnel with Proxy-Authorization; a 407 answer is an
    `H1Error` with `sent=False` naming the status but not the proxy's password, and the proxy connection is
    dropped."""
    server.replies.append(answer(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"))
    authority = f"127.0.0.1:{server.port}"  # the scripted proxy is never asked to reach anything else
    client = make_client(f"https://{authority}/v1/response", proxy=f"http://user:s3cret@127.0.0.1:{server.port}")
    with pytest.raises(H1Error) as failed:
        await client.post(b"", b"x")
    assert failed.value.sent is False
    assert "407" in str(failed.value)
    credentials = base64.b64encode(b"user:s3cret").decode()
    assert "s3cret" not in str(failed.value)
    assert credentials not in str(failed.value)
    (connect,) = server.received
    assert connect.line == f"CONNECT {authority} HTTP/1.1".encode()
    assert connect.header(b"host") == authority.encode()
    assert connect.header(b"proxy-authorization") == f"Basic {credentials}".encode()
    assert connect.body == b""
    await server.ended(0)


async def test_proxy_closing_during_connect_is_not_sent(server: ScriptedServer, make_client: MakeClient) -> None:
    """The proxy hangs up instead of answering CONNECT: `H1Error` with `sent=False`."""
    server.replies.append(hang_up)
    client = make_client(f"https://127.0.0.1:{server.port}/v1/response", proxy=f"127.0.0.1:{server.port}")
    with pytest.raises(H1Error) as failed:
        await client.post(b"", b"x")
    assert failed.value.sent is False
    assert server.received[0].header(b"proxy-authorization") is None


async def test_cancel_during_connect_closes_proxy_connection(server: ScriptedServer, make_client: MakeClient) -> None:
    """Cancelling a POST while the proxy holds its CONNECT answer closes the proxy connection."""
    arrived = asyncio.Event()
    server.replies.append(hold(arrived))
    client = make_client(f"https://127.0.0.1:{server.port}/v1/response", proxy=f"127.0.0.1:{server.port}")
    task = asyncio.create_task(client.post(b"", b"x"))
    await asyncio.wait_for(arrived.wait(), WAIT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await spin()  # a dropped connection reaches the server within a few loop turns
    dropped = server.conns[0].ended.is_set()
    server.conns[0].writer.close()  # the leaked client socket then closes on EOF, before the loop ends
    await server.ended(0)
    await spin()
    assert dropped


# Origin and header values (no sockets) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "path", "authority"),
    [
        ("http://example.test/x", "example.test", 80, "/x", "example.test"),
        ("https://example.test", "example.test", 443, "/", "example.test"),
        ("http://example.test:8080/p", "example.test", 8080, "/p", "example.test:8080"),
        ("https://example.test:443/p", "example.test", 443, "/p", "example.test"),
        ("https://example.test:80/p", "example.test", 80, "/p", "example.test:80"),
        ("http://[::1]:8080/p", "::1", 8080, "/p", "[::1]:8080"),
        ("https://[2001:db8::1]/p", "2001:db8::1", 443, "/p", "[2001:db8::1]"),
        ("http://example.test/poll?a=1&b=2", "example.test", 80, "/poll?a=1&b=2", "example.test"),
    ],
)
def test_origin_parse(url: str, host: str, port: int, path: str, authority: str) -> None:
    """Default ports per scheme, bracketed IPv6 authorities, the query kept in the path."""
    origin = Origin.parse(url)
    assert (origin.host, origin.port, origin.path, origin.authority) == (host, port, path, authority)
    assert origin.proxy_host is None
    assert origin.request_head("GET") == f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n".encode()


def test_request_head_query_replaces_the_urls_own() -> None:
    """`request_head(method, query)` swaps the URL's query for the given one; without it the URL's is kept."""
    origin = Origin.parse("http://example.test:81/v1/poll?x=9")
    assert origin.request_head("GET", "?a=1") == b"GET /v1/poll?a=1 HTTP/1.1\r\nHost: example.test:81\r\n"
    assert origin.request_head("GET") == b"GET /v1/poll?x=9 HTTP/1.1\r\nHost: example.test:81\r\n"
    assert Origin.parse("http://example.test/p").request_head("GET", "?a=1") == (
        b"GET /p?a=1 HTTP/1.1\r\nHost: example.test\r\n"
    )


def test_proxy_authorization_only_when_forwarding_plain_http() -> None:
    """Proxy credentials (percent-decoded) become a Basic `Proxy-Authorization` line on absolute-form requests
    for http:// targets, and never appear in https:// (tunnelled) request heads."""
    proxy = "http://us%3Aer:p%40ss@proxy.test:3128"
    expected = "Basic " + base64.b64encode(b"us:er:p@ss").decode()

    plain = Origin.parse("http://example.test:81/p?q=1", proxy)
    assert (plain.proxy_host, plain.proxy_port, plain.proxy_auth, plain.proxy_tls) == (
        "proxy.test",
        3128,
        expected,
        False,
    )
    head = f"POST http://example.test:81/p?q=1 HTTP/1.1\r\nHost: example.test:81\r\nProxy-Authorization: {expected}\r\n"
    assert plain.request_head("POST") == head.encode()
    assert plain.request_head("GET", "?a=1").startswith(b"GET http://example.test:81/p?a=1 HTTP/1.1\r\n")

    tunnelled = Origin.parse("https://example.test/p", proxy)
    assert tunnelled.proxy_auth == expected  # kept for CONNECT
    assert tunnelled.request_head("POST") == b"POST /p HTTP/1.1\r\nHost: example.test\r\n"


@pytest.mark.parametrize(
    ("proxy", "host", "port", "tls", "auth"),
    [
        ("proxy.test:3128", "proxy.test", 3128, False, None),
        ("http://proxy.test", "proxy.test", 80, False, None),
        ("https://proxy.test", "proxy.test", 443, True, None),
        ("http://user@proxy.test:1", "proxy.test", 1, False, "Basic " + base64.b64encode(b"user:").decode()),
    ],
)
def test_origin_parse_proxy_forms(proxy: str, host: str, port: int, tls: bool, auth: str | None) -> None:
    """A proxy without a scheme is plain HTTP; default proxy ports follow the proxy's scheme; a user without a
    password still authenticates."""
    origin = Origin.parse("http://example.test/", proxy)
    assert (origin.proxy_host, origin.proxy_port, origin.proxy_tls, origin.proxy_auth) == (host, port, tls, auth)


@pytest.mark.parametrize(
    ("url", "proxy"),
    [
        ("ftp://example.test/", None),
        ("example.test/path", None),
        ("http:///no-host", None),
        ("http://example.test/", "socks5://proxy.test:1080"),
        ("http://example.test/", "http://"),
    ],
)
def test_origin_parse_rejects(url: str, proxy: str | None) -> None:
    """Only http:// and https:// URLs and proxies, with a host."""
    with pytest.raises(ValueError, match="http"):
        Origin.parse(url, proxy)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("Bearer abc.DEF-123_~+/=", True),
        ("token", True),
        ("a value with spaces", True),
        ("", True),
        ("a\rb", False),
        ("a\nb", False),
        ("a\r\nX-Injected: 1", False),
        ("a\x00b", False),
        ("a\x7fb", False),
        ("caf\u00e9", False),
        ("\u2028", False),
    ],
)
def test_valid_field_value(value: str, ok: bool) -> None:
    """Header values with CR, LF, NUL, other controls or non-ASCII are rejected; visible ASCII passes."""
    assert valid_field_value(value) is ok
