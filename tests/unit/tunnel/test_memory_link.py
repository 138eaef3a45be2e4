"""gateway/tunnel/memory_link.py: the in-process link between the gateway and its embedded relay. Bytes arrive
in order, one loop step after the write and never inside it; a reader that pauses keeps them and the writer is
paused past the high-water mark; `close` delivers then ends both ends, `abort` resets the peer; the gateway's
HTTP/1.1 client and the relay's lean server speak over it as over TCP, refusals included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.relay import Relay, RelayConfig, TunnelSpec
from gateway.tunnel import memory_link
from gateway.tunnel.http1 import H1Client, H1Error

KEY = "gateway-key-memory-link"
TUNNEL = "tunnel_memorylink"


class Recorder(asyncio.Protocol):
    """Records what a protocol is told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.events.append(("made", None))

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append(("pause_writing", None))

    def resume_writing(self) -> None:
        self.events.append(("resume_writing", None))

    def data(self) -> bytes:
        return b"".join(value for kind, value in self.events if kind == "data" and isinstance(value, bytes))


async def steps(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def pair() -> tuple[Recorder, Recorder, asyncio.Transport, asyncio.Transport]:
    client, server = Recorder(), Recorder()
    near = memory_link.connect(client, lambda: server)
    assert server.transport is not None
    return client, server, near, server.transport


async def test_connect_makes_both_ends_server_first() -> None:
    client, server, near, far = await pair()
    assert client.events == [("made", None)]
    assert server.events == [("made", None)]
    assert near is client.transport
    assert near.get_protocol() is client
    assert far.get_protocol() is server
    assert near.get_extra_info("peername") == memory_link.PEER_NAME
    assert near.get_extra_info("socket") is None
    assert near.get_extra_info("sslcontext", "none") == "none"
    assert not near.is_closing()
    assert far.is_reading()


async def test_bytes_arrive_in_order_after_the_write_returns() -> None:
    """Nothing is delivered from inside `write` (no re-entry into the writer's code); writes of one step are
    handed over together, in order, and each direction is independent."""
    client, server, near, far = await pair()
    near.write(b"one ")
    near.writelines([b"two ", bytearray(b"three ")])
    near.write(memoryview(b"four"))
    near.write(b"")
    assert server.data() == b""
    await steps()
    assert server.data() == b"one two three four"
    far.write(b"answer")
    await steps()
    assert client.data() == b"answer"
    assert near.get_write_buffer_size() == 0


async def test_a_paused_reader_keeps_the_bytes_and_the_writer_is_paused_past_high_water() -> None:
    client, server, near, far = await pair()
    far.pause_reading()
    assert not far.is_reading()
    chunk = b"x" * (64 * 1024)
    for _ in range(5):
        near.write(chunk)
    await steps()
    assert server.data() == b""
    assert near.get_write_buffer_size() == 5 * len(chunk) > memory_link.HIGH_WATER
    assert client.events.count(("pause_writing", None)) == 1  # told once, not per write
    far.resume_reading()
    await steps()
    assert server.data() == chunk * 5
    assert client.events[-1] == ("resume_writing", None)
    assert near.get_write_buffer_size() == 0


async def test_close_delivers_what_was_written_then_ends_both() -> None:
    client, server, near, far = await pair()
    near.write(b"last words")
    near.close()
    assert near.is_closing()
    near.write(b"after close")  # dropped, as on a closed socket
    await asyncio.wait_for(asyncio.gather(client.lost, server.lost), 1)
    assert server.events == [("made", None), ("data", b"last words"), ("lost", None)]
    assert client.events == [("made", None), ("lost", None)]
    far.write(b"to nobody")  # the peer is gone: dropped, no error
    near.close()  # twice is harmless
    await steps()
    assert client.events[-1] == ("lost", None)


async def test_an_end_that_closed_reads_nothing_more() -> None:
    """Bytes on their way to an end when it closes are not handed to its protocol (the peer's close is)."""
    client, server, near, far = await pair()
    far.write(b"answer on its way")
    near.close()
    await asyncio.wait_for(asyncio.gather(client.lost, server.lost), 1)
    assert client.events == [("made", None), ("lost", None)]
    assert server.events == [("made", None), ("lost", None)]


async def test_bytes_written_to_an_end_that_is_closing_are_dropped() -> None:
    """The server closed its end (it has not seen the loss yet): what the client writes then never reaches it."""
    client, server, near, far = await pair()
    far.close()
    near.write(b"too late")
    await asyncio.wait_for(asyncio.gather(client.lost, server.lost), 1)
    assert server.events == [("made", None), ("lost", None)]
    assert client.events == [("made", None), ("lost", None)]


async def test_abort_drops_the_pending_bytes_and_resets_the_peer() -> None:
    client, server, near, far = await pair()
    near.write(b"never read")
    near.abort()
    await asyncio.wait_for(asyncio.gather(client.lost, server.lost), 1)
    assert server.events == [("made", None), ("lost", "ConnectionResetError")]
    assert client.events == [("made", None), ("lost", None)]
    assert far.is_closing()
    assert not far.is_reading()


async def test_a_closed_reader_that_is_paused_sees_the_end_on_resume() -> None:
    """As with TCP: a reader that stopped reading sees the peer's close once it reads again, after the data."""
    _client, server, near, far = await pair()
    far.pause_reading()
    near.write(b"tail")
    near.close()
    await steps()
    assert server.events == [("made", None)]
    far.resume_reading()
    await asyncio.wait_for(server.lost, 1)
    assert server.events == [("made", None), ("data", b"tail"), ("lost", None)]


async def test_set_protocol_hands_later_bytes_to_the_new_protocol() -> None:
    _client, server, near, far = await pair()
    other = Recorder()
    far.set_protocol(other)
    near.write(b"for the new one")
    await steps()
    assert other.data() == b"for the new one"
    assert server.data() == b""
    assert not near.can_write_eof()
    with pytest.raises(NotImplementedError):
        near.write_eof()


# --------------------------------------------------------------------------- the gateway's client, a real relay


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    config = RelayConfig(listen="127.0.0.1:0", tunnels={TUNNEL: TunnelSpec(gateway_key=KEY)})
    async with Relay(config) as started:
        yield started


def client_for(relay: Relay, path: str) -> H1Client:
    dial = lambda protocol: memory_link.connect(protocol, relay.serve_connection)  # noqa: E731
    return H1Client(f"{relay.url}/v1/tunnels/{TUNNEL}/{path}", dial=dial)


async def test_the_http1_client_polls_a_relay_over_the_link(relay: Relay) -> None:
    """A poll with the gateway key is answered 204 (nothing queued) over the link, and the connection is kept
    for the next one; a wrong key gets the relay's 401 answer, as over TCP."""
    polls = client_for(relay, "poll")
    try:
        auth = f"Authorization: Bearer {KEY}\r\n".encode()
        first = await polls.get(auth, query="?limit=1&timeout_ms=1")
        second = await polls.get(auth, query="?limit=1&timeout_ms=1")
        assert (first.status, second.status) == (204, 204)
        assert len(polls._open) == 1  # one connection, reused
        refused = await polls.get(b"Authorization: Bearer not-the-key\r\n", query="?limit=1&timeout_ms=1")
        assert refused.status == 401
        assert b"error" in refused.body
    finally:
        polls.close()


async def test_a_request_the_lean_layer_does_not_serve_goes_to_aiohttp_over_the_link(relay: Relay) -> None:
    """A chunked POST is handed to aiohttp with the connection, as a TCP one would be (the relay answers it)."""
    responses = client_for(relay, "response")
    try:
        answer = await responses.post(
            b"Authorization: Bearer not-the-key\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"
        )
        assert answer.status in (400, 401)
    finally:
        responses.close()


async def test_closing_the_relay_ends_a_waiting_poll_over_the_link(relay: Relay) -> None:
    """A relay that shuts down answers a poll waiting on the link 204, as it does over TCP, and then the
    link is closed."""
    polls = client_for(relay, "poll")
    try:
        waiting = asyncio.ensure_future(
            polls.get(f"Authorization: Bearer {KEY}\r\n".encode(), query="?limit=1&timeout_ms=60000")
        )
        await steps(10)
        assert not waiting.done()
        await relay.close()
        answer = await asyncio.wait_for(waiting, 10)
        assert answer.status == 204
        await steps()
        assert not polls._open or not any(conn.reusable for conn in polls._open)
        with pytest.raises(H1Error, match="cannot connect") as refused:  # nothing serves the link any more
            await polls.get(f"Authorization: Bearer {KEY}\r\n".encode(), query="?limit=1&timeout_ms=1")
        assert refused.value.sent is False  # the poller backs off and tries again, as after a refused connect
    finally:
        polls.close()


async def test_serve_connection_needs_a_serving_relay() -> None:
    """Before start (and after close, above) a dial is refused, as by a closed listener."""
    config = RelayConfig(listen="127.0.0.1:0", tunnels={TUNNEL: TunnelSpec(gateway_key=KEY)})
    with pytest.raises(ConnectionRefusedError):
        Relay(config).serve_connection()
