"""Cancellation through the tunnel: a 2026-07-28 client that closes its SSE stream cancels the call.

MCP 2026-07-28 `basic/patterns/cancellation` ("Transport-Specific Cancellation"): over Streamable
HTTP, closing the response stream is the cancellation; on stdio the client sends
`notifications/cancelled`. The relay turns a caller's disconnect into the tunnel's signal (the
next response POST for the command answers 404, with either queue backend), and the gateway
cancels the upstream call on that 404 and posts nothing more for the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiohttp
import httpx2
import pytest

from gateway.relay import Relay, RelayConfig, TunnelSpec
from gateway.relay.config import MemoryBackend, RedisBackend
from tests.support.harness import gateway, http_server, modern_call, stdio_server
from tests.support.recording_relay import KEY, TUNNEL, RelayUnderTest
from tests.support.redis_server import redis_server
from tests.support.waiting import until

WAIT = 60.0
"""Generous bound for what should happen promptly (never a timing assert)."""


async def step_count(http: httpx2.AsyncClient, url: str) -> dict[str, int]:
    body, headers = modern_call(900, "step_count", {})
    answer = await http.post(url, json=body, headers={**headers, "Accept": "application/json"})
    while answer.status_code == 503:  # the gateway has not polled yet (tunnel_client_not_seen): bounded by until()
        answer = await http.post(url, json=body, headers={**headers, "Accept": "application/json"})
    assert answer.status_code == 200, answer.text
    counts: dict[str, int] = json.loads(answer.json()["result"]["content"][0]["text"])
    return counts


async def start_and_leave(http: httpx2.AsyncClient, url: str) -> None:
    """Start a long `count_steps` call, read its first progress event, then close the stream."""
    body, headers = modern_call(1, "count_steps", {"steps": 100_000, "delay_ms": 10}, progressToken="steps")
    async with http.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data:") and "notifications/progress" in line:
                break  # leaving the block closes the connection: the 2026-07-28 cancellation


def _servers(kind: str, http_url: str | None) -> str:
    if kind.startswith("stdio"):
        return f"  srv: {stdio_server(*(('--legacy',) if kind == 'stdio-2025-11-25' else ()))}\n"
    return f"  srv: {{http: {{url: '{http_url}'}}}}\n"


@pytest.mark.parametrize("kind", ["stdio-2026-07-28", "stdio-2025-11-25", "http-2026-07-28", "http-2025-11-25"])
async def test_closing_the_stream_cancels_the_upstream_call(relay: RelayUnderTest, tmp_path: Path, kind: str) -> None:
    """MCP 2026-07-28 basic/patterns/cancellation, "Transport-Specific Cancellation" and "Behavior
    Requirements": the caller closing its SSE stream stops the work on the server (stdio and
    handshake-era HTTP servers are sent `notifications/cancelled`, a 2026-07-28 HTTP server sees its
    stream closed); the step count stops growing and no answer is posted for the cancelled command."""
    legacy = ("--legacy",) if kind == "http-2025-11-25" else ()
    async with (
        http_server(*legacy) if kind.startswith("http") else contextlib.nullcontext() as http_url,
        httpx2.AsyncClient(timeout=WAIT) as http,
    ):
        routes = (
            f"control_plane: {{url: '{relay.url}', tunnel_id: {TUNNEL}, api_key: env:CANCEL_KEY}}\n"
            f"servers:\n{_servers(kind, http_url)}channels:\n  main: [srv]\n"
        )
        async with gateway(routes, tmp_path, env={"CANCEL_KEY": KEY}):
            url = relay.mcp()
            assert (await step_count(http, url))["steps"] == 0
            await start_and_leave(http, url)

            async def cancelled() -> bool:
                return (await step_count(http, url))["cancelled"] >= 1

            await until(cancelled, WAIT)
            stopped = (await step_count(http, url))["steps"]
            for _ in range(3):  # more round trips through the same server: the count stays where it stopped
                assert (await step_count(http, url))["steps"] == stopped
    calls = [_command_of(body) for body in relay.recorded.polls]
    (request_id,) = {rid for found in calls for rid, name in found if name == "count_steps"}
    posted = [json.loads(body) for _, body in relay.recorded.posts]
    mine = [frame["resp_type"] for frame in posted if frame["request_id"] == request_id]
    assert mine, "the call's progress never reached the relay"
    assert set(mine) == {"jsonrpc_notify"}, f"a late answer was posted: {mine}"


def _command_of(poll_body: bytes) -> list[tuple[str, str | None]]:
    found = []
    for command in json.loads(poll_body)["commands"]:
        message = command.get("jsonrpc") or {}
        found.append((command["request_id"], (message.get("params") or {}).get("name")))
    return found


# ----------------------------------------------------------------------------- the relay's side


async def _polling(http: aiohttp.ClientSession, relay: Relay) -> bool:
    """Whether a gateway poll waits at the relay now (its /metrics `relay_polls_waiting`)."""
    async with http.get(f"{relay.url}/metrics") as resp:
        text = await resp.text()
    line = next(x for x in text.splitlines() if x.startswith(f'relay_polls_waiting{{tunnel="{TUNNEL}"}}'))
    return float(line.rsplit(" ", 1)[1]) > 0


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_disconnected_caller_makes_the_next_frame_404(tmp_path: Path, backend: str) -> None:
    """MCP 2026-07-28 basic/transports/streamable-http ("Cancellation": a client disconnect is the
    cancellation of that request) as the tunnel carries it: once the caller left, the relay answers
    the gateway's next response POST for the command with 404, with the memory and the Redis backend."""
    async with redis_server(tmp_path) if backend == "redis" else contextlib.nullcontext() as redis:
        spec = MemoryBackend() if redis is None else RedisBackend(url=redis.url, key_prefix="cancel", recheck_s=0.1)
        config = RelayConfig(listen="127.0.0.1:0", tunnels={TUNNEL: TunnelSpec(gateway_key=KEY)}, backend=spec)
        auth = {"Authorization": f"Bearer {KEY}"}
        async with Relay(config) as relay, aiohttp.ClientSession() as http:
            tunnel = f"{relay.url}/v1/tunnels/{TUNNEL}"
            poll = asyncio.create_task(http.get(f"{tunnel}/poll", params={"timeout_ms": "30000"}, headers=auth))
            while not await _polling(http, relay):  # noqa: ASYNC110 - the state lives in the relay, read over HTTP
                await asyncio.sleep(0.01)  # a caller before any poll would get 503 tunnel_client_not_seen
            body, headers = modern_call(1, "count_steps", {})
            calling = asyncio.create_task(http.post(relay.url_for(TUNNEL), json=body, headers=headers))
            polled = await poll
            while polled.status == 204:  # an empty poll (the command was not there yet): ask again
                polled = await http.get(f"{tunnel}/poll", params={"timeout_ms": "30000"}, headers=auth)
            async with polled:
                (command,) = (await polled.json())["commands"]
            shard = {**auth, "X-Tunnel-Shard-Token": command["shard_token"]}

            async def notify() -> int:
                note = {
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": 1, "progress": 1},
                }
                frame = {
                    "request_id": command["request_id"],
                    "channel": command["channel"],
                    "resp_code": 200,
                    "resp_type": "jsonrpc_notify",
                    "resp_json": note,
                }
                async with http.post(f"{tunnel}/response", json=frame, headers=shard) as resp:
                    return resp.status

            assert await notify() == 200
            caller = await calling
            assert caller.headers["Content-Type"] == "text/event-stream"
            await caller.content.readuntil(b"\n\n")  # the caller has its first event, then leaves
            caller.close()

            async def gone() -> bool:
                return await notify() == 404

            await until(gone, WAIT)
