"""Both sides of one relay app in a test: an MCP caller and a gateway through one aiohttp test client, over a
recording queue backend (readiness from what it reports, never from sleeps). Every body the relay returns and
every payload posted is validated against openapi.json."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.relay import Command, MemoryQueue, RelayConfig, TunnelSpec
from tests.support.openapi import validate

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


class HeadOf:
    """A request head (`gateway.relay.exchange.RequestHead`) with these header fields, for calling a
    handler core's helpers directly."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self.headers = CIMultiDictProxy(CIMultiDict(fields))
        self.method = "POST"
        self.match_info: dict[str, str] = {}
        self.query = CIMultiDictProxy(CIMultiDict[str]())


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


async def read_reply(resp: aiohttp.ClientResponse) -> Reply:
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
            return await read_reply(resp)

    # gateway side
    async def poll(self, *, timeout_ms: int = 10_000, limit: int | None = None, channels: Iterable[str] = ()) -> Reply:
        params: list[tuple[str, str]] = [("timeout_ms", str(timeout_ms))]
        if limit is not None:
            params.append(("limit", str(limit)))
        params += [("channel", c) for c in channels]
        headers = {**GATEWAY, "X-Tunnel-Client-Instance-Id": "instance-1"}
        async with self.client.get(f"/v1/tunnels/{TUNNEL}/poll", params=params, headers=headers) as resp:
            return await read_reply(resp)

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
            reply = await read_reply(resp)
        if reply.status == 200:
            validate("TunnelResponseAck", reply.json())
            assert reply.json() == {"status": "ok"}
        return reply


HarnessFactory = Callable[..., Awaitable[Harness]]


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
