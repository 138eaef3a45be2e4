"""The relay's availability and limits: no gateway seen, a full queue, callers timing out or leaving, polls
leaving, limits and channel filters, the notify backlog, status mapping and synthesized failures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.protocol.wire import TunnelResponsePayload
from gateway.relay import MemoryQueue, map_status, new_command
from gateway.relay.errors import FrameBacklog, PendingNotFound
from gateway.relay.queue import FRAME_BACKLOG
from tests.support.openapi import validate_failure
from tests.support.relay_harness import (
    LIST_TOOLS,
    TUNNEL,
    WAIT,
    Harness,
    HarnessFactory,
    api_error,
    parse_sse,
    relay_config,
    result,
)


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
