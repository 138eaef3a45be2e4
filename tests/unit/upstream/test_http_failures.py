"""HttpUpstream failing: connections refused, DNS and TLS failures, aiohttp errors translated once, and a tiny
misbehaving server in the test's own loop for what the SDK will not produce (HTML 500s, garbage JSON, truncated
streams)."""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from msgspec import Raw

from gateway.config.routing import HttpSpec
from gateway.protocol.eras import MODERN_VERSION, Bridge
from gateway.protocol.errors import UpstreamError, UpstreamHttpError, UpstreamProtocolError, UpstreamUnavailable
from gateway.protocol.mcp import Call, Era, Notify
from gateway.upstream.http import HttpUpstream, map_aiohttp_errors
from tests.support.http_upstream import MAX_BYTES, Factory, make_call, run
from tests.support.upstream_support import result_of

# --------------------------------------------------------------------------- connection failures


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A port that is bound but not listening: connections are refused, and nobody else can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    finally:
        sock.close()


async def test_connection_refused(upstream: Factory, bridge: Bridge, refusing_url: str) -> None:
    up = upstream(refusing_url, ready_timeout_s=0.01)
    for _ in range(2):  # start() may be retried; it never crashes
        with pytest.raises(UpstreamUnavailable) as caught:
            await up.start()
        failure = caught.value.failure
        assert failure.source == "connect"
        assert failure.transport_error_kind == "connection_refused"
        assert failure.upstream_response_received is False
        assert "127.0.0.1" not in str(caught.value)
    assert up.info is None
    with pytest.raises(UpstreamUnavailable):
        await run(up, Call("tools/list", Raw(b"1")))


class NoSuchHost(AbstractResolver):
    """A resolver that knows no names (no lookup leaves this machine)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        raise OSError(socket.EAI_NONAME, "Name or service not known")

    async def close(self) -> None:
        pass


async def test_dns_failure(bridge: Bridge) -> None:
    connector = aiohttp.TCPConnector(resolver=NoSuchHost())
    async with aiohttp.ClientSession(connector=connector) as session:
        up = HttpUpstream(
            "srv",
            HttpSpec(url="http://mcp.internal.example/mcp"),
            session=session,
            bridge=bridge,
            max_message_bytes=MAX_BYTES,
            extra_headers={},
        )
        with pytest.raises(UpstreamUnavailable) as caught:
            await up.start()
    assert caught.value.failure.source == "dns"
    assert caught.value.failure.transport_error_kind == "dns"
    assert "example" not in str(caught.value)


async def test_tls_failure(upstream: Factory, fake: FakeServer) -> None:
    up = upstream(fake.url.replace("http://", "https://"))  # TLS to a plain-HTTP server
    with pytest.raises(UpstreamUnavailable) as caught:
        await up.start()
    assert caught.value.failure.source == "tls"
    assert caught.value.failure.transport_error_kind == "tls"


KEY: Any = None  # the connection key only feeds the exception's text, which is never used


@pytest.mark.parametrize(
    ("exc", "source", "kind"),
    [
        (
            aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(errno.ECONNREFUSED, "x")),
            "connect",
            "connection_refused",
        ),
        (aiohttp.ClientConnectorError(KEY, OSError(errno.EHOSTUNREACH, "x")), "connect", "host_unreachable"),
        (aiohttp.ClientConnectorError(KEY, OSError(errno.ENETUNREACH, "x")), "connect", "network_unreachable"),
        (aiohttp.ClientConnectorError(KEY, OSError(errno.EINVAL, "x")), "connect", "dial"),
        (aiohttp.ClientConnectorError(KEY, OSError(errno.ETIMEDOUT, "x")), "timeout", "timeout"),
        (aiohttp.ClientConnectorDNSError(KEY, OSError(socket.EAI_NONAME, "x")), "dns", "dns"),
        (aiohttp.ServerTimeoutError(), "timeout", "timeout"),
        (aiohttp.ConnectionTimeoutError(), "timeout", "timeout"),
        (aiohttp.ServerDisconnectedError(), "transport_closed", "connection_closed"),
        (aiohttp.ClientConnectionResetError(), "transport_closed", "connection_reset"),
        (aiohttp.ClientOSError(errno.ECONNRESET, "x"), "transport_closed", "connection_reset"),
        (aiohttp.ClientOSError(errno.EPIPE, "x"), "transport_closed", "closed_pipe"),
        (aiohttp.ClientOSError(errno.ECONNABORTED, "x"), "transport_closed", "connection_aborted"),
        (aiohttp.ClientPayloadError("x"), "transport_closed", "unexpected_eof"),
        (aiohttp.InvalidURL("http://x y"), "client_internal", "unknown"),
    ],
)
def test_aiohttp_failures_are_translated_once(exc: Exception, source: str, kind: str) -> None:
    with pytest.raises(UpstreamUnavailable) as caught, map_aiohttp_errors("srv"):
        raise exc
    assert caught.value.failure.source == source
    assert caught.value.failure.transport_error_kind == kind
    assert caught.value.failure.upstream_response_received is False
    assert caught.value.__cause__ is exc
    assert str(caught.value).startswith("upstream 'srv' ")


# --------------------------------------------------------------------------- a misbehaving server


DISCOVER = {
    "supportedVersions": [MODERN_VERSION],
    "capabilities": {"tools": {}},
    "resultType": "complete",
    "ttlMs": 0,
    "cacheScope": "private",
    "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "fake", "version": "1"}},
}
Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


@dataclass
class FakeServer:
    url: str
    answer: Handler | None = None
    requests: list[tuple[dict[str, Any], list[tuple[str, str]]]] = field(default_factory=list)


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = FakeServer("")

    async def handle(request: web.Request) -> web.StreamResponse:
        message = await request.json()
        server.requests.append((message, list(request.headers.items())))
        if message.get("method") == "server/discover":
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": DISCOVER})
        assert server.answer is not None
        return await server.answer(request, message)

    app = web.Application()
    app.router.add_post("/mcp", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server.url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    await web.SockSite(runner, sock).start()
    try:
        yield server
    finally:
        await runner.cleanup()


async def fake_upstream(upstream: Factory, fake: FakeServer, answer: Handler, **kwargs: Any) -> HttpUpstream:
    fake.answer = answer
    up = upstream(fake.url, **kwargs)
    await up.start()
    assert up.info is not None
    assert up.info.era is Era.MODERN
    return up


async def failure_of(up: HttpUpstream, bridge: Bridge) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await run(up, make_call(up, bridge, "tools/list", {}))
    return caught.value


async def test_html_500_is_an_http_error(upstream: Factory, bridge: Bridge, fake: FakeServer) -> None:
    async def answer(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        return web.Response(
            status=500, text="<html><body>internal error at /secret/path</body></html>", content_type="text/html"
        )

    error = await failure_of(await fake_upstream(upstream, fake, answer), bridge)
    assert isinstance(error, UpstreamHttpError)
    assert error.failure.source == "target_http"
    assert error.failure.upstream_status == 500
    assert error.failure.upstream_response_received is True
    assert error.resp_code == 500
    assert "secret" not in str(error)


@pytest.mark.parametrize(
    ("status", "content_type", "body", "kind"),
    [
        (200, "application/json", b"{not json", "malformed_json"),
        (200, "application/json", b'{"hello": "world"}', "invalid_protocol_response"),
        (200, "application/json", b"[1, 2]", "invalid_protocol_response"),
        (200, "application/json", b'{"jsonrpc":"2.0","id":77,"result":{}}', "invalid_protocol_response"),
        (200, "application/json", b'{"jsonrpc":"2.0","id":1,"error":{"oops":1}}', "invalid_mcp_error"),
        (200, "text/plain", b"hello", "non_protocol_response"),
        (200, "application/json", b"", "response_body_missing"),
        (302, "text/html", b"moved", "non_protocol_response"),
        (200, "text/event-stream", b"data: {broken\n\n", "malformed_json"),
    ],
)
async def test_answers_that_are_not_mcp(
    upstream: Factory, bridge: Bridge, fake: FakeServer, status: int, content_type: str, body: bytes, kind: str
) -> None:
    async def answer(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        headers = {"Location": "http://127.0.0.1:1/elsewhere"} if status == 302 else {}
        return web.Response(status=status, body=body, content_type=content_type, headers=headers)

    error = await failure_of(await fake_upstream(upstream, fake, answer), bridge)
    assert isinstance(error, UpstreamProtocolError)
    assert error.failure.source == "protocol"
    assert error.failure.transport_error_kind == kind
    assert len(fake.requests) == 2  # no redirect was followed


async def test_oversized_json_is_refused_before_reading(upstream: Factory, bridge: Bridge, fake: FakeServer) -> None:
    async def answer(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        result = {"tools": [], "padding": "x" * 5000}
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})

    error = await failure_of(await fake_upstream(upstream, fake, answer, max_bytes=2048), bridge)
    assert error.failure.transport_error_kind == "response_body_too_large"


async def test_stream_that_ends_before_the_reply(upstream: Factory, bridge: Bridge, fake: FakeServer) -> None:
    async def answer(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{}}\n\n')
        await resp.write_eof()
        return resp

    up = await fake_upstream(upstream, fake, answer)
    frames: list[object] = []

    async def collect() -> None:
        async for frame in up.exchange(make_call(up, bridge, "tools/list", {})):
            frames.append(frame)

    with pytest.raises(UpstreamUnavailable) as caught:
        await collect()
    assert len(frames) == 1
    assert isinstance(frames[0], Notify)
    assert caught.value.failure.source == "transport_closed"
    assert caught.value.failure.transport_error_kind == "unexpected_eof"


async def test_stream_skips_comments_and_foreign_responses(upstream: Factory, bridge: Bridge, fake: FakeServer) -> None:
    async def answer(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": ping\r\n\r\nid: 1\r\ndata:\r\n\r\n")
        await resp.write(b'data: {"jsonrpc":"2.0","id":"other","result":{}}\n\n')
        await resp.write(b'data: {"jsonrpc":"2.0","id":5,"method":"sampling/createMessage","params":{}}\n\n')
        await resp.write(b'data: {"jsonrpc":"2.0","id":1,"result":{"tools":[]}}\n\n')
        return resp

    up = await fake_upstream(upstream, fake, answer)
    notes, reply = await run(up, make_call(up, bridge, "tools/list", {}))
    assert [json.loads(n.message)["method"] for n in notes] == ["sampling/createMessage"]
    assert result_of(reply) == {"tools": []}


async def test_request_headers(upstream: Factory, bridge: Bridge, fake: FakeServer) -> None:
    async def answer(request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}})

    up = await fake_upstream(upstream, fake, answer, headers={"Authorization": "Bearer from-config"})
    call = make_call(
        up,
        bridge,
        "tools/call",
        {"name": "echo", "arguments": {}},
        headers={
            "Content-Type": ["text/plain"],
            "accept": ["*/*"],
            "authorization": ["Bearer from-client"],
            "Host": ["evil.example"],
            "Connection": ["X-Hop"],
            "X-Hop": ["dropped"],
            "X-Trace": ["a", "b"],
            "X-Bad": ["line\r\nInjected: 1"],
        },
    )
    await run(up, call)
    body, sent = fake.requests[-1]
    assert body["method"] == "tools/call"
    names = [name.lower() for name, _ in sent]

    def values(name: str) -> list[str]:
        return [value for key, value in sent if key.lower() == name]

    assert values("content-type") == ["application/json"]
    assert values("accept") == ["application/json, text/event-stream"]
    assert values("authorization") == ["Bearer from-config"]
    assert values("host") == [fake.url.split("/")[2]]
    assert values("x-trace") == ["a", "b"]
    assert "x-hop" not in names
    assert "x-bad" not in names
    assert "injected" not in names
    assert values("mcp-protocol-version") == [MODERN_VERSION]
    assert values("mcp-method") == ["tools/call"]
    assert values("mcp-name") == ["echo"]
    probe_body, probe_headers = fake.requests[0]
    assert probe_body["method"] == "server/discover"
    assert ("Mcp-Method", "server/discover") in probe_headers
    assert ("Authorization", "Bearer from-config") in probe_headers


# --------------------------------------------------------------------------- an upstream that is not there


async def test_unreachable_upstream_refuses_calls(upstream: Factory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    up = upstream(f"http://127.0.0.1:{port}/mcp")
    with pytest.raises(UpstreamUnavailable) as caught:
        await run(up, Call("tools/list", Raw(b"1")))
    assert caught.value.failure.source == "connect"
    with pytest.raises(UpstreamUnavailable):
        await up.end_session({})
