"""HttpUpstream against real official-SDK servers over Streamable HTTP, and a tiny misbehaving server.

The SDK servers run as separate processes on 127.0.0.1 (tests/servers/http_probe_server.py,
ready when they print their port). Failure modes the SDK will not produce (HTML 500s,
garbage JSON, truncated streams) come from an aiohttp server in the test's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from msgspec import UNSET, Raw

from gateway.config.routing import HttpSpec
from gateway.protocol.eras import EMPTY_OBJECT, MODERN_VERSION, Bridge
from gateway.protocol.errors import UpstreamError, UpstreamHttpError, UpstreamProtocolError, UpstreamUnavailable
from gateway.protocol.mcp import Call, Era, Notify, Reply
from gateway.protocol.wire import Codec, Headers
from gateway.upstream.http import HttpUpstream, encode_header_value, map_aiohttp_errors
from tests.support.harness import SERVERS
from tests.support.upstream_support import collect

SERVER = SERVERS / "http_probe_server.py"
MAX_BYTES = 4 * 1024 * 1024
PATIENCE_S = 30.0
"""Upper bound for things that should happen promptly; only reached when something is broken."""


# --------------------------------------------------------------------------- SDK server processes


@contextlib.contextmanager
def sdk_server(*flags: str) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), *flags], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("PORT "), f"test server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=PATIENCE_S)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def dual_server() -> Iterator[str]:
    """Dual-era SDK server (2026-07-28 and the handshake era), SSE answers."""
    with sdk_server() as base:
        yield base


@pytest.fixture(scope="module")
def legacy_server() -> Iterator[str]:
    """Handshake-era only: a 2026-07-28 request gets HTTP 400 and a JSON-RPC error."""
    with sdk_server("--legacy-only") as base:
        yield base


@pytest.fixture(scope="module")
def json_server() -> Iterator[str]:
    """Dual-era SDK server answering application/json instead of SSE."""
    with sdk_server("--json-response") as base:
        yield base


# --------------------------------------------------------------------------- gateway side


@pytest.fixture
def bridge() -> Bridge:
    return Bridge(Codec())


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # limit=1: a connection the transport failed to release would block the next request.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        yield session


Factory = Callable[..., HttpUpstream]


@pytest.fixture
async def upstream(http: aiohttp.ClientSession, bridge: Bridge) -> AsyncIterator[Factory]:
    made: list[HttpUpstream] = []

    def make(
        url: str,
        *,
        max_bytes: int = MAX_BYTES,
        headers: dict[str, str] | None = None,
        ready_timeout_s: float = PATIENCE_S,
        request_timeout_s: float | None = None,
    ) -> HttpUpstream:
        up = HttpUpstream(
            "srv",
            HttpSpec(url=url),
            session=http,
            bridge=bridge,
            max_message_bytes=max_bytes,
            extra_headers=headers or {},
            ready_timeout_s=ready_timeout_s,
            request_timeout_s=request_timeout_s,
        )
        made.append(up)
        return up

    yield make
    for up in made:
        await up.close()


async def started(make: Factory, base: str, **kwargs: Any) -> HttpUpstream:
    up = make(f"{base}/mcp", **kwargs)
    await up.start()
    return up


def make_call(
    up: HttpUpstream,
    bridge: Bridge,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    id: object = 1,
    headers: Headers | None = None,
    own_session: bool = True,
) -> Call:
    """A call as the channel layer would build it for this server's era."""
    assert up.info is not None
    raw = UNSET if params is None else Raw(json.dumps(params).encode())
    if up.info.era is Era.MODERN and id is not None:
        raw = bridge.modern_params(raw, EMPTY_OBJECT, bridge.client_info)
    call_id = None if id is None else Raw(json.dumps(id).encode())
    return Call(method, call_id, raw, headers or {}, own_session=own_session)


def tool_call(up: HttpUpstream, bridge: Bridge, name: str, progress: str | None = None, **args: Any) -> Call:
    params: dict[str, Any] = {"name": name, "arguments": args}
    if progress is not None:
        params["_meta"] = {"progressToken": progress}
    return make_call(up, bridge, "tools/call", params)


async def run(up: HttpUpstream, call: Call) -> tuple[list[Notify], Reply]:
    return await collect(up.exchange(call))


def result_of(reply: Reply) -> Any:
    message = json.loads(reply.body)
    assert "error" not in message, message
    return message["result"]


def text_of(reply: Reply) -> str:
    text: str = result_of(reply)["content"][0]["text"]
    return text


async def issued_sessions(http: aiohttp.ClientSession, base: str) -> list[str]:
    async with http.get(f"{base}/test/sessions") as resp:
        sessions: list[str] = await resp.json()
        return sessions


# --------------------------------------------------------------------------- probing


async def test_modern_probe(upstream: Factory, dual_server: str) -> None:
    up = await started(upstream, dual_server)
    assert up.info is not None
    assert up.info.era is Era.MODERN
    assert up.info.protocol_version == MODERN_VERSION
    assert json.loads(bytes(up.info.server_info))["name"] == "http-probe-server"
    assert "tools" in json.loads(bytes(up.info.capabilities))
    assert not up.holds_sessions
    assert up.transport == "http"


async def test_legacy_probe_opens_the_gateways_own_session(
    upstream: Factory, http: aiohttp.ClientSession, legacy_server: str
) -> None:
    before = await issued_sessions(http, legacy_server)
    up = await started(upstream, legacy_server)
    assert up.info is not None
    assert up.info.era is Era.LEGACY
    assert up.info.protocol_version == "2025-11-25"
    assert json.loads(bytes(up.info.server_info))["name"] == "http-probe-server"
    assert up.holds_sessions
    assert len(await issued_sessions(http, legacy_server)) == len(before) + 1


async def test_start_can_be_called_again(upstream: Factory, dual_server: str) -> None:
    up = await started(upstream, dual_server)
    await up.start()
    assert up.info is not None
    assert up.info.era is Era.MODERN


# --------------------------------------------------------------------------- calls, both eras

SERVERS = ["dual_server", "legacy_server", "json_server"]


@pytest.mark.parametrize("server", SERVERS)
async def test_tools_list(upstream: Factory, bridge: Bridge, server: str, request: pytest.FixtureRequest) -> None:
    up = await started(upstream, request.getfixturevalue(server))
    notes, reply = await run(up, make_call(up, bridge, "tools/list", {}, id="list-1"))
    assert notes == []
    assert reply.status == 200
    message = json.loads(reply.body)
    assert message["id"] == "list-1"
    names = {tool["name"] for tool in message["result"]["tools"]}
    assert {"echo", "progress", "block", "big"} <= names


@pytest.mark.parametrize("server", SERVERS)
async def test_tools_call(upstream: Factory, bridge: Bridge, server: str, request: pytest.FixtureRequest) -> None:
    up = await started(upstream, request.getfixturevalue(server))
    notes, reply = await run(up, tool_call(up, bridge, "echo", text="hello"))
    assert notes == []
    assert reply.status == 200
    assert text_of(reply) == "hello"
    (content_type,) = (v for k, v in reply.headers.items() if k.lower() == "content-type")
    if server == "json_server":
        assert content_type == ["application/json"]


async def test_own_session_overrides_a_client_session_header(
    upstream: Factory, bridge: Bridge, legacy_server: str
) -> None:
    up = await started(upstream, legacy_server)
    stray = {"mcp-session-id": ["not-a-session"], "mcp-protocol-version": ["2024-11-05"]}
    call = make_call(up, bridge, "tools/call", {"name": "echo", "arguments": {"text": "own"}}, headers=stray)
    _, reply = await run(up, call)
    assert text_of(reply) == "own"


@pytest.mark.parametrize("server", ["dual_server", "legacy_server"])
async def test_progress_notifications_then_the_reply(
    upstream: Factory, bridge: Bridge, server: str, request: pytest.FixtureRequest
) -> None:
    up = await started(upstream, request.getfixturevalue(server))
    notes, reply = await run(up, tool_call(up, bridge, "progress", progress="tok-1", steps=3))
    progress = [json.loads(note.message) for note in notes]
    assert [p["method"] for p in progress] == ["notifications/progress"] * 3
    assert [p["params"]["progress"] for p in progress] == [1, 2, 3]
    assert {p["params"]["progressToken"] for p in progress} == {"tok-1"}
    assert reply.status == 200
    assert text_of(reply) == "done after 3"
    assert any(k.lower() == "content-type" and v[0].startswith("text/event-stream") for k, v in reply.headers.items())


@pytest.mark.parametrize("server", ["dual_server", "legacy_server"])
async def test_notification_is_acknowledged_with_202(
    upstream: Factory, bridge: Bridge, server: str, request: pytest.FixtureRequest
) -> None:
    up = await started(upstream, request.getfixturevalue(server))
    call = make_call(up, bridge, "notifications/cancelled", {"requestId": 424242}, id=None)
    notes, reply = await run(up, call)
    assert notes == []
    assert reply == Reply(202, b"", reply.headers)


async def test_json_rpc_error_with_http_status_passes_through(
    upstream: Factory, bridge: Bridge, dual_server: str
) -> None:
    up = await started(upstream, dual_server)
    _, reply = await run(up, make_call(up, bridge, "no/such-method", {}, id=9))
    assert reply.status == 404
    message = json.loads(reply.body)
    assert message["id"] == 9
    assert message["error"]["code"] == -32601


async def test_modern_names_the_target_in_mcp_name(upstream: Factory, bridge: Bridge, dual_server: str) -> None:
    # The SDK server rejects a tools/call whose Mcp-Name disagrees with the body (-32020):
    # a non-ASCII tool name only gets through when the header is base64-encoded correctly.
    up = await started(upstream, dual_server)
    _, reply = await run(up, tool_call(up, bridge, "échø"))
    assert reply.status == 200  # not 400 / -32020 "mcp-name header does not match"
    result = result_of(reply)
    assert result["isError"] is True
    assert result["content"][0]["text"] == "Unknown tool: échø"
    assert encode_header_value("échø") == "=?base64?w6ljaMO4?="
    assert encode_header_value("echo") == "echo"


# --------------------------------------------------------------------------- sessions


async def test_expired_own_session_is_renewed_transparently(
    upstream: Factory, bridge: Bridge, http: aiohttp.ClientSession, legacy_server: str
) -> None:
    before = set(await issued_sessions(http, legacy_server))
    up = await started(upstream, legacy_server)
    ours = set(await issued_sessions(http, legacy_server)) - before
    assert len(ours) == 1
    headers = {"Mcp-Session-Id": ours.pop(), "MCP-Protocol-Version": "2025-11-25"}
    async with http.delete(f"{legacy_server}/mcp", headers=headers) as resp:  # the server forgets us
        assert resp.status == 200
    _, reply = await run(up, tool_call(up, bridge, "echo", text="again"))
    assert text_of(reply) == "again"
    renewed = set(await issued_sessions(http, legacy_server)) - before
    assert len(renewed) == 2
    _, reply = await run(up, tool_call(up, bridge, "echo", text="still"))
    assert text_of(reply) == "still"
    assert len(set(await issued_sessions(http, legacy_server)) - before) == 2


async def test_concurrent_calls_share_one_renewal(
    upstream: Factory, bridge: Bridge, http: aiohttp.ClientSession, legacy_server: str
) -> None:
    before = set(await issued_sessions(http, legacy_server))
    up = await started(upstream, legacy_server)
    (ours,) = set(await issued_sessions(http, legacy_server)) - before
    headers = {"Mcp-Session-Id": ours, "MCP-Protocol-Version": "2025-11-25"}
    async with http.delete(f"{legacy_server}/mcp", headers=headers) as resp:
        assert resp.status == 200
    calls = [run(up, tool_call(up, bridge, "echo", text=str(i))) for i in range(4)]
    answers = await asyncio.gather(*calls)
    assert [text_of(reply) for _, reply in answers] == ["0", "1", "2", "3"]
    assert len(set(await issued_sessions(http, legacy_server)) - before) == 2


async def test_passthrough_session_and_end_session(
    upstream: Factory, bridge: Bridge, http: aiohttp.ClientSession, legacy_server: str
) -> None:
    up = await started(upstream, legacy_server)
    init = make_call(
        up,
        bridge,
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "client", "version": "1"}},
        own_session=False,
    )
    _, reply = await run(up, init)
    assert result_of(reply)["protocolVersion"] == "2025-11-25"
    session = next(v[0] for k, v in reply.headers.items() if k.lower() == "mcp-session-id")
    client = {"Mcp-Session-Id": [session], "MCP-Protocol-Version": ["2025-11-25"]}
    initialized = make_call(up, bridge, "notifications/initialized", None, id=None, headers=client, own_session=False)
    _, ack = await run(up, initialized)
    assert ack.status == 202
    echo = make_call(
        up,
        bridge,
        "tools/call",
        {"name": "echo", "arguments": {"text": "mine"}},
        headers=client,
        own_session=False,
    )
    _, reply = await run(up, echo)
    assert text_of(reply) == "mine"

    ended = await up.end_session(client)
    assert ended.status == 200
    assert set(ended.headers) <= {"Content-Type", "Mcp-Session-Id"}
    again = await up.end_session(client)
    assert again.status == 404
    _, gone = await run(up, echo)  # the client's session is over: the server's 404 passes through
    assert gone.status == 404
    assert json.loads(gone.body)["error"]["message"] == "Session not found"
    _, ours = await run(up, tool_call(up, bridge, "echo", text="ours"))  # the gateway's own session lives on
    assert text_of(ours) == "ours"


async def test_end_session_without_sessions(upstream: Factory, legacy_server: str, dual_server: str) -> None:
    modern = await started(upstream, dual_server)
    assert (await modern.end_session({"Mcp-Session-Id": ["abc"]})).status == 405
    legacy = await started(upstream, legacy_server)
    assert (await legacy.end_session({})).status == 400


async def test_close_deletes_the_gateways_own_session(
    upstream: Factory, http: aiohttp.ClientSession, legacy_server: str
) -> None:
    before = set(await issued_sessions(http, legacy_server))
    up = await started(upstream, legacy_server)
    (ours,) = set(await issued_sessions(http, legacy_server)) - before
    await up.close()
    assert up.info is None
    headers = {"Mcp-Session-Id": ours, "MCP-Protocol-Version": "2025-11-25"}
    async with http.delete(f"{legacy_server}/mcp", headers=headers) as resp:
        assert resp.status == 404  # already ended by close()
    await up.close()  # idempotent


# --------------------------------------------------------------------------- cancellation


async def counters(up: HttpUpstream, bridge: Bridge) -> dict[str, int]:
    _, reply = await run(up, tool_call(up, bridge, "counters"))
    stats: dict[str, int] = json.loads(text_of(reply))
    return stats


async def wait_for_cancelled(up: HttpUpstream, bridge: Bridge, at_least: int) -> None:
    """The server answers once it saw that many `block` calls cancelled (no polling)."""
    async with asyncio.timeout(PATIENCE_S):
        _, reply = await run(up, tool_call(up, bridge, "wait_cancelled", at_least=at_least))
    assert json.loads(text_of(reply))["cancelled"] >= at_least


@pytest.mark.parametrize("server", ["dual_server", "legacy_server"])
async def test_cancelling_an_inflight_exchange_releases_the_connection(
    upstream: Factory, bridge: Bridge, server: str, request: pytest.FixtureRequest
) -> None:
    up = await started(upstream, request.getfixturevalue(server))
    before = await counters(up, bridge)
    first_frame = asyncio.Event()

    async def consume() -> None:
        async for frame in up.exchange(tool_call(up, bridge, "block", progress="b")):
            assert isinstance(frame, Notify)
            first_frame.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(PATIENCE_S):
        await first_frame.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with asyncio.timeout(PATIENCE_S):  # the session allows one connection: it must be free again
        _, reply = await run(up, tool_call(up, bridge, "echo", text="next"))
    assert text_of(reply) == "next"
    # legacy: told with notifications/cancelled; 2026-07-28: the closed stream is the cancellation
    await wait_for_cancelled(up, bridge, before["cancelled"] + 1)


async def test_closing_the_exchange_early_cancels_the_legacy_request(
    upstream: Factory, bridge: Bridge, legacy_server: str
) -> None:
    up = await started(upstream, legacy_server)
    before = await counters(up, bridge)
    async with contextlib.aclosing(up.exchange(tool_call(up, bridge, "block", progress="b"))) as frames:
        async for frame in frames:
            assert isinstance(frame, Notify)
            break
    await wait_for_cancelled(up, bridge, before["cancelled"] + 1)
    _, reply = await run(up, tool_call(up, bridge, "echo", text="after"))
    assert text_of(reply) == "after"


@pytest.mark.parametrize("server", ["dual_server", "legacy_server"])
async def test_request_timeout_fails_the_call_and_aborts_the_request(
    upstream: Factory, bridge: Bridge, server: str, request: pytest.FixtureRequest
) -> None:
    """`request_timeout_s`: past it the call fails with the contract's `timeout` failure and the
    request is abandoned as a cancelled one is (MCP 2025-11-25, Cancellation; on 2026-07-28 the
    closed stream is the cancellation), so the one connection allowed is free again."""
    up = await started(upstream, request.getfixturevalue(server), request_timeout_s=0.3)
    before = await counters(up, bridge)
    with pytest.raises(UpstreamUnavailable) as failed:
        await run(up, tool_call(up, bridge, "block", progress="b"))
    assert failed.value.failure.source == "timeout"
    assert failed.value.failure.transport_error_kind == "timeout"
    assert failed.value.failure.upstream_response_received is False
    await wait_for_cancelled(up, bridge, before["cancelled"] + 1)
    _, reply = await run(up, tool_call(up, bridge, "echo", text="after"))
    assert text_of(reply) == "after"


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("server", ["dual_server", "legacy_server", "json_server"])
async def test_oversized_answer_is_a_protocol_error(
    upstream: Factory, bridge: Bridge, server: str, request: pytest.FixtureRequest
) -> None:
    up = await started(upstream, request.getfixturevalue(server), max_bytes=2048)
    _, small = await run(up, tool_call(up, bridge, "big", size=100))
    assert text_of(small) == "x" * 100
    with pytest.raises(UpstreamProtocolError) as caught:
        await run(up, tool_call(up, bridge, "big", size=10_000))
    assert caught.value.failure.source == "protocol"
    assert caught.value.failure.transport_error_kind == "response_body_too_large"
    _, reply = await run(up, tool_call(up, bridge, "echo", text="fine"))
    assert text_of(reply) == "fine"


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


async def test_upstream_that_was_not_up_is_probed_on_first_use(upstream: Factory, dual_server: str) -> None:
    up = upstream(f"{dual_server}/mcp")
    assert up.info is None  # start() never ran (or failed): the first call probes
    _, reply = await run(up, Call("tools/list", Raw(b"1")))
    assert up.info is not None
    assert up.info.era is Era.MODERN
    assert reply.status == 400  # answered by the server: this bare call lacks the 2026-07-28 envelope


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


async def test_clients_with_the_same_ids_share_the_gateway_session_safely(
    upstream: Factory, bridge: Bridge, legacy_server: str
) -> None:
    """Many clients' requests ride the gateway's own session: equal client ids must not collide."""
    up = await started(upstream, legacy_server)

    async def call(text: str) -> None:
        _, reply = await run(up, tool_call(up, bridge, "echo", text=text))
        assert json.loads(reply.body)["id"] == 1  # the client's id comes back
        assert text_of(reply) == text

    await asyncio.gather(*(call(f"client-{i}") for i in range(20)))
