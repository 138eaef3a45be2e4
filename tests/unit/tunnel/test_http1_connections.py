"""gateway/tunnel/http1.py: connections and errors against the scripted server: reuse and growth of the pool,
`Connection: close`, idle expiry, cancellation and close; refused connections, hang-ups, malformed and truncated
responses, interim 100 Continue."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.tunnel.http1 import H1Client, H1Error
from tests.support.http1_server import WAIT_S, MakeClient, Received, ScriptedServer, answer, echo, hang_up, hold, spin

# --------------------------------------------------------------------------- connections


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


# --------------------------------------------------------------------------- errors


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
