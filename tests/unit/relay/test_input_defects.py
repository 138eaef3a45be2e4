"""Regression tests for the input defects of issue 14 on the relay side: a real `Relay` on loopback, spoken to with
raw HTTP/1.1 (deep JSON, malformed and incomplete requests, tunnel enumeration)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from gateway.relay import Relay
from tests.support.raw_http import Closed, connection, read_response, request
from tests.support.relay_harness import GATEWAY, KEY, TUNNEL, relay_config

pytestmark = pytest.mark.asyncio(loop_scope="module")
DEEP = b"[" * 1000 + b"]" * 1000


@pytest_asyncio.fixture(loop_scope="module")
async def relay() -> AsyncIterator[tuple[Relay, int]]:
    async with Relay(relay_config(read_timeout_s=0.5)) as relay:
        yield relay, int(relay.url.rsplit(":", 1)[1])


async def exchange(port: int, data: bytes) -> int:
    async with connection(port) as (reader, writer):
        writer.write(data)
        return (await read_response(reader)).status


async def test_relay_answers_deep_json_400_without_a_traceback(
    relay: tuple[Relay, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 7: a body nested 1,000 levels was a 500 with a logged traceback; it is a parse error.
    JSON-RPC 2.0 §5.1: -32700 for a body that is not valid JSON."""
    _, port = relay
    deep = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":%s}}' % DEEP
    mcp = f"/v1/mcp/{TUNNEL}"
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    with caplog.at_level(logging.DEBUG):
        async with connection(port) as (reader, writer):
            writer.write(request("POST", mcp, body=deep, headers=headers))
            answer = await read_response(reader)
            assert answer.status == 400
            assert json.loads(answer.body)["error"]["code"] == -32700
            writer.write(
                request(
                    "POST",
                    f"/v1/tunnels/{TUNNEL}/response",
                    body=deep,
                    headers={**GATEWAY, "X-Tunnel-Shard-Token": "s"},
                )
            )
            answer = await read_response(reader)
            assert (answer.status, json.loads(answer.body)["error"]["code"]) == (400, "invalid_json_payload")
            info = '{"version":1,"channels":' + "[" * 1500 + "]" * 1500 + "}"
            writer.write(
                request(
                    "GET",
                    f"/v1/tunnels/{TUNNEL}/poll?timeout_ms=1",
                    headers={**GATEWAY, "X-Tunnel-MCP-Server-Info": info},
                )
            )
            assert (await read_response(reader)).status == 204
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/mcp/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ],
)
async def test_malformed_http_is_400_and_logs_no_error(
    relay: tuple[Relay, int], caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    """Defect 7: every malformed request logged an ERROR traceback (a log-flooding lever)."""
    with caplog.at_level(logging.DEBUG):
        assert await exchange(relay[1], data) == 400
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


async def test_incomplete_requests_are_not_held(relay: tuple[Relay, int]) -> None:
    """Defect 7: a request whose headers or body never finish was held with no read timeout.
    The relay (read_timeout_s 0.5 here) closes a connection stuck in its headers and answers 408
    to a body that stops short. (The 30 s bound only guards a regression: it is not a speed check.)"""
    _, port = relay
    async with asyncio.timeout(30), connection(port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        with pytest.raises(Closed):
            await read_response(reader)
    async with asyncio.timeout(30), connection(port) as (reader, writer):
        shard = {**GATEWAY, "X-Tunnel-Shard-Token": "s"}
        writer.write(request("POST", f"/v1/tunnels/{TUNNEL}/response", body=b"x" * 100, headers=shard)[:-90])
        answer = await read_response(reader)
    assert (answer.status, json.loads(answer.body)["error"]["code"]) == (408, "request_timeout")


async def test_unknown_and_known_tunnels_look_alike_without_a_key(relay: tuple[Relay, int]) -> None:
    """Defect 10: without a key an unknown tunnel answered 404 and a known one 401 (enumeration)."""
    _, port = relay
    answers = []
    for tunnel in (TUNNEL, "tunnel_nope"):
        for path in ("", "/poll", "/response"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}"}):
                if tunnel == TUNNEL and headers.get("Authorization") == f"Bearer {KEY}":
                    continue
                method = "POST" if path == "/response" else "GET"
                async with connection(port) as (reader, writer):
                    writer.write(request(method, f"/v1/tunnels/{tunnel}{path}", headers=headers))
                    answer = await read_response(reader)
                answers.append((answer.status, answer.body))
    assert {status for status, _ in answers} == {401}
    assert len({body for _, body in answers}) == 1
