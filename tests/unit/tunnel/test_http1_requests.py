"""gateway/tunnel/http1.py: requests and responses against the scripted server: exact heads and bodies,
`Retry-After`, chunked and close-delimited bodies, responses split into single bytes, `max_body`, when headers
arrived."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.http1_server import WAIT_S, MakeClient, Received, ScriptedServer, answer, spin


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
