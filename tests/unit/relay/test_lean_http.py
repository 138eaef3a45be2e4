"""The relay's lean HTTP layer (gateway/relay/lean_http.py) on real loopback sockets: a `Relay` serves its
hot routes itself and hands other requests' connections to aiohttp. Raw HTTP/1.1 where framing is the point
(RFC 9112: pipelining §9.3.2, chunked bodies §7.1, message framing §6), an aiohttp client elsewhere."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gateway.relay import BACKEND, Relay, RelayConfig
from gateway.relay.app import LEAN
from gateway.relay.lean_http import LeanServer, route
from tests.support.raw_http import Closed, connection, read_response, request
from tests.support.relay_harness import (
    GATEWAY,
    TUNNEL,
    WAIT,
    Harness,
    RecordingQueue,
    api_error,
    parse_sse,
    relay_config,
    result,
)
from tests.support.waiting import until

pytestmark = pytest.mark.asyncio(loop_scope="module")
POLL = f"/v1/tunnels/{TUNNEL}/poll"
RESPONSE = f"/v1/tunnels/{TUNNEL}/response"
MCP = f"/v1/mcp/{TUNNEL}"
SHARD = {**GATEWAY, "X-Tunnel-Shard-Token": "s"}
LIMIT = 4096


def _config(**overrides: Any) -> RelayConfig:
    return relay_config(read_timeout_s=2.0, max_body_bytes=LIMIT, **overrides)


@pytest_asyncio.fixture(loop_scope="module")
async def relay() -> AsyncIterator[tuple[Relay, int]]:
    async with Relay(_config()) as relay:
        yield relay, int(relay.url.rsplit(":", 1)[1])


async def _statuses(port: int, data: bytes, count: int) -> list[tuple[int, bytes]]:
    async with asyncio.timeout(WAIT), connection(port) as (reader, writer):
        writer.write(data)
        answers = [await read_response(reader) for _ in range(count)]
    return [(answer.status, answer.body) for answer in answers]


async def test_the_lean_routes_are_exactly_the_hot_ones() -> None:
    assert route("GET", "/v1/tunnels/t1/poll") is not None
    assert route("POST", "/v1/tunnels/t1/response") is not None
    assert route("POST", "/v1/mcp/t1") is not None
    assert route("POST", "/v1/mcp/t1/ch") is not None
    for method, path in [
        ("POST", "/v1/tunnels/t1/poll"),
        ("GET", "/v1/tunnels/t1/response"),
        ("GET", "/v1/tunnels/t1"),
        ("DELETE", "/v1/mcp/t1"),
        ("GET", "/v1/mcp/t1"),
        ("POST", "/v1/mcp/t1/"),
        ("POST", "/v1/mcp/t%31"),
        ("POST", "/v1/mcp/t1/../x"),
        ("POST", "/v1/mcp/{t}"),
        ("GET", "/healthz"),
    ]:
        assert route(method, path) is None, (method, path)


async def test_pipelined_requests_are_answered_in_order(relay: tuple[Relay, int]) -> None:
    """RFC 9112 §9.3.2: responses to pipelined requests in the order the requests came, across a handover."""
    _, port = relay
    data = (
        request("GET", f"{POLL}?timeout_ms=1", headers=GATEWAY)
        + request("POST", RESPONSE, body=b"not json", headers=SHARD)
        + request("GET", f"{POLL}?timeout_ms=1&limit=0", headers=GATEWAY)
        + request("GET", "/healthz")
        + request("GET", f"{POLL}?timeout_ms=1", headers=GATEWAY)
    )
    answers = await _statuses(port, data, 5)
    assert [status for status, _ in answers] == [204, 400, 400, 200, 204]
    assert json.loads(answers[1][1])["error"]["code"] == "invalid_json_payload"
    assert json.loads(answers[2][1])["error"]["param"] == "limit"
    assert answers[3][1] == b"ok"


async def test_a_connection_is_handed_to_aiohttp_mid_way(relay: tuple[Relay, int]) -> None:
    """A poll, then a route the lean layer does not serve on the same connection, then more polls."""
    _, port = relay
    async with asyncio.timeout(WAIT), connection(port) as (reader, writer):
        writer.write(request("GET", f"{POLL}?timeout_ms=1", headers=GATEWAY))
        assert (await read_response(reader)).status == 204
        writer.write(request("GET", "/healthz"))
        answer = await read_response(reader)
        assert (answer.status, answer.body) == (200, b"ok")
        writer.write(request("GET", f"{POLL}?timeout_ms=1", headers=GATEWAY))
        assert (await read_response(reader)).status == 204
        writer.write(request("GET", f"/v1/tunnels/{TUNNEL}", headers=GATEWAY))
        assert json.loads((await read_response(reader)).body)["id"] == TUNNEL


@pytest.mark.parametrize(
    "data",
    [
        f"GET {POLL} HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".encode(),
        f"POST {RESPONSE} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".encode(),
        f"POST {RESPONSE} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".encode(),
        f"POST {RESPONSE} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n".encode(),
        f"GET {POLL} HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n".encode(),
        b"GET /v1/tunnels/\x00/poll HTTP/1.1\r\nHost: x\r\n\r\n",
        f"POST {MCP} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
        f"GET {POLL} HTTP/9.9\r\n\r\n".encode(),
    ],
)
async def test_malformed_requests_are_400_and_closed_without_a_traceback(
    relay: tuple[Relay, int], caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    """After a request the lean layer served, a malformed one on the same connection: 400, then closed."""
    _, port = relay
    with caplog.at_level(logging.DEBUG):
        async with asyncio.timeout(WAIT), connection(port) as (reader, writer):
            writer.write(request("GET", f"{POLL}?timeout_ms=1", headers=GATEWAY) + data)
            assert (await read_response(reader)).status == 204
            assert (await read_response(reader)).status == 400
            with pytest.raises(Closed):
                await read_response(reader)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


@pytest.mark.parametrize("path", [RESPONSE, MCP])
async def test_an_oversized_body_is_413_with_the_relays_error(relay: tuple[Relay, int], path: str) -> None:
    _, port = relay
    headers = {**SHARD, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with asyncio.timeout(WAIT), connection(port) as (reader, writer):
        writer.write(request("POST", path, body=b"x" * (LIMIT + 1), headers=headers))
        answer = await read_response(reader)
    body = json.loads(answer.body)
    assert (answer.status, body["error"]["code"]) == (413, "request_body_too_large")
    assert str(LIMIT) in body["error"]["message"]


async def test_a_chunked_body_is_served(relay: tuple[Relay, int]) -> None:
    """RFC 9112 §7.1: a chunked request body is read whole (by aiohttp, to which the connection goes)."""
    _, port = relay
    payload = json.dumps({"request_id": "req_nope", "resp_code": 200, "resp_type": "jsonrpc_response"}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:10], payload[10:])) + b"0\r\n\r\n"
    head = f"POST {RESPONSE} HTTP/1.1\r\nHost: x\r\nAuthorization: {GATEWAY['Authorization']}\r\n"
    head += "X-Tunnel-Shard-Token: s\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with asyncio.timeout(WAIT), connection(port) as (reader, writer):
        writer.write(head.encode() + chunks)
        answer = await read_response(reader)
    assert (answer.status, json.loads(answer.body)["error"]["code"]) == (404, "pending_request_not_found")


async def test_a_body_split_across_packets_is_read_whole(relay: tuple[Relay, int]) -> None:
    _, port = relay
    data = request("POST", RESPONSE, body=b'{"request_id":"req_nope","resp_code":200}', headers=SHARD)
    async with asyncio.timeout(WAIT), connection(port) as (reader, writer):
        for index in range(0, len(data), 7):
            writer.write(data[index : index + 7])
            await writer.drain()
            await asyncio.sleep(0)
        answer = await read_response(reader)
    assert (answer.status, json.loads(answer.body)["error"]["code"]) == (404, "pending_request_not_found")


async def test_a_disconnected_long_poll_is_freed_at_once() -> None:
    """The poller leaves mid-poll: its poll stops waiting (not at its timeout), so it takes no command."""
    config = _config(poll_max_wait_ms=3_600_000)
    queue = RecordingQueue(config)
    async with Relay(config, backend=queue) as relay:
        port = int(relay.url.rsplit(":", 1)[1])
        async with asyncio.timeout(WAIT):
            async with connection(port) as (_, writer):
                writer.write(request("GET", f"{POLL}?timeout_ms=3600000", headers=GATEWAY))
                await queue.polls.get()
                assert (await relay.app[BACKEND].status(TUNNEL)).polls_waiting == 1

            async def freed() -> bool:
                return (await relay.app[BACKEND].status(TUNNEL)).polls_waiting == 0

            await until(freed)  # long before the poll's hour: it was cancelled when its connection closed


@pytest_asyncio.fixture(loop_scope="module")
async def lean() -> AsyncIterator[tuple[Harness, LeanServer]]:
    """The relay unit tests' Harness, spoken to over loopback sockets through the lean layer."""
    config = _config()
    queue = RecordingQueue(config)
    async with Relay(config, backend=queue) as relay, aiohttp.ClientSession(base_url=relay.url) as session:
        yield Harness(session, queue), relay.app[LEAN]  # type: ignore[arg-type]


async def test_a_call_crosses_the_lean_routes(lean: tuple[Harness, LeanServer]) -> None:
    lean, server = lean
    served = server.served
    await lean.seen()
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
        caller = tasks.create_task(lean.call(headers={"Accept": "application/json"}))
        (command,) = await lean.commands()
        answer = result("rpc-1", {"tools": []})
        reply = await lean.respond(command, resp_json=answer, resp_headers={"Mcp-Session-Id": ["s-1"]})
        assert reply.status == 200
    reply = caller.result()
    assert (reply.status, reply.json(), reply.headers["Mcp-Session-Id"]) == (200, answer, "s-1")
    assert server.served - served == 4  # the short poll, the call, its poll, the response POST
    assert reply.headers["Content-Type"] == "application/json"


async def test_a_header_that_would_split_the_answer_is_a_500(
    lean: tuple[Harness, LeanServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A frame's header value holding CR LF (RFC 9110 §5.5: not a valid field value) never reaches the
    caller as a header of its own: the caller gets the relay's 500, as aiohttp answers it."""
    lean, _ = lean
    await lean.seen()
    with caplog.at_level(logging.ERROR):
        async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
            caller = tasks.create_task(lean.call(headers={"Accept": "application/json"}))
            (command,) = await lean.commands()
            answer = result("rpc-1", {"tools": []})
            headers = {"Mcp-Session-Id": ["s-1\r\nX-Injected: yes"]}
            assert (await lean.respond(command, resp_json=answer, resp_headers=headers)).status == 200
    reply = caller.result()
    api_error(reply, 500, None)
    assert "X-Injected" not in reply.headers
    assert [r.exc_info is not None for r in caplog.records if r.name == "gateway.relay"] == [True]


async def test_notify_frames_stream_as_sse(lean: tuple[Harness, LeanServer]) -> None:
    """MCP 2025-06-18 Transports, Streamable HTTP: a request's answer may be an SSE stream of its
    notifications and then its response."""
    lean, server = lean
    served = server.served
    await lean.seen()
    note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
    answer = result("rpc-1", {"content": []})
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
        caller = tasks.create_task(lean.call())
        (command,) = await lean.commands()
        assert (await lean.respond(command, resp_json=note, resp_type="jsonrpc_notify")).status == 200
        assert (await lean.respond(command, resp_json=answer)).status == 200
    reply = caller.result()
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/event-stream"
    assert [json.loads(data) for _, data in parse_sse(reply.body.decode())] == [note, answer]
    # the connection carried on after the stream: the next call on the same session works
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
        caller = tasks.create_task(lean.call())
        (command,) = await lean.commands()
        assert (await lean.respond(command, resp_json=answer)).status == 200
    assert caller.result().json() == answer
    assert server.served - served == 8


async def test_refusals_match_aiohttps_byte_for_byte() -> None:
    """The same refusals from the lean layer and from aiohttp (a relay with `access_log`, served by aiohttp)."""
    cases = [
        ("GET", f"{POLL}?timeout_ms=1", {}, b""),
        ("GET", f"{POLL}?timeout_ms=x", GATEWAY, b""),
        ("GET", "/v1/tunnels/nope/poll", GATEWAY, b""),
        ("POST", RESPONSE, GATEWAY, b"{}"),
        ("POST", RESPONSE, SHARD, b'{"request_id":"r","resp_code":200,"extra":1}'),
        ("POST", RESPONSE, SHARD, b"x" * (LIMIT + 1)),
        ("POST", RESPONSE, {}, b"x" * (LIMIT + 1)),  # who is asking comes before how much they send
        ("POST", MCP, {}, b"{"),
        ("POST", MCP, {"Content-Type": "application/json"}, b'{"jsonrpc":"1.0","id":1,"method":"x"}'),
        ("POST", "/v1/mcp/nope", {}, b"{}"),
        ("POST", f"{MCP}/Bad!", {}, b"{}"),
        ("POST", MCP, {"Host": "evil.example"}, b"{}"),
        ("POST", MCP, {}, b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'),
        ("GET", f"{POLL}?timeout_ms=1", {**GATEWAY, "X-Big": "b" * 9000}, b""),  # past aiohttp's line limit
    ]
    answers: list[list[tuple[int, str | None, bytes]]] = []
    for access_log in (False, True):
        async with Relay(_config(access_log=access_log)) as relay:
            port = int(relay.url.rsplit(":", 1)[1])
            seen = []
            for method, path, headers, body in cases:
                async with asyncio.timeout(WAIT), connection(port) as (reader, writer):
                    host = headers.get("Host", "127.0.0.1")
                    rest = {name: value for name, value in headers.items() if name != "Host"}
                    writer.write(request(method, path, body=body, headers=rest, host=host))
                    answer = await read_response(reader)
                seen.append((answer.status, answer.headers.get("content-type"), answer.body))
            answers.append(seen)
            assert relay.app[LEAN].served == (0 if access_log else len(cases) - 1)
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]] == [
        401,
        400,
        401,
        400,
        400,
        413,
        401,
        400,
        400,
        404,
        400,
        403,
        503,
        400,
    ]


async def test_close_answers_waiting_polls_and_callers_on_lean_connections() -> None:
    config = _config()
    queue = RecordingQueue(config)
    relay = Relay(config, backend=queue)
    await relay.start()
    try:
        async with aiohttp.ClientSession(base_url=relay.url) as session:
            harness = Harness(session, queue)  # type: ignore[arg-type]
            await harness.seen()
            async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tasks:
                caller = tasks.create_task(harness.call())
                await queue.enqueued.get()
                poller = tasks.create_task(harness.poll(timeout_ms=600_000, channels=["other"]))
                await queue.polls.get()
                await relay.close()
            assert poller.result().status == 204
            api_error(caller.result(), 503, None)
    finally:
        await relay.close()
