"""Helpers of the queue-backend and Redis relay tests: the tunnel they share, commands and frames made by hand,
relay replicas on one Redis, and a plain v1 gateway (`Poller`) that counts every command it receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from gateway.protocol.wire import TunnelResponsePayload
from gateway.relay import MemoryQueue, QueueBackend, Relay, RelayConfig, TunnelSpec, new_command
from gateway.relay.config import RedisBackend
from gateway.relay.queue import Command
from gateway.relay.redis_queue import RedisQueue
from tests.support.openapi import validate
from tests.support.redis_server import RedisServer

TUNNEL = "tunnel_r"
KEY = "gateway-key-r"
GATEWAY = {"Authorization": f"Bearer {KEY}"}
WAIT = 60.0
"""Generous bound for anything that should happen promptly (never a timing assert)."""
AFFINE_INFO = json.dumps(
    {"version": 1, "channels": [{"name": "files", "proc_affinity": True}, {"name": "main"}]}, separators=(",", ":")
)


def redis_spec(server: RedisServer, **overrides: Any) -> RedisBackend:
    settings: dict[str, Any] = {"retry_s": 10.0, "replica_ttl_s": 30.0, "recheck_s": 0.1, **overrides}
    return RedisBackend(url=server.url, key_prefix="test", **settings)


def relay_config(server: RedisServer, *, spec: RedisBackend | None = None, **overrides: Any) -> RelayConfig:
    tunnels = {TUNNEL: TunnelSpec(gateway_key=KEY, name="Redis tunnel", description="replicated")}
    return RelayConfig(listen="127.0.0.1:0", tunnels=tunnels, backend=spec or redis_spec(server), **overrides)


def command(
    channel: str = "main", *, session: str | None = None, timeout: float = WAIT, kind: str = "jsonrpc"
) -> Command:
    headers = {"Mcp-Session-Id": [session]} if session else {}
    deadline = asyncio.get_running_loop().time() + timeout
    body = msgspec.Raw(b'{"jsonrpc":"2.0","id":1,"method":"ping"}') if kind == "jsonrpc" else msgspec.UNSET
    return new_command(command_type=kind, channel=channel, headers=headers, deadline=deadline, jsonrpc=body)


def frame(
    cmd: Command, *, kind: str = "jsonrpc_response", headers: dict[str, list[str]] | None = None
) -> TunnelResponsePayload:
    payload = TunnelResponsePayload(request_id=cmd.request_id, resp_code=200, resp_type=kind)
    if headers is not None:
        payload = msgspec.structs.replace(payload, resp_headers=headers)
    return payload


async def take(backend: QueueBackend, instance: str = "gw-1", **kwargs: Any) -> list[Command]:
    kwargs.setdefault("limit", 25)
    kwargs.setdefault("timeout_s", 0.05)
    return await backend.take(TUNNEL, instance_id=instance, **kwargs)


async def owner(backend: QueueBackend, channel: str, session: str) -> str | None:
    assert isinstance(backend, MemoryQueue | RedisQueue)
    return await backend.session_owner(TUNNEL, channel, session)


async def polls_waiting(queue: QueueBackend, tunnel: str = TUNNEL) -> bool:
    return (await queue.status(tunnel)).polls_waiting > 0


async def no_polls_waiting(queue: QueueBackend) -> bool:
    return (await queue.status(TUNNEL)).polls_waiting == 0


@contextlib.asynccontextmanager
async def replicas(config: RelayConfig, count: int) -> AsyncIterator[list[Relay]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Relay(config)) for _ in range(count)]


def answer_for(cmd: dict[str, Any], instance: str) -> dict[str, Any]:
    """What the test gateway posts for a command: an echo naming the instance that ran it."""
    payload: dict[str, Any] = {"request_id": cmd["request_id"], "channel": cmd.get("channel", "main")}
    if cmd.get("command_type") == "session_termination":
        return {**payload, "resp_code": 204, "resp_type": "session_termination_response"}
    rpc = cmd["jsonrpc"]
    if "id" not in rpc:
        return {**payload, "resp_code": 202, "resp_type": "notify_ack"}
    payload.update(resp_code=200, resp_json={"jsonrpc": "2.0", "id": rpc["id"], "result": {"by": instance}})
    if rpc.get("method") == "initialize":
        payload["resp_headers"] = {"Mcp-Session-Id": [f"sess-{rpc['id']}"]}
    return payload


@dataclass
class Poller:
    """A plain v1 gateway: polls the relays in turn, answers through another relay, counts everything."""

    http: aiohttp.ClientSession
    relays: list[str]
    instance: str
    server_info: str | None = None
    crash_after: int | None = None
    """Die on the poll that brings more than this many commands, answering none past the limit."""
    tunnel: str = TUNNEL
    received: list[dict[str, Any]] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    abandoned: set[str] = field(default_factory=set)
    """JSON-RPC ids received but certainly never answered (past `crash_after`)."""

    async def run(self) -> None:
        turn = random.randrange(len(self.relays))
        headers = {**GATEWAY, "X-Tunnel-Client-Instance-Id": self.instance}
        if self.server_info:
            headers["X-Tunnel-MCP-Server-Info"] = self.server_info
        async with asyncio.TaskGroup() as answers:
            while True:
                base = self.relays[turn % len(self.relays)]
                turn += 1
                url = f"{base}/v1/tunnels/{self.tunnel}/poll"
                try:
                    async with self.http.get(
                        url, params={"limit": "25", "timeout_ms": "2000"}, headers=headers
                    ) as resp:
                        if resp.status != 200:
                            await resp.read()
                            continue
                        body = await resp.json()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    continue  # that replica is gone or the connection broke: try the next one, as a gateway would
                validate("PolledCommandList", body)
                for cmd in body["commands"]:
                    self.received.append(cmd)
                    if self.crash_after is not None and len(self.received) > self.crash_after:
                        self.abandoned.add(cmd["jsonrpc"]["id"])
                    else:
                        answers.create_task(self.respond(cmd, turn))
                if self.abandoned:
                    raise _Crashed()  # dies with this batch (and any answers still being posted) unanswered

    async def respond(self, cmd: dict[str, Any], turn: int) -> None:
        payload = answer_for(cmd, self.instance)
        headers = {**GATEWAY, "X-Tunnel-Shard-Token": cmd["shard_token"]}
        for attempt in range(len(self.relays) * 3):
            base = self.relays[(turn + attempt) % len(self.relays)]
            try:
                async with self.http.post(
                    f"{base}/v1/tunnels/{self.tunnel}/response", json=payload, headers=headers
                ) as resp:
                    await resp.read()
                    if resp.status in (200, 404):
                        if resp.status == 200:
                            self.answered.add(cmd["request_id"])
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue


class _Crashed(Exception):
    pass


async def run_poller(poller: Poller) -> None:
    """Run a poller; its deliberate crash ends it quietly, anything else fails the test at once."""
    try:
        await poller.run()
    except* _Crashed:
        pass


@dataclass
class Outcome:
    relay: int
    rpc_id: str
    status: int | None = None
    body: Any = None
    error: str | None = None


async def call(
    http: aiohttp.ClientSession,
    url: str,
    relay: int,
    rpc_id: str,
    *,
    method: str = "tools/call",
    headers: dict[str, str] | None = None,
) -> Outcome:
    message = {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": {}}
    try:
        async with http.post(url, json=message, headers={"Accept": "application/json", **(headers or {})}) as resp:
            body = await resp.read()
            return Outcome(relay, rpc_id, resp.status, json.loads(body) if body else None)
    except aiohttp.ClientError as exc:
        return Outcome(relay, rpc_id, error=type(exc).__name__)


def connector() -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=0)
