"""The relay's Streamable HTTP front door for MCP clients: round trips through a gateway's poll (JSON and SSE,
notifications, DELETE), then admission and the headers forwarded either way."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from gateway.relay import TunnelSpec
from tests.support.relay_harness import (
    KEY,
    LIST_TOOLS,
    RFC3339_UTC,
    TUNNEL,
    WAIT,
    Harness,
    HarnessFactory,
    api_error,
    parse_sse,
    relay_config,
    result,
)

# --------------------------------------------------------------------------- round trips


async def test_request_round_trip_json(harness: Harness) -> None:
    await harness.seen()
    headers = [("Mcp-Session-Id", "sess-1"), ("Mcp-Protocol-Version", "2025-06-18"), ("Mcp-Method", "tools/list")]
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call(LIST_TOOLS, headers=headers))
        (command,) = await harness.commands(limit=5)
        assert command["command_type"] == "jsonrpc"
        assert command["channel"] == "main"
        assert command["request_id"].startswith("req_")
        assert RFC3339_UTC.fullmatch(command["created_at"])
        assert re.fullmatch(r"[1-9][0-9]*ms", command["response_timeout"])
        assert int(command["response_timeout"][:-2]) <= 120_000
        assert command["jsonrpc"] == LIST_TOOLS
        assert command["headers"]["Mcp-Session-Id"] == ["sess-1"]
        assert command["headers"]["Mcp-Protocol-Version"] == ["2025-06-18"]
        assert command["headers"]["Mcp-Method"] == ["tools/list"]
        answer = result("rpc-1", {"tools": [{"name": "echo"}]})
        ack = await harness.respond(
            command,
            resp_json=answer,
            resp_headers={
                "Content-Type": ["application/json"],
                "Mcp-Session-Id": ["sess-1"],
                "Set-Cookie": ["not-forwarded=1"],
                "Content-Length": ["999"],
            },
        )
        assert ack.status == 200
    reply = caller.result()
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers["Mcp-Session-Id"] == "sess-1"
    assert "set-cookie" not in reply.header_lists
    assert reply.json() == answer
    # the pending entry is gone: a second terminal frame is not found
    again = await harness.respond(command, resp_json=answer)
    api_error(again, 404, "pending_request_not_found")
    # and nothing is handed out twice
    assert (await harness.poll(timeout_ms=1)).status == 204


async def test_resp_json_bytes_pass_through_exactly(harness: Harness) -> None:
    await harness.seen()
    raw_answer = b'{"jsonrpc":"2.0","id":"rpc-1","result":{"z":1,"a":[1.50,  2]}}'
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call())
        (command,) = await harness.commands()
        raw = (
            b'{"request_id":"' + command["request_id"].encode() + b'","resp_code":200,"resp_json":' + raw_answer + b"}"
        )
        assert (await harness.respond(command, raw=raw, check=False)).status == 200
    assert caller.result().body == raw_answer


async def test_sse_stream_with_notify_frames(harness: Harness) -> None:
    await harness.seen()
    progress = [{"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": n}} for n in (1, 2)]
    answer = result("rpc-1", {"content": [{"type": "text", "text": "done\nwith newline"}]})
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call())
        (command,) = await harness.commands()
        for note in progress:
            reply = await harness.respond(
                command,
                resp_json=note,
                resp_type="jsonrpc_notify",
                resp_headers={"Mcp-Session-Id": ["sess-9"], "Content-Type": ["text/event-stream"]},
            )
            assert reply.status == 200
        # a pretty-printed payload still makes a well-formed event
        pretty = json.dumps(answer, indent=2).encode()
        raw = b'{"request_id":"' + command["request_id"].encode() + b'","resp_code":200,"resp_json":' + pretty + b"}"
        assert (await harness.respond(command, raw=raw, check=False)).status == 200
    reply = caller.result()
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.headers["Mcp-Session-Id"] == "sess-9"
    events = parse_sse(reply.body.decode())
    assert [event for event, _ in events] == ["message"] * 3
    assert [json.loads(data) for _, data in events] == [*progress, answer]


async def test_notify_frames_dropped_when_caller_rejects_sse(harness: Harness) -> None:
    await harness.seen()
    answer = result("rpc-1", {"ok": True})
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call(headers={"Accept": "application/json"}))
        (command,) = await harness.commands()
        note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}
        assert (await harness.respond(command, resp_json=note, resp_type="jsonrpc_notify")).status == 200
        assert (await harness.respond(command, resp_json=answer)).status == 200
    reply = caller.result()
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.json() == answer


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 7, "result": {}},  # a client's answer to a server request
    ],
)
async def test_message_without_request_gets_202(harness: Harness, message: dict[str, Any]) -> None:
    await harness.seen()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call(message))
        (command,) = await harness.commands()
        assert command["jsonrpc"] == message
        ack = await harness.respond(command, resp_code=202, resp_type="notify_ack")
        assert ack.status == 200
    reply = caller.result()
    assert reply.status == 202
    assert reply.body == b""
    api_error(await harness.respond(command, resp_code=202, resp_type="notify_ack"), 404, "pending_request_not_found")


async def test_notification_error_status_passes_through(harness: Harness) -> None:
    await harness.seen()
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no session"}}
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        (command,) = await harness.commands()
        await harness.respond(command, resp_code=404, resp_type="notify_ack", resp_json=error)
    reply = caller.result()
    assert reply.status == 404
    assert reply.json() == error


async def test_delete_becomes_session_termination(harness: Harness) -> None:
    await harness.seen()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call(method="DELETE", headers={"Mcp-Session-Id": "sess-3"}))
        (command,) = await harness.commands()
        assert command["command_type"] == "session_termination"
        assert "jsonrpc" not in command
        assert command["headers"]["Mcp-Session-Id"] == ["sess-3"]
        ack = await harness.respond(command, resp_code=204, resp_type="session_termination_response")
        assert ack.status == 200
    reply = caller.result()
    assert reply.status == 204
    assert reply.body == b""


async def test_delete_requires_session_id(harness: Harness) -> None:
    await harness.seen()
    error = api_error(await harness.call(method="DELETE"), 400, "missing_mcp_session_id")
    assert error["param"] == "Mcp-Session-Id"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH"])
async def test_other_methods_are_405(harness: Harness, method: str) -> None:
    reply = await harness.call(method=method)
    api_error(reply, 405, None)
    assert reply.headers["Allow"] == "POST, DELETE"


async def test_get_is_admitted_first(harness: Harness) -> None:
    api_error(await harness.call(method="GET", headers={"Host": "evil.example"}), 403, None)


# --------------------------------------------------------------------------- admission and headers


async def test_client_tokens_required_and_not_forwarded(make_harness: HarnessFactory) -> None:
    spec = TunnelSpec(gateway_key=KEY, client_tokens=["token-a", "token-b"])
    h = await make_harness(relay_config(tunnels={TUNNEL: spec}))
    await h.seen()
    for auth in (None, "Bearer nope", "token-b", "Bearer token-bb"):
        reply = await h.call(headers={"Authorization": auth} if auth else {})
        api_error(reply, 401, "tunnel_use_forbidden")
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(h.call(headers={"Authorization": "Bearer token-b"}))
        (command,) = await h.commands()
        assert "authorization" not in {name.lower() for name in command["headers"]}
        await h.respond(command, resp_json=result("rpc-1", {}))
    assert caller.result().status == 200


async def test_authorization_passes_through_without_client_tokens(harness: Harness) -> None:
    await harness.seen()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call(headers={"Authorization": "Bearer upstream-token"}))
        (command,) = await harness.commands()
        assert command["headers"]["Authorization"] == ["Bearer upstream-token"]
        await harness.respond(command, resp_json=result("rpc-1", {}))
    assert caller.result().status == 200


async def test_hop_by_hop_removed_and_multi_values_kept(harness: Harness) -> None:
    await harness.seen()
    headers = [
        ("Connection", "keep-alive, X-Hop-Named"),
        ("X-Hop-Named", "drop me"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic abc"),
        ("Upgrade", "h2c"),
        ("X-Multi", "one"),
        ("X-Multi", "two"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("Mcp-Name", "echo"),
    ]
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call(headers=headers))
        (command,) = await harness.commands()
        forwarded = {name.lower(): values for name, values in command["headers"].items()}
        for dropped in ("host", "content-length", "connection", "x-hop-named", "keep-alive", "te"):
            assert dropped not in forwarded
        assert "proxy-authorization" not in forwarded
        assert "upgrade" not in forwarded
        assert forwarded["x-multi"] == ["one", "two"]
        assert forwarded["traceparent"] == ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
        assert forwarded["mcp-name"] == ["echo"]
        assert forwarded["accept"] == ["application/json, text/event-stream"]
        assert forwarded["content-type"] == ["application/json"]
        await harness.respond(
            command,
            resp_json=result("rpc-1", {}),
            resp_headers={"WWW-Authenticate": ["Bearer a", "Basic b"], "Connection": ["close"]},
        )
    reply = caller.result()
    assert reply.status == 200
    assert reply.header_lists["www-authenticate"] == ["Bearer a", "Basic b"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 403),
        ({"Host": "evil.example:8780"}, 403),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Origin": "http://localhost.evil.example:80"}, 403),
        ({"Host": "localhost:1234"}, 503),
        ({"Host": "[::1]:1234"}, 503),
        ({"Origin": "http://localhost:3000"}, 503),
        ({"Origin": "https://127.0.0.1"}, 503),
        ({"Origin": "http://[::1]:8080"}, 503),
    ],
)
async def test_host_and_origin_checks(harness: Harness, headers: dict[str, str], status: int) -> None:
    reply = await harness.call(headers=headers)
    api_error(reply, status, "tunnel_client_not_seen" if status == 503 else None)


async def test_configured_hosts_and_origins(make_harness: HarnessFactory) -> None:
    h = await make_harness(relay_config(allowed_hosts=["mcp.example.com"], allowed_origins=["https://app.example"]))
    api_error(await h.call(), 403, None)  # 127.0.0.1 is no longer listed
    ok = {"Host": "MCP.example.com:443", "Origin": "https://app.example"}
    api_error(await h.call(headers=ok), 503, "tunnel_client_not_seen")
    api_error(await h.call(headers={**ok, "Origin": "https://app.example.evil"}), 403, None)
    anywhere = await make_harness(relay_config(allowed_hosts=["*"]))
    api_error(await anywhere.call(headers={"Host": "whatever.example"}), 503, "tunnel_client_not_seen")


@pytest.mark.parametrize("channel", ["Upper", "-lead", "x" * 65, "a.b", "_x"])
async def test_channel_format(harness: Harness, channel: str) -> None:
    await harness.seen()
    api_error(await harness.call(channel=channel), 400, "invalid_channel_format")
