"""Wire contract: every poll body the relay sends and every response body the gateway posts
validates against `openapi.json`, and the gateway's failure answers are the contract's.

The relay runs in the test's loop with a recording middleware; the gateway is a
separate process pointed at it with `--control-plane`, as it would be at OpenAI's service.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx2
import pytest
from mcp import Client

from tests.support.harness import PYTHON, SERVERS, gateway, stdio_server
from tests.support.openapi import validate, validate_failure
from tests.support.recording_relay import KEY, TUNNEL, RelayUnderTest


def _routes(url: str) -> str:
    raw = f'{{stdio: {{command: "{PYTHON}", args: ["{SERVERS / "raw_stdio.py"}", "--malformed"]}}}}'
    return (
        f"control_plane: {{url: '{url}', tunnel_id: {TUNNEL}, api_key: env:CONTRACT_KEY}}\n"
        f"servers:\n  modern: {stdio_server()}\n  legacy: {stdio_server('--legacy')}\n  raw: {raw}\n"
        "channels:\n  main: [modern]\n  old: [legacy]\n  raw: [raw]\n"
    )


async def test_every_body_on_the_wire_validates(relay: RelayUnderTest, tmp_path: Path) -> None:
    async with gateway(_routes(relay.url), tmp_path, env={"CONTRACT_KEY": KEY}):
        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        for channel, mode in (("main", "legacy"), ("old", "auto")):
            progress.clear()
            async with Client(relay.mcp(channel), mode=mode) as client:
                await client.list_tools()

                await client.call_tool("slow_progress", {"steps": 2, "delay_ms": 5}, progress_callback=on_progress)
                assert progress == [1, 2]

        async with httpx2.AsyncClient() as http:
            # An unknown channel: 400 with a -32603 naming it.
            answer = await http.post(relay.mcp("nosuch"), json={"jsonrpc": "2.0", "id": 7, "method": "ping"})
            assert answer.status_code == 400
            error = answer.json()["error"]
            assert error["code"] == -32603
            assert "nosuch" in error["message"]

            # A server that answers with a line that is not JSON: -32603 with tunnel_failure.
            broken = await http.post(
                relay.mcp("raw"),
                json={"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "x", "arguments": {}}},
            )
            assert broken.status_code == 502
            body = broken.json()
            assert body["id"] == 8
            assert body["error"]["code"] == -32603
            failure = body["error"]["data"]["tunnel_failure"]
            assert failure == {
                "version": 1,
                "source": "protocol",
                "transport_error_kind": "malformed_json",
                "upstream_response_received": True,
            }
            validate_failure(failure)

            # Session termination of a session the channel never issued: 404.
            ended = await http.delete(relay.mcp("main"), headers={"Mcp-Session-Id": "abc"})
            assert ended.status_code == 404

    assert relay.recorded.polls, "the gateway never received a command"
    for body in relay.recorded.polls:
        validate("PolledCommandList", json.loads(body))
    resp_types = set()
    for headers, body in relay.recorded.posts:
        payload = json.loads(body)
        validate("TunnelResponsePayload", payload)
        assert headers.get("X-Tunnel-Shard-Token"), "every response POST carries the shard token"
        assert "shard_token" not in payload
        resp_types.add(payload.get("resp_type"))
    assert {"jsonrpc_response", "jsonrpc_notify", "notify_ack", "session_termination_response"} <= resp_types


async def test_oversized_client_body_is_refused(relay: RelayUnderTest, tmp_path: Path) -> None:
    async with gateway(_routes(relay.url), tmp_path, env={"CONTRACT_KEY": KEY}), httpx2.AsyncClient() as http:
        huge = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x" * (5 << 20)}},
        }
        answer = await http.post(relay.mcp("main"), json=huge)
        assert answer.status_code == 413
        validate("APIErrorResponse", answer.json())


async def test_identity_headers(relay: RelayUnderTest, tmp_path: Path) -> None:
    async with (
        gateway(_routes(relay.url), tmp_path, env={"CONTRACT_KEY": KEY}),
        Client(relay.mcp(), mode="legacy") as c,
    ):
        await c.list_tools()
    headers, _ = relay.recorded.posts[0]
    assert headers["X-Tunnel-Client-Name"] == "mcp-tunnel-gateway"
    assert headers["X-Tunnel-Client-Version"]
    assert headers["X-Tunnel-Client-Instance-Id"]
    info = json.loads(headers["X-Tunnel-MCP-Server-Info"])
    assert info == {
        "version": 1,
        "channels": [
            {"name": "main", "proc_affinity": True},
            {"name": "old", "proc_affinity": True},
            {"name": "raw", "proc_affinity": True},
        ],
    }
    assert headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("document", "key"),
    [
        ("servers:\n  a: {stdio: {command: 5}}\nchannels: {main: [a]}\n", "servers.a.stdio.command"),
        ("servers:\n  a: {stdio: {command: x}}\nchannels: {main: [b]}\n", "channels.main"),
        ("servers:\n  a: {ftp: {}}\nchannels: {main: [a]}\n", "servers.a"),
        ("servers: {}\nchannels: {Main: []}\n", "channels.Main"),
        ("servers: [\n", "(document)"),
    ],
)
async def test_broken_routing_file_exits_2_naming_file_and_key(document: str, key: str, tmp_path: Path) -> None:
    file = tmp_path / "routing.yaml"
    file.write_text(document)
    proc = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "gateway.cli", "check", "--routes", str(file), stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    message = err.decode()
    assert str(file) in message
    assert key in message


async def test_call_when_gateway_cannot_reach_server_is_answered(relay: RelayUnderTest, tmp_path: Path) -> None:
    routes = (
        f"control_plane: {{url: '{relay.url}', tunnel_id: {TUNNEL}, api_key: env:CONTRACT_KEY}}\n"
        "servers:\n  gone: {http: {url: 'http://127.0.0.1:9/mcp'}, startup_timeout_s: 1}\n"
        "channels:\n  main: [gone]\n"
    )
    waiting = r"^waiting: servers\.gone \(connect refused 127\.0\.0\.1:9\)$"
    async with gateway(routes, tmp_path, env={"CONTRACT_KEY": KEY}, ready=waiting), httpx2.AsyncClient() as http:
        answer = await http.post(relay.mcp(), json={"jsonrpc": "2.0", "id": "x", "method": "tools/list"})
        assert answer.status_code == 502
        error = answer.json()["error"]
        assert error["code"] == -32603
        assert error["message"] == "Bad Gateway"
        assert error["data"]["tunnel_failure"] == {
            "version": 1,
            "source": "connect",
            "transport_error_kind": "connection_refused",
            "upstream_response_received": False,
        }
