"""The queue backend contract: the same checks for every `QueueBackend` (memory, and Redis with each call another
replica on one real redis-server): round trips, FIFO with limits and channel filters, the queue cap, discarded
and expired commands, the frame backlog, client-seen, close, tunnels added and removed while serving, and
proc-affinity routing."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from gateway.relay import MemoryQueue, QueueBackend
from gateway.relay.errors import (
    FrameBacklog,
    PendingNotFound,
    QueueFull,
    RelayClosing,
    ShardMismatch,
    TunnelNotFound,
    TunnelRemoved,
)
from gateway.relay.queue import FRAME_BACKLOG
from gateway.relay.redis_queue import RedisQueue
from tests.support.redis_relay import TUNNEL, WAIT, command, frame, owner, polls_waiting, redis_spec, take
from tests.support.redis_server import redis_server
from tests.support.waiting import until

MakeBackend = Callable[..., Awaitable[QueueBackend]]


@pytest.fixture(params=["memory", "redis"])
async def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    """Makes backends of one kind; with Redis every call is another replica on the same server."""
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(redis_server(tmp_path)) if request.param == "redis" else None
        made: list[QueueBackend] = []

        async def make(*, queue_max: int = 10, grace: float = 30.0, recheck_s: float = 0.1) -> QueueBackend:
            if server is None:
                backend: QueueBackend = MemoryQueue([TUNNEL], queue_max=queue_max, client_seen_grace_s=grace)
            else:
                spec = redis_spec(server, recheck_s=recheck_s)
                backend = RedisQueue(
                    [TUNNEL], url=server.url, spec=spec, queue_max=queue_max, client_seen_grace_s=grace
                )
            await backend.start()
            made.append(backend)
            return backend

        try:
            yield make
        finally:
            for backend in made:
                await backend.close()
                await backend.dispose()


async def test_contract_round_trip(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    cmd = command()
    await queue.enqueue(TUNNEL, cmd)
    (taken,) = await take(queue)
    assert (taken.request_id, taken.shard_token, taken.headers) == (cmd.request_id, cmd.shard_token, cmd.headers)
    assert bytes(taken.jsonrpc) == bytes(cmd.jsonrpc)  # type: ignore[arg-type]
    assert re.fullmatch(r"[1-9][0-9]*ms", taken.polled(asyncio.get_running_loop().time()).response_timeout or "")
    assert await take(queue) == []  # handed out once
    with pytest.raises(ShardMismatch):
        await queue.deliver(TUNNEL, "wrong", frame(cmd))
    unknown = msgspec.structs.replace(frame(cmd), request_id="req_unknown")
    with pytest.raises(PendingNotFound):
        await queue.deliver(TUNNEL, cmd.shard_token, unknown)
    await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd, kind="jsonrpc_notify"))
    await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd))
    with pytest.raises(PendingNotFound):
        await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd))
    first, last = [await queue.next_frame(TUNNEL, cmd.request_id) for _ in range(2)]
    assert (first.resp_type, last.resp_type) == ("jsonrpc_notify", "jsonrpc_response")
    status = await queue.status(TUNNEL)
    assert (status.queued, status.in_flight, status.last_instance_id) == (0, 0, "gw-1")
    await queue.discard(TUNNEL, cmd.request_id)
    with pytest.raises(PendingNotFound):
        await queue.next_frame(TUNNEL, cmd.request_id)


async def test_contract_fifo_limit_and_channels(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    commands = [command(channel) for channel in ("alpha", "beta", "alpha-2", "alpha")]
    for cmd in commands:
        await queue.enqueue(TUNNEL, cmd)
    (beta,) = await take(queue, channels=frozenset({"beta"}))
    assert beta.request_id == commands[1].request_id
    first_two = await take(queue, limit=2)
    assert [c.request_id for c in first_two] == [commands[0].request_id, commands[2].request_id]
    assert [c.request_id for c in await take(queue)] == [commands[3].request_id]


async def test_contract_queue_cap(make_backend: MakeBackend) -> None:
    queue = await make_backend(queue_max=2)
    await queue.enqueue(TUNNEL, command())
    await queue.enqueue(TUNNEL, command())
    with pytest.raises(QueueFull):
        await queue.enqueue(TUNNEL, command())
    assert len(await take(queue, limit=1)) == 1
    await queue.enqueue(TUNNEL, command())  # room again


async def test_contract_discarded_and_expired_are_never_handed_out(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    gone, late, live = command(), command(timeout=0.001), command()
    for cmd in (gone, late, live):
        await queue.enqueue(TUNNEL, cmd)
    await queue.discard(TUNNEL, gone.request_id)
    await asyncio.sleep(0.05)  # let `late` pass its deadline (time passing, not readiness)
    assert [c.request_id for c in await take(queue)] == [live.request_id]
    assert (await queue.status(TUNNEL)).queued == 0  # the expired one was purged
    with pytest.raises(PendingNotFound):
        await queue.deliver(TUNNEL, late.shard_token, frame(late))


async def test_contract_frame_backlog(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    cmd = command()
    await queue.enqueue(TUNNEL, cmd)
    await take(queue)
    for _ in range(FRAME_BACKLOG):
        await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd, kind="jsonrpc_notify"))
    with pytest.raises(FrameBacklog):
        await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd, kind="jsonrpc_notify"))
    await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd))  # the terminal frame always lands
    frames = [await queue.next_frame(TUNNEL, cmd.request_id) for _ in range(FRAME_BACKLOG + 1)]
    assert [f.is_terminal for f in frames] == [False] * FRAME_BACKLOG + [True]


async def test_contract_client_seen(make_backend: MakeBackend) -> None:
    queue = await make_backend(grace=30.0)
    assert not await queue.client_seen(TUNNEL)
    assert await take(queue) == []
    assert await queue.client_seen(TUNNEL)
    assert (await queue.status(TUNNEL)).client_seen


async def test_contract_close_wakes_polls_and_callers(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    cmd = command()
    await queue.enqueue(TUNNEL, cmd)
    async with asyncio.timeout(WAIT):
        poll = asyncio.create_task(take(queue, channels=frozenset({"none"}), timeout_s=WAIT))
        caller = asyncio.create_task(queue.next_frame(TUNNEL, cmd.request_id))
        await until(lambda: polls_waiting(queue))
        await queue.close()
        assert await poll == []
        with pytest.raises(RelayClosing):
            await caller
    with pytest.raises(RelayClosing):
        await queue.enqueue(TUNNEL, command())


async def test_contract_tunnels_added_and_removed_while_serving(make_backend: MakeBackend) -> None:
    """A reload's `serve_tunnels`: a tunnel added is served at once, and its polls are woken by its
    enqueues (Redis: its wake-up channel is subscribed; the periodic re-check is set far beyond the
    wait here). A tunnel removed: its waiting poll answers with nothing, its waiting caller gets
    TunnelRemoved, and from then on it is not served. The tunnel kept is untouched throughout."""
    other = "tunnel_added"
    queue = await make_backend(recheck_s=WAIT * 2)
    with pytest.raises(TunnelNotFound):
        await queue.enqueue(other, command())
    kept = command()
    await queue.enqueue(TUNNEL, kept)
    queue.serve_tunnels([TUNNEL, other])
    async with asyncio.timeout(WAIT):
        poll = asyncio.create_task(queue.take(other, limit=25, timeout_s=WAIT * 2, instance_id="gw-2"))
        await until(lambda: polls_waiting(queue, other))
        added = command()
        await queue.enqueue(other, added)
        assert [c.request_id for c in await poll] == [added.request_id]
        caller = asyncio.create_task(queue.next_frame(other, added.request_id))
        waiting = asyncio.create_task(queue.take(other, limit=25, timeout_s=WAIT * 2, instance_id="gw-2"))
        await until(lambda: polls_waiting(queue, other))
        queue.serve_tunnels([TUNNEL])
        assert await waiting == []
        with pytest.raises(TunnelRemoved):
            await caller
    await queue.discard(other, added.request_id)
    for refused in (queue.enqueue(other, command()), queue.take(other, limit=1, timeout_s=0.01)):
        with pytest.raises(TunnelNotFound):
            await refused
    assert [c.request_id for c in await take(queue)] == [kept.request_id]


async def test_contract_proc_affinity_routing_and_reassignment(make_backend: MakeBackend) -> None:
    queue = await make_backend(grace=0.3)
    affine = frozenset({"files"})
    # `initialize` on an affine channel: no session yet, any instance may take it
    init = command("files")
    await queue.enqueue(TUNNEL, init)
    assert len(await take(queue, "gw-a", affine_channels=affine)) == 1
    await queue.deliver(TUNNEL, init.shard_token, frame(init, headers={"Mcp-Session-Id": ["sess-1"]}))
    assert await owner(queue, "files", "sess-1") == "gw-a"
    # the same session on a non-affine channel is not routed
    await queue.enqueue(TUNNEL, free := command("main", session="sess-1"))
    assert [c.request_id for c in await take(queue, "gw-b", affine_channels=affine)] == [free.request_id]

    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        # gw-a is polling (for another channel), so it counts as seen: gw-b must leave its session alone
        owner_poll = tg.create_task(take(queue, "gw-a", channels=frozenset({"other"}), timeout_s=WAIT))
        await until(lambda: polls_waiting(queue))
        bound = command("files", session="sess-1")
        await queue.enqueue(TUNNEL, bound)
        assert await take(queue, "gw-b", affine_channels=affine, timeout_s=0.3) == []
        owner_poll.cancel()
    (mine,) = await take(queue, "gw-a", affine_channels=affine)
    assert mine.request_id == bound.request_id
    await queue.deliver(TUNNEL, bound.shard_token, frame(bound))
    assert await owner(queue, "files", "sess-1") == "gw-a"

    # gw-a stops polling: after the grace period gw-b gets the session's next command and owns it
    again = command("files", session="sess-1")
    await queue.enqueue(TUNNEL, again)
    (moved,) = await take(queue, "gw-b", affine_channels=affine, timeout_s=WAIT)
    assert moved.request_id == again.request_id
    assert await owner(queue, "files", "sess-1") == "gw-b"
    await queue.deliver(TUNNEL, again.shard_token, frame(again))

    # ending the session forgets the binding
    end = command("files", session="sess-1", kind="session_termination")
    await queue.enqueue(TUNNEL, end)
    (ending,) = await take(queue, "gw-b", affine_channels=affine)
    assert ending.command_type == "session_termination"
    await queue.deliver(TUNNEL, end.shard_token, frame(end, kind="session_termination_response"))
    assert await owner(queue, "files", "sess-1") is None
