"""HttpUpstream against real official-SDK servers over Streamable HTTP (support/servers/http_probe_server.py, run
as separate processes on 127.0.0.1): probing, calls of both eras, sessions, cancellation, sizes."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from msgspec import Raw

from gateway.protocol.eras import MODERN_VERSION, Bridge
from gateway.protocol.errors import UpstreamProtocolError, UpstreamUnavailable
from gateway.protocol.mcp import Call, Era, Notify, Reply
from gateway.upstream.http import HttpUpstream
from gateway.upstream.http_headers import encode_header_value
from tests.support.http_upstream import PATIENCE_S, Factory, issued_sessions, make_call, run, started, tool_call
from tests.support.upstream_support import result_of, text_of

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


SERVERS = ["dual_server", "legacy_server", "json_server"]


# --------------------------------------------------------------------------- calls, both eras


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


# --------------------------------------------------------------------------- first use and shared sessions


async def test_upstream_that_was_not_up_is_probed_on_first_use(upstream: Factory, dual_server: str) -> None:
    up = upstream(f"{dual_server}/mcp")
    assert up.info is None  # start() never ran (or failed): the first call probes
    _, reply = await run(up, Call("tools/list", Raw(b"1")))
    assert up.info is not None
    assert up.info.era is Era.MODERN
    assert reply.status == 400  # answered by the server: this bare call lacks the 2026-07-28 envelope


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
