"""The relay's tunnel API for gateways: metadata, authentication, poll parameters; response POST errors and body
limits; invalid JSON-RPC bodies from callers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from gateway.relay import BACKEND
from tests.support.openapi import validate
from tests.support.relay_harness import (
    GATEWAY,
    KEY,
    LIST_TOOLS,
    TUNNEL,
    WAIT,
    Harness,
    HarnessFactory,
    api_error,
    read_reply,
    relay_config,
    result,
)

# --------------------------------------------------------------------------- tunnel API


async def test_healthz(harness: Harness) -> None:
    async with harness.client.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"


async def test_metadata(harness: Harness) -> None:
    async with harness.client.get(f"/v1/tunnels/{TUNNEL}", headers=GATEWAY) as resp:
        reply = await read_reply(resp)
    assert reply.status == 200
    validate("TunnelClientMetadata", reply.json())
    assert reply.json() == {"id": TUNNEL, "name": "Test tunnel", "description": "for tests"}


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-key", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer ", "Bearer é"]
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", ""), ("GET", "/poll?timeout_ms=1"), ("POST", "/response")],
)
async def test_gateway_auth_failures(harness: Harness, authorization: str | None, method: str, path: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    headers["X-Tunnel-Shard-Token"] = "x"
    async with harness.client.request(method, f"/v1/tunnels/{TUNNEL}{path}", headers=headers) as resp:
        reply = await read_reply(resp)
    api_error(reply, 401, "tunnel_use_forbidden")


async def test_unknown_tunnel_is_404_to_callers(harness: Harness) -> None:
    """(The tunnel API answers an unknown tunnel 401, like a wrong key: tests/unit/relay/test_input_defects.py.)"""
    reply = await harness.call(tunnel="tunnel_nope")
    api_error(reply, 404, None)


async def test_poll_204_after_short_timeout(harness: Harness) -> None:
    reply = await harness.poll(timeout_ms=20)
    assert reply.status == 204
    assert reply.body == b""
    status = await harness.client.app[BACKEND].status(TUNNEL)
    assert status.client_seen
    assert status.last_instance_id == "instance-1"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=26", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=", "limit"),
        ("limit=1.5", "limit"),
        ("limit=1&limit=2", "limit"),
        ("timeout_ms=0", "timeout_ms"),
        ("timeout_ms=x", "timeout_ms"),
        ("timeout_ms=-5", "timeout_ms"),
    ],
)
async def test_poll_parameter_validation(harness: Harness, query: str, param: str) -> None:
    async with harness.client.get(f"/v1/tunnels/{TUNNEL}/poll?{query}", headers=GATEWAY) as resp:
        error = api_error(await read_reply(resp), 400, None)
    assert error["param"] == param


async def test_poll_rejects_malformed_channel_filter(harness: Harness) -> None:
    async with harness.client.get(f"/v1/tunnels/{TUNNEL}/poll?timeout_ms=1&channel=Bad", headers=GATEWAY) as resp:
        api_error(await read_reply(resp), 400, "invalid_channel_format")


async def test_huge_timeout_is_capped(make_harness: HarnessFactory) -> None:
    h = await make_harness(relay_config(poll_max_wait_ms=10))
    assert (await h.poll(timeout_ms=10**30)).status == 204


# --------------------------------------------------------------------------- response POST errors


async def test_response_errors(harness: Harness) -> None:
    await harness.seen()
    unknown = {"request_id": "req_unknown", "shard_token": "whatever"}
    api_error(await harness.respond(unknown, resp_json=result("1", {})), 404, "pending_request_not_found")
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call())
        (command,) = await harness.commands()
        answer = result("rpc-1", {})
        api_error(await harness.respond(command, resp_json=answer, shard_token="wrong"), 401, "tunnel_request_mismatch")
        error = api_error(await harness.respond(command, resp_json=answer, shard_token=""), 400, None)
        assert error["param"] == "X-Tunnel-Shard-Token"
        base = {"request_id": command["request_id"], "resp_code": 200}
        bad_bodies = [
            (b"not json", None),
            (b"[1, 2]", None),
            (json.dumps({"request_id": command["request_id"]}).encode(), None),
            (json.dumps({**base, "resp_code": "200"}).encode(), None),
            (json.dumps({**base, "extra": 1}).encode(), "extra"),
            (json.dumps({**base, "resp_type": "x"}).encode(), "resp_type"),
            (json.dumps({**base, "resp_json": [1]}).encode(), "resp_json"),
        ]
        for raw, param in bad_bodies:
            error = api_error(await harness.respond(command, raw=raw, check=False), 400, "invalid_json_payload")
            assert error["param"] == param
        bad_channel = {"request_id": command["request_id"], "resp_code": 200, "channel": "NOPE"}
        api_error(await harness.respond(command, payload=bad_channel, check=False), 400, "invalid_channel_format")
        # the contract allows `channel: null` and `resp_json: null`
        payload = {"request_id": command["request_id"], "resp_code": 204, "channel": None, "resp_json": None}
        assert (await harness.respond(command, payload=payload)).status == 200
    reply = caller.result()
    assert reply.status == 204
    assert reply.body == b""


async def test_oversized_bodies_are_413(make_harness: HarnessFactory) -> None:
    h = await make_harness(relay_config(max_body_bytes=1024))
    await h.seen()
    big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"blob": "x" * 2000}}
    api_error(await h.call(big), 413, "request_body_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * 512
        yield json.dumps(LIST_TOOLS).encode()

    async with h.client.post(f"/v1/mcp/{TUNNEL}", data=chunks(), headers={"Content-Type": "application/json"}) as resp:
        api_error(await read_reply(resp), 413, "request_body_too_large")

    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(h.call())
        (command,) = await h.commands()
        huge = result("rpc-1", {"blob": "y" * 2000})
        api_error(await h.respond(command, resp_json=huge), 413, "request_body_too_large")
        assert (await h.respond(command, resp_json=result("rpc-1", {}))).status == 200
    assert caller.result().status == 200


@pytest.mark.parametrize(
    ("data", "rpc_code"),
    [
        (b"not json", -32700),
        (b"", -32700),
        (b'{"jsonrpc": "2.0", "method": ', -32700),
        (b"[1, 2]", -32600),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', -32600),
        (b'{"foo": 1}', -32600),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', -32600),
    ],
)
async def test_invalid_jsonrpc_bodies(harness: Harness, data: bytes, rpc_code: int) -> None:
    await harness.seen()
    reply = await harness.call(data=data)
    assert reply.status == 400
    body = reply.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert body["error"]["code"] == rpc_code
    assert isinstance(body["error"]["message"], str)
