"""Rate limits, concurrency caps and backpressure through the real gateway process: 429 and the JSON-RPC error on
the wire, a cap held at the server, overload left queued at the relay with flat memory, waiting bounded by the
command's deadline."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx2
from mcp import Client

from tests.support.harness import gateway, stdio_server
from tests.support.recording_relay import KEY, TUNNEL, recording_relay


async def test_rejection_on_the_wire_and_concurrency_cap_at_the_server(tmp_path: Path) -> None:
    routes = (
        "relay: {listen: '127.0.0.1:0'}\n"
        "limits:\n  rules:\n"
        "    - {scope: tool, match: echo, rate: 1/h, burst: 1}\n"
        "    - {scope: server, concurrency: 2, policy: wait}\n"
        f"servers:\n  a: {stdio_server()}\nchannels:\n  main: [a]\n"
    )
    async with gateway(routes, tmp_path) as gw:
        async with Client(gw.urls["main"], mode="legacy") as client:
            await client.call_tool("echo", {"text": "first"})
            await asyncio.gather(*(client.call_tool("track", {"ms": 30}) for _ in range(12)))
            assert (await client.call_tool("peak", {})).structured_content == {"result": 2}
        async with httpx2.AsyncClient() as http:
            call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
            answer = await http.post(gw.urls["main"], json=call)
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert answer.json()["id"] == 9
    assert error["code"] == -32029
    assert error["data"]["retry_after_ms"] > 0
    assert "echo" in error["message"]


async def test_overload_stays_queued_at_the_control_plane_and_nothing_is_lost(tmp_path: Path) -> None:
    """Offered load far above capacity: the gateway asks only for free slots, its memory stays flat,
    and every caller gets an answer (served, or refused by the relay's queue cap)."""
    routes = (
        "relay: {listen: '127.0.0.1:0'}\n"
        "gateway: {max_inflight: 4}\n"
        f"servers:\n  a: {stdio_server()}\nchannels:\n  main: [a]\n"
    )
    async with gateway(routes, tmp_path) as gw, httpx2.AsyncClient(timeout=120) as http:
        pid = gw.process.proc.pid
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "sleep_ms", "arguments": {"ms": 5}},
        }
        warm = await http.post(gw.urls["main"], json=call)
        assert warm.status_code == 200
        before = _rss_kib(pid)
        limits = httpx2.Limits(max_connections=400)
        async with httpx2.AsyncClient(timeout=120, limits=limits) as burst:
            answers = await asyncio.gather(*(burst.post(gw.urls["main"], json=call) for _ in range(600)))
        after = _rss_kib(pid)
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 429}, set(statuses)
    assert statuses.count(200) >= 100
    assert all(json.loads(a.content).get("id", 1) == 1 for a in answers if a.status_code == 200)
    # Flat memory: the queue is at the relay, not in the gateway (bound: 30 MiB of growth).
    assert after - before < 30 * 1024, (before, after)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_rss_probe_works_here() -> None:
    assert _rss_kib(os.getpid()) > 0


async def test_waiting_never_outlives_the_command_deadline(tmp_path: Path) -> None:
    """A request waiting on a limit when its deadline passes is dropped: no late 429, no response at all."""
    async with recording_relay(response_timeout_s=1.5) as relay:
        routes = (
            f"control_plane: {{url: '{relay.url}', tunnel_id: {TUNNEL}, api_key: env:LIMITS_KEY}}\n"
            "limits: {policy: wait, max_wait_s: 60, rules: [{scope: tool, match: echo, rate: 1/h, burst: 1}]}\n"
            f"servers:\n  a: {stdio_server()}\nchannels:\n  main: [a]\n"
        )
        async with gateway(routes, tmp_path, env={"LIMITS_KEY": KEY}), httpx2.AsyncClient(timeout=30) as http:
            url = relay.mcp()
            first = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
            assert (await http.post(url, json=first)).status_code == 200
            second = {**first, "id": 2}
            answer = await http.post(url, json=second)
            assert answer.status_code == 504  # the relay gave up on the caller at the deadline
            # Still nothing posted for it afterwards (the wait ended with the deadline, not after max_wait_s).
            posts = len(relay.recorded.posts)
            ping = {
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": 1, "b": 2}},
            }
            assert (await http.post(url, json=ping)).status_code == 200
        bodies = [json.loads(body) for _, body in relay.recorded.posts]
    assert len(relay.recorded.posts) == posts + 1
    answered_ids = {body["resp_json"]["id"] for body in bodies if "resp_json" in body}
    assert 2 not in answered_ids
