"""The relay: tunnel API for gateways and Streamable HTTP front door for MCP clients.

Every body the relay returns and every payload the tests post is validated
against openapi.json. Readiness comes from a recording queue backend (a
MemoryQueue that reports enqueues, takes and discards), never from sleeps.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config.secrets import Secret
from gateway.protocol.wire import TunnelResponsePayload
from gateway.relay import (
    BACKEND,
    Command,
    MemoryQueue,
    Relay,
    RelayConfig,
    RelayConfigError,
    TunnelSpec,
    build_relay_app,
    load_relay_config,
    map_status,
    new_command,
    serve_relay,
)
from gateway.relay.errors import FrameBacklog, PendingNotFound
from gateway.relay.guard import TunnelCredentials, resolve_credentials
from gateway.relay.queue import FRAME_BACKLOG
from tests.support.openapi import validate, validate_failure

TUNNEL = "tunnel_test"
KEY = "gateway-key-1"
GATEWAY = {"Authorization": f"Bearer {KEY}"}
WAIT = 30.0
"""Generous bound for anything that should happen promptly (never a timing assert)."""

LIST_TOOLS = {"jsonrpc": "2.0", "id": "rpc-1", "method": "tools/list", "params": {}}
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def relay_config(**overrides: Any) -> RelayConfig:
    tunnels = overrides.pop(
        "tunnels", {TUNNEL: TunnelSpec(gateway_key=KEY, name="Test tunnel", description="for tests")}
    )
    return RelayConfig(listen="127.0.0.1:0", tunnels=tunnels, **overrides)


class RecordingQueue(MemoryQueue):
    """A MemoryQueue that reports enqueues, poll starts and discards, so tests wait on them."""

    def __init__(self, config: RelayConfig) -> None:
        super().__init__(config.tunnels, queue_max=config.queue_max, client_seen_grace_s=config.client_seen_grace_s)
        self.enqueued: asyncio.Queue[Command] = asyncio.Queue()
        self.polls: asyncio.Queue[str] = asyncio.Queue()
        self.discarded: asyncio.Queue[str] = asyncio.Queue()

    async def enqueue(self, tunnel_id: str, command: Command) -> None:
        await super().enqueue(tunnel_id, command)
        self.enqueued.put_nowait(command)

    async def take(self, tunnel_id: str, **kwargs: Any) -> list[Command]:
        self.polls.put_nowait(tunnel_id)
        return await super().take(tunnel_id, **kwargs)

    async def discard(self, tunnel_id: str, request_id: str) -> None:
        await super().discard(tunnel_id, request_id)
        self.discarded.put_nowait(request_id)


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    header_lists: dict[str, list[str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def _reply(resp: aiohttp.ClientResponse) -> Reply:
    body = await resp.read()
    lists: dict[str, list[str]] = {}
    for name, value in resp.headers.items():
        lists.setdefault(name.lower(), []).append(value)
    return Reply(resp.status, resp.headers, lists, body)


def api_error(reply: Reply, status: int, code: str | None) -> dict[str, Any]:
    """Assert an APIErrorResponse with this status and code; returns its `error`."""
    assert reply.status == status, reply.body
    body = reply.json()
    validate("APIErrorResponse", body)
    assert body["error"]["code"] == code
    assert body["error"]["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    return dict(body["error"])


class Harness:
    """Both sides of one relay app: an MCP caller and a gateway, through one test client."""

    def __init__(self, client: TestClient[web.Request, web.Application], queue: RecordingQueue) -> None:
        self.client = client
        self.queue = queue

    # MCP caller side
    async def call(
        self,
        message: object = LIST_TOOLS,
        *,
        channel: str | None = None,
        headers: Iterable[tuple[str, str]] | Mapping[str, str] = (),
        data: bytes | None = None,
        method: str = "POST",
        tunnel: str = TUNNEL,
    ) -> Reply:
        path = f"/v1/mcp/{tunnel}" + (f"/{channel}" if channel else "")
        all_headers: list[tuple[str, str]] = [("Accept", "application/json, text/event-stream")]
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        names = {name.lower() for name, _ in pairs}
        all_headers = [h for h in all_headers if h[0].lower() not in names] + pairs
        body = None
        if method == "POST":
            body = data if data is not None else json.dumps(message).encode()
            all_headers.append(("Content-Type", "application/json"))
        async with self.client.request(method, path, data=body, headers=all_headers) as resp:
            return await _reply(resp)

    # gateway side
    async def poll(self, *, timeout_ms: int = 10_000, limit: int | None = None, channels: Iterable[str] = ()) -> Reply:
        params: list[tuple[str, str]] = [("timeout_ms", str(timeout_ms))]
        if limit is not None:
            params.append(("limit", str(limit)))
        params += [("channel", c) for c in channels]
        headers = {**GATEWAY, "X-Tunnel-Client-Instance-Id": "instance-1"}
        async with self.client.get(f"/v1/tunnels/{TUNNEL}/poll", params=params, headers=headers) as resp:
            return await _reply(resp)

    async def commands(self, **kwargs: Any) -> list[dict[str, Any]]:
        """Poll until the relay hands out commands; every body is checked against the contract."""
        reply = await self.poll(**kwargs)
        assert reply.status == 200, (reply.status, reply.body)
        body = reply.json()
        validate("PolledCommandList", body)
        commands: list[dict[str, Any]] = body["commands"]
        return commands

    async def seen(self) -> None:
        """Make the gateway count as connected: one short poll."""
        assert (await self.poll(timeout_ms=1)).status == 204
        self.queue.polls.get_nowait()

    async def respond(
        self,
        command: Mapping[str, Any],
        *,
        resp_json: object = None,
        resp_code: int = 200,
        resp_type: str = "jsonrpc_response",
        resp_headers: dict[str, list[str]] | None = None,
        shard_token: str | None = None,
        payload: dict[str, Any] | None = None,
        raw: bytes | None = None,
        check: bool = True,
    ) -> Reply:
        if payload is None:
            payload = {"request_id": command["request_id"], "resp_code": resp_code, "resp_type": resp_type}
            if "channel" in command:
                payload["channel"] = command["channel"]
            if resp_json is not None:
                payload["resp_json"] = resp_json
            if resp_headers is not None:
                payload["resp_headers"] = resp_headers
        if check:
            validate("TunnelResponsePayload", payload)
        headers = {**GATEWAY, "Content-Type": "application/json"}
        token = command.get("shard_token") if shard_token is None else shard_token
        if token:
            headers["X-Tunnel-Shard-Token"] = token
        body = raw if raw is not None else json.dumps(payload).encode()
        async with self.client.post(f"/v1/tunnels/{TUNNEL}/response", data=body, headers=headers) as resp:
            reply = await _reply(resp)
        if reply.status == 200:
            validate("TunnelResponseAck", reply.json())
            assert reply.json() == {"status": "ok"}
        return reply


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
def make_harness(aiohttp_client: Any) -> HarnessFactory:
    async def make(config: RelayConfig | None = None) -> Harness:
        config = config or relay_config()
        queue = RecordingQueue(config)
        client = await aiohttp_client(build_relay_app(config, backend=queue))
        return Harness(client, queue)

    return make


@pytest.fixture
async def harness(make_harness: HarnessFactory) -> Harness:
    return await make_harness()


def parse_sse(text: str) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        events.append((event, "\n".join(data)))
    return events


def result(rpc_id: str, value: object) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": value}


# --------------------------------------------------------------------------- tunnel API


async def test_healthz(harness: Harness) -> None:
    async with harness.client.get("/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok"


async def test_metadata(harness: Harness) -> None:
    async with harness.client.get(f"/v1/tunnels/{TUNNEL}", headers=GATEWAY) as resp:
        reply = await _reply(resp)
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
        reply = await _reply(resp)
    api_error(reply, 401, "tunnel_use_forbidden")


async def test_unknown_tunnel_is_404_to_callers(harness: Harness) -> None:
    """(The tunnel API answers an unknown tunnel 401, like a wrong key: tests/test_input_defects.py.)"""
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
        error = api_error(await _reply(resp), 400, None)
    assert error["param"] == param


async def test_poll_rejects_malformed_channel_filter(harness: Harness) -> None:
    async with harness.client.get(f"/v1/tunnels/{TUNNEL}/poll?timeout_ms=1&channel=Bad", headers=GATEWAY) as resp:
        api_error(await _reply(resp), 400, "invalid_channel_format")


async def test_huge_timeout_is_capped(make_harness: HarnessFactory) -> None:
    h = await make_harness(relay_config(poll_max_wait_ms=10))
    assert (await h.poll(timeout_ms=10**30)).status == 204


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
        api_error(await _reply(resp), 413, "request_body_too_large")

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


# --------------------------------------------------------------------------- availability and limits


async def test_no_gateway_seen_is_503_at_once(harness: Harness) -> None:
    async with asyncio.timeout(WAIT):
        reply = await harness.call()
    api_error(reply, 503, "tunnel_client_not_seen")
    assert harness.queue.enqueued.empty()


async def test_queue_full_is_429(make_harness: HarnessFactory) -> None:
    h = await make_harness(relay_config(queue_max=1))
    await h.seen()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        first = tg.create_task(h.call())
        await h.queue.enqueued.get()
        reply = await h.call({"jsonrpc": "2.0", "id": 2, "method": "ping"})
        api_error(reply, 429, "tunnel_queue_full")
        assert reply.headers["Retry-After"] == "1"
        (command,) = await h.commands(limit=25)
        await h.respond(command, resp_json=result("rpc-1", {}))
    assert first.result().status == 200


async def test_caller_timeout_is_504_and_late_answer_404(make_harness: HarnessFactory) -> None:
    h = await make_harness(relay_config(response_timeout_s=2.0))
    await h.seen()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        poller = tg.create_task(h.commands())
        await h.queue.polls.get()  # the poll waits already: it takes the command at once
        caller = tg.create_task(h.call())
    (command,) = poller.result()
    error = api_error(caller.result(), 504, None)
    assert error["message"] == "the tunnel client did not answer in time"
    api_error(await h.respond(command, resp_json=result("rpc-1", {})), 404, "pending_request_not_found")


async def test_sse_stream_ends_with_error_on_timeout(make_harness: HarnessFactory) -> None:
    h = await make_harness(relay_config(response_timeout_s=2.0))
    await h.seen()
    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        poller = tg.create_task(h.commands())
        await h.queue.polls.get()
        caller = tg.create_task(h.call())
        (command,) = await poller
        assert (await h.respond(command, resp_json=note, resp_type="jsonrpc_notify")).status == 200
    reply = caller.result()
    assert reply.status == 200
    events = [json.loads(data) for _, data in parse_sse(reply.body.decode())]
    assert events[0] == note
    assert events[-1]["id"] == "rpc-1"
    assert events[-1]["error"]["code"] == -32603


async def test_caller_disconnect_drops_queued_command(harness: Harness) -> None:
    await harness.seen()
    async with asyncio.timeout(WAIT):
        caller = asyncio.create_task(harness.call())
        command = await harness.queue.enqueued.get()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert await harness.queue.discarded.get() == command.request_id
    assert (await harness.poll(timeout_ms=1)).status == 204


async def test_poll_disconnect_loses_nothing(harness: Harness) -> None:
    async with asyncio.timeout(WAIT):
        poller = asyncio.create_task(harness.poll(timeout_ms=20_000))
        await harness.queue.polls.get()
        poller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poller
        async with asyncio.TaskGroup() as tg:
            caller = tg.create_task(harness.call())
            (command,) = await harness.commands()
            await harness.respond(command, resp_json=result("rpc-1", {}))
    assert caller.result().status == 200


async def test_limit_and_channel_filters(harness: Harness) -> None:
    await harness.seen()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        callers = {
            channel: tg.create_task(harness.call({**LIST_TOOLS, "id": channel}, channel=channel))
            for channel in ("alpha", "beta", "alpha-2")
        }
        for _ in callers:
            await harness.queue.enqueued.get()
        (beta,) = await harness.commands(limit=5, channels=["beta"])
        assert beta["channel"] == "beta"
        first_two = await harness.commands(limit=2)
        assert [c["channel"] for c in first_two] == ["alpha", "alpha-2"]
        for command in (beta, *first_two):
            await harness.respond(command, resp_json=result(command["jsonrpc"]["id"], {"c": command["channel"]}))
    for channel, task in callers.items():
        assert task.result().json()["result"] == {"c": channel}


async def test_notify_backlog_is_bounded_but_terminal_always_lands() -> None:
    queue = MemoryQueue([TUNNEL], queue_max=10, client_seen_grace_s=30.0)
    deadline = asyncio.get_running_loop().time() + WAIT
    await queue.enqueue(TUNNEL, new_command(command_type="jsonrpc", channel="main", headers={}, deadline=deadline))
    (command,) = await queue.take(TUNNEL, limit=1, timeout_s=0.001)
    note = TunnelResponsePayload(request_id=command.request_id, resp_code=200, resp_type="jsonrpc_notify")
    for _ in range(FRAME_BACKLOG):
        await queue.deliver(TUNNEL, command.shard_token, note)
    with pytest.raises(FrameBacklog):
        await queue.deliver(TUNNEL, command.shard_token, note)
    final = TunnelResponsePayload(request_id=command.request_id, resp_code=200)
    await queue.deliver(TUNNEL, command.shard_token, final)
    with pytest.raises(PendingNotFound):
        await queue.deliver(TUNNEL, command.shard_token, final)
    frames = [await queue.next_frame(TUNNEL, command.request_id) for _ in range(FRAME_BACKLOG + 1)]
    assert frames[-1].is_terminal
    await queue.discard(TUNNEL, command.request_id)
    assert (await queue.status(TUNNEL)).in_flight == 0


async def test_distinct_ids_and_shard_tokens(harness: Harness) -> None:
    commands = [new_command(command_type="jsonrpc", channel="main", headers={}, deadline=0.0) for _ in range(50)]
    assert len({c.request_id for c in commands}) == 50
    assert len({c.shard_token for c in commands}) == 50


@pytest.mark.parametrize(
    ("resp_code", "status"),
    [(100, 502), (150, 502), (200, 200), (201, 201), (202, 202), (204, 204), (203, 200), (299, 200),
     (301, 301), (304, 304), (399, 502), (400, 400), (418, 418), (429, 429), (499, 502), (500, 500),
     (503, 503), (599, 502), (600, 502), (0, 502), (-1, 502)],
)  # fmt: skip
def test_status_mapping(resp_code: int, status: int) -> None:
    assert map_status(resp_code) == status


@pytest.mark.parametrize(("resp_code", "status"), [(150, 502), (299, 200), (599, 502), (418, 418)])
async def test_status_mapping_over_http(harness: Harness, resp_code: int, status: int) -> None:
    await harness.seen()
    answer = result("rpc-1", {})
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call())
        (command,) = await harness.commands()
        await harness.respond(command, resp_json=answer, resp_code=resp_code)
    reply = caller.result()
    assert reply.status == status
    assert reply.json() == answer


async def test_synthesized_failure_passes_through(harness: Harness) -> None:
    await harness.seen()
    failure: dict[str, Any] = {
        "version": 1,
        "source": "connect",
        "transport_error_kind": "connection_refused",
        "upstream_response_received": False,
    }
    validate_failure(failure)
    data = {"tunnel_failure": failure}
    validate_failure(data)
    answer = {"jsonrpc": "2.0", "id": "rpc-1", "error": {"code": -32603, "message": "Bad Gateway", "data": data}}
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        caller = tg.create_task(harness.call())
        (command,) = await harness.commands()
        await harness.respond(command, resp_json=answer, resp_code=502)
    reply = caller.result()
    assert reply.status == 502
    assert reply.json() == answer


# --------------------------------------------------------------------------- config and lifecycle


def test_load_relay_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "client.token").write_text("client-secret\n")
    monkeypatch.setenv("RELAY_TEST_KEY", "key-from-env")
    path = tmp_path / "relay.yaml"
    path.write_text(
        "listen: '127.0.0.1:0'\n"
        "queue_max: 5\n"
        "tunnels:\n"
        "  tunnel_a:\n"
        "    gateway_key: env:RELAY_TEST_KEY\n"
        "    client_tokens: ['file:client.token', literal-token]\n"
        "    name: A\n"
    )
    config = load_relay_config(path)
    assert config.queue_max == 5
    assert config.allowed_hosts == ["127.0.0.1", "localhost", "[::1]"]
    credentials = resolve_credentials(config)
    assert credentials["tunnel_a"].gateway_key.reveal() == "key-from-env"
    assert [t.reveal() for t in credentials["tunnel_a"].client_tokens] == ["client-secret", "literal-token"]
    assert "key-from-env" not in repr(credentials)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("tunnels: {}\nqueue_max: many\n", "$.queue_max", "Expected `int`"),
        ("tunnels: {}\nqueue_max: 0\n", "$.queue_max", ">= 1"),
        ("tunnels: {t1: {gateway_key: k}, t2: {gateway_key: k, extra: 1}}\n", "$.tunnels.t2", "unknown field"),
        ("tunnels: {t1: {gateway_key: ''}}\n", "$.tunnels.t1.gateway_key", "length >= 1"),
        ("tunnels: {'bad id': {gateway_key: k}}\n", "$.tunnels.bad id", "regex"),
        ("listen: nope\ntunnels: {}\n", "$.listen", "host:port"),
        ("listen: '127.0.0.1:99999'\ntunnels: {}\n", "$.listen", "65535"),
        ("queue_max: 3\n", "$", "missing required field `tunnels`"),
        ("tunnels: [\n", "$", "not valid YAML"),
        ("", "$", "Expected `object`"),
    ],
)
def test_relay_config_errors(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    with pytest.raises(RelayConfigError) as info:
        load_relay_config(path)
    assert info.value.source == str(path)
    assert info.value.key == key
    assert expected in info.value.problem
    assert str(path) in str(info.value)


def test_missing_config_file_and_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RelayConfigError, match="cannot read"):
        load_relay_config(tmp_path / "absent.yaml")
    monkeypatch.delenv("RELAY_TEST_UNSET", raising=False)
    config = relay_config(tunnels={"t1": TunnelSpec(gateway_key="env:RELAY_TEST_UNSET")})
    with pytest.raises(RelayConfigError) as info:
        resolve_credentials(config)
    assert info.value.key == "$.tunnels.t1.gateway_key"


async def test_relay_class_serves_on_loopback() -> None:
    credentials = {TUNNEL: TunnelCredentials(Secret(KEY, "test"))}
    async with Relay(relay_config(), credentials) as relay, aiohttp.ClientSession() as session:
        assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*", relay.url)
        assert relay.url_for(TUNNEL) == f"{relay.url}/v1/mcp/{TUNNEL}"
        assert relay.url_for(TUNNEL, "files") == f"{relay.url}/v1/mcp/{TUNNEL}/files"
        async with session.get(f"{relay.url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{relay.url}/v1/tunnels/{TUNNEL}", headers=GATEWAY) as resp:
            validate("TunnelClientMetadata", await resp.json())
        async with session.post(relay.url_for(TUNNEL), json=LIST_TOOLS) as resp:
            api_error(await _reply(resp), 503, "tunnel_client_not_seen")
        async with session.get(f"{relay.url}/nowhere") as resp:
            api_error(await _reply(resp), 404, None)


async def test_close_wakes_polls_and_callers() -> None:
    config = relay_config()
    queue = RecordingQueue(config)
    relay = Relay(config, backend=queue)
    await relay.start()
    try:
        async with asyncio.timeout(WAIT), aiohttp.ClientSession() as session:

            async def poll() -> int:
                url = f"{relay.url}/v1/tunnels/{TUNNEL}/poll?timeout_ms=60000&channel=none"
                async with session.get(url, headers=GATEWAY) as resp:
                    return resp.status

            async def call() -> Reply:
                async with session.post(relay.url_for(TUNNEL), json=LIST_TOOLS) as resp:
                    return await _reply(resp)

            async with asyncio.TaskGroup() as tg:
                poller = tg.create_task(poll())
                await queue.polls.get()
                caller = tg.create_task(call())
                await queue.enqueued.get()
                await relay.close()
            assert poller.result() == 204
            api_error(caller.result(), 503, None)
    finally:
        await relay.close()


async def test_serve_relay_until_stopped() -> None:
    stop = asyncio.Event()
    ready: asyncio.Queue[str] = asyncio.Queue()
    config = relay_config(tunnels={TUNNEL: TunnelSpec(gateway_key=KEY)})
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        server = tg.create_task(serve_relay(config, stop, on_ready=ready.put_nowait))
        url = await ready.get()
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        stop.set()
    assert server.done()


async def test_client_rate_is_per_client_token() -> None:
    """`client_rate`: a token over its budget gets 429 rate_limit_exceeded; another token is unaffected."""
    spec = TunnelSpec(gateway_key="gk", client_tokens=["tok-a", "tok-b"], client_rate="1/h", client_burst=1)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with (
        Relay(RelayConfig(listen="127.0.0.1:0", tunnels={"t1": spec})) as relay,
        aiohttp.ClientSession() as http,
    ):
        url = relay.url_for("t1")

        async def call(token: str) -> tuple[int, dict[str, object]]:
            async with http.post(url, json=ping, headers={"Authorization": f"Bearer {token}"}) as resp:
                return resp.status, await resp.json()

        first = await call("tok-a")
        assert first[0] == 503  # admitted by the rate limit; no gateway is polling
        status, body = await call("tok-a")
        assert status == 429
        validate("APIErrorResponse", body)
        assert body["error"]["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert (await call("tok-b"))[0] == 503  # another token has its own budget
