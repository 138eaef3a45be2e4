"""Redis round trips of the relay's Redis backend, counted by a real redis-server (`INFO commandstats`):
about two scripts per call, wake-ups published only while a poll waits, answered calls' keys forgotten
(docs/relay-on-redis.md, "Round trips per call")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from gateway.relay.redis_queue import RedisQueue
from tests.support.redis_relay import TUNNEL, WAIT, command, frame, redis_spec, take
from tests.support.redis_server import RedisServer
from tests.support.waiting import until

CALLS = 20
SLACK = 10
"""Scripts not per call that may run during the count (heartbeats, a poll's end, re-takes, FORGET batches)."""


async def counts(client: Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


@contextlib.asynccontextmanager
async def two_replicas(redis: RedisServer, **overrides: Any) -> AsyncIterator[tuple[RedisQueue, RedisQueue, Redis]]:
    spec = redis_spec(redis, **overrides)
    a, b = (RedisQueue([TUNNEL], url=redis.url, spec=spec, queue_max=100, client_seen_grace_s=30) for _ in range(2))
    client = Redis.from_url(redis.url)
    for queue in (a, b):
        await queue.start()
    try:
        yield a, b, client
    finally:
        for queue in (a, b):
            await queue.close()
            await queue.dispose()
        await client.aclose()


async def test_a_call_costs_about_two_scripts_and_leaves_no_keys(redis: RedisServer) -> None:
    async with two_replicas(redis) as (a, b, client):
        assert await take(b) == []  # the gateway has polled: it is seen
        before = await counts(client)
        commands = [command() for _ in range(CALLS)]
        for cmd in commands:  # what the front door does per call: "seen?", then enqueue
            assert await a.client_seen(TUNNEL)
            await a.enqueue(TUNNEL, cmd)
        waiting = [asyncio.create_task(a.next_frame(TUNNEL, cmd.request_id)) for cmd in commands]
        taken = await take(b, limit=CALLS)
        assert {c.request_id for c in taken} == {c.request_id for c in commands}
        for cmd in taken:
            await b.deliver(TUNNEL, cmd.shard_token, frame(cmd))
        frames = await asyncio.gather(*waiting)
        assert [f.request_id for f in frames] == [c.request_id for c in commands]
        await asyncio.gather(*(a.discard(TUNNEL, cmd.request_id) for cmd in commands))  # callers leave together
        after = await counts(client)
        scripts = after.get("evalsha", 0) - before.get("evalsha", 0)
        # per call one ENQUEUE and one DELIVER; once: CLIENT_SEEN, TAKE, a few FORGET batches, and what
        # runs meanwhile anyway (heartbeats, the first poll's end). It was about 6 per call.
        assert scripts <= 2 * CALLS + SLACK, scripts
        assert after.get("publish", 0) - before.get("publish", 0) == CALLS  # the frames; no wake-ups

        async def keys_left() -> bool:
            return not [key async for key in client.scan_iter(match=f"test:t:{TUNNEL}:[rf]:*")]

        await until(keys_left)


async def test_an_enqueue_publishes_a_wake_up_only_while_a_poll_waits(redis: RedisServer) -> None:
    async with two_replicas(redis) as (a, b, client):
        polls = f"test:t:{TUNNEL}:polls"
        before = await counts(client)
        await a.enqueue(TUNNEL, command())
        assert (await counts(client)).get("publish", 0) == before.get("publish", 0)
        assert len(await take(b)) == 1
        poll = asyncio.create_task(take(b, timeout_s=60.0))
        await until(lambda: client.zcard(polls))  # its empty take marked it as waiting
        before = await counts(client)
        cmd = command()
        await a.enqueue(TUNNEL, cmd)
        assert [c.request_id for c in await poll] == [cmd.request_id]
        assert (await counts(client)).get("publish", 0) == before.get("publish", 0) + 1
        assert await client.zcard(polls) == 0  # a take that found something clears the mark


async def test_a_frame_for_a_caller_on_the_delivering_replica_is_handed_over_without_a_publish(
    redis: RedisServer,
) -> None:
    async with two_replicas(redis, recheck_s=30.0) as (_a, b, client):  # no re-check reads meanwhile
        assert await take(b) == []
        before = await counts(client)
        commands = [command() for _ in range(CALLS)]
        for cmd in commands:
            await b.enqueue(TUNNEL, cmd)  # callers on b, which also takes and delivers (the gateway polls b)
        waiting = [asyncio.create_task(b.next_frame(TUNNEL, cmd.request_id)) for cmd in commands]
        taken = await take(b, limit=CALLS)
        assert len(taken) == CALLS
        loop = asyncio.get_running_loop()
        reports: list[asyncio.Future[Exception | None]] = []
        for n, cmd in enumerate(taken):
            if n % 2:
                await b.deliver(TUNNEL, cmd.shard_token, frame(cmd))
            else:  # the lean layer's task-free way
                report: asyncio.Future[Exception | None] = loop.create_future()
                b.deliver_soon(TUNNEL, cmd.shard_token, frame(cmd), report.set_result)
                reports.append(report)
        assert await asyncio.gather(*reports) == [None] * len(reports)
        frames = await asyncio.wait_for(asyncio.gather(*waiting), WAIT)
        assert [f.request_id for f in frames] == [c.request_id for c in commands]
        after = await counts(client)
        assert after.get("publish", 0) == before.get("publish", 0)  # neither a wake-up nor a frame published
        scripts = after.get("evalsha", 0) - before.get("evalsha", 0)
        assert scripts <= 2 * CALLS + SLACK, scripts  # and no read of the list (NEXT_FRAME) per call
        await asyncio.gather(*(b.discard(TUNNEL, cmd.request_id) for cmd in commands))

        async def nothing_left() -> bool:  # answered calls are forgotten by deleting their record and frames only
            keys = [key async for key in client.scan_iter(match=f"test:t:{TUNNEL}:[rf]:*")]
            sets = [await client.zcard(f"test:t:{TUNNEL}:{name}") for name in ("q", "qdl", "inflight")]
            return not keys and sets == [0, 0, 0]

        await until(nothing_left)
