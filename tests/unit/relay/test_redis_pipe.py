"""gateway.relay.redis_pipe against a real redis-server (support/redis_server.py), through a loopback proxy
that can hold replies or cut the connection: a loop turn's commands in one write with
replies in order, an error for its own command only, a cancelled caller that shifts nothing, a lost
connection failing what was in flight with redis-py's errors (a 503 from the queue), a silent server
timing out, AUTH and SELECT from the URL, a restarted Redis (NOSCRIPT) answered by EVAL, and a
subscription whose channels a reload changes, also while Redis has not yet confirmed it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.relay.errors import BackendUnavailable
from gateway.relay.redis_pipe import ScriptPipe
from gateway.relay.redis_queue import RedisQueue
from tests.support.redis_proxy import Proxy
from tests.support.redis_relay import TUNNEL, WAIT, command, polls_waiting, redis_spec
from tests.support.redis_server import RedisServer
from tests.support.waiting import until

ECHO = "return ARGV[1]"
FAIL = "return redis.error_reply('nope ' .. ARGV[1])"
SLOW = """
local start = redis.call('TIME')
local now = start
while (now[1] - start[1]) * 1000000 + (now[2] - start[2]) < tonumber(ARGV[2]) do now = redis.call('TIME') end
return ARGV[1]
"""
"""Busy for ARGV[2] µs (Redis's clock), then echoes ARGV[1]: keeps a batch in flight."""


def pipe_for(url: str, *, timeout_s: float = 30.0) -> ScriptPipe:
    return ScriptPipe(ConnectionPool.from_url(url).make_connection(), connect_timeout_s=10.0, timeout_s=timeout_s)


@contextlib.asynccontextmanager
async def proxied(redis: RedisServer, *, timeout_s: float = 30.0) -> AsyncIterator[tuple[Proxy, ScriptPipe]]:
    async with Proxy(redis.port) as proxy:
        pipe = pipe_for(proxy.url, timeout_s=timeout_s)
        try:
            yield proxy, pipe
        finally:
            await pipe.aclose()


async def test_a_loop_turns_commands_go_in_one_write_and_each_gets_its_own_reply(redis: RedisServer) -> None:
    async with proxied(redis) as (_, pipe):
        echo, fail = pipe.register_script(ECHO), pipe.register_script(FAIL)
        assert await echo(args=["warm"]) == b"warm"  # connected, and both scripts' first EVAL is behind us
        with pytest.raises(ResponseError):
            await fail(args=["warm"])
        before = (pipe.stats.commands, pipe.stats.writes)
        results = await asyncio.gather(
            *(fail(args=[str(i)]) if i % 7 == 0 else echo(args=[str(i)]) for i in range(200)), return_exceptions=True
        )
        for i, result in enumerate(results):
            if i % 7 == 0:
                assert isinstance(result, ResponseError), result
                assert str(result) == f"nope {i}"
            else:
                assert result == str(i).encode()
        assert pipe.stats.commands - before[0] == 200
        assert pipe.stats.writes - before[1] == 1  # all in one write (redis-py: one per command)


async def test_a_cancelled_caller_shifts_no_reply(redis: RedisServer) -> None:
    async with proxied(redis) as (proxy, pipe):
        echo = pipe.register_script(ECHO)
        assert await echo(args=["warm"]) == b"warm"
        proxy.holding = True
        first, second, third = (asyncio.create_task(echo(args=[name])) for name in ("first", "second", "third"))
        await until(proxy.held)  # the three were sent; their replies are held
        second.cancel()
        proxy.release()
        assert (await first, await third) == (b"first", b"third")
        assert second.cancelled()
        assert await echo(args=["after"]) == b"after"


async def test_a_lost_connection_fails_what_is_in_flight_and_the_next_call_reconnects(redis: RedisServer) -> None:
    async with proxied(redis) as (proxy, pipe):
        slow = pipe.register_script(SLOW)
        assert await slow(args=["warm", 0]) == b"warm"
        proxy.holding = True
        batch = [asyncio.create_task(slow(args=[str(i), 1000])) for i in range(20)]
        await until(proxy.held)
        proxy.cut()
        for task in batch:
            with pytest.raises(RedisConnectionError):
                await task
        proxy.holding = False
        assert await slow(args=["again", 0]) == b"again"


async def test_a_silent_server_times_out_and_a_later_call_reconnects(redis: RedisServer) -> None:
    async with proxied(redis, timeout_s=0.5) as (proxy, pipe):
        echo = pipe.register_script(ECHO)
        assert await echo(args=["warm"]) == b"warm"
        proxy.holding = True  # the server's replies never reach the pipe
        with pytest.raises(RedisTimeoutError):
            await echo(args=["lost"])
        proxy.holding = False
        assert await echo(args=["again"]) == b"again"


async def test_auth_and_select_come_from_the_url(redis: RedisServer) -> None:
    admin = Redis.from_url(redis.url)
    try:
        await admin.execute_command("ACL", "SETUSER", "relay", "on", ">s3cret", "~*", "+@all")
        store = "return redis.call('SET', ARGV[1], ARGV[2])"
        good = pipe_for(f"redis://relay:s3cret@127.0.0.1:{redis.port}/3")
        try:
            assert await good.register_script(store)(args=["k", "v"]) == b"OK"
        finally:
            await good.aclose()
        assert await admin.get("k") is None  # not in db 0
        db3 = Redis.from_url(f"redis://127.0.0.1:{redis.port}/3")
        try:
            assert await db3.get("k") == b"v"
        finally:
            await db3.aclose()
        bad = pipe_for(f"redis://relay:wrong@127.0.0.1:{redis.port}/3")
        try:
            with pytest.raises(AuthenticationError):  # a ConnectionError: retried, then a 503
                await bad.register_script(store)(args=["k", "w"])
        finally:
            await bad.aclose()
    finally:
        await admin.aclose()


async def test_a_restarted_redis_gets_the_script_again(redis: RedisServer) -> None:
    pipe = pipe_for(redis.url)
    try:
        echo = pipe.register_script(ECHO)
        assert await echo(args=["before"]) == b"before"
        await redis.restart()  # scripts are gone with the process
        with contextlib.suppress(RedisConnectionError):  # unless the pipe saw its socket close first
            await echo(args=["lost"])
        assert await echo(args=["after"]) == b"after"  # a new connection, NOSCRIPT, then EVAL
        admin = Redis.from_url(redis.url)
        try:
            stats = await admin.info("commandstats")
            assert stats["cmdstat_eval"]["calls"] == 1
        finally:
            await admin.aclose()
    finally:
        await pipe.aclose()


async def test_a_script_whose_caller_left_before_its_noscript_still_runs(redis: RedisServer) -> None:
    """A script, once queued, runs even if its caller is cancelled before Redis answers NOSCRIPT: the
    pipe sends it whole from the reply's callback. (A poll whose gateway left gives its batch back
    with such a script, RELEASE; lost here, those commands stayed taken by nobody until their
    deadline. It failed tests/e2e/test_replicas.py's SIGKILL test about one run in twenty.)"""
    async with proxied(redis) as (proxy, pipe):
        mark = pipe.register_script("redis.call('SET', ARGV[1], ARGV[2]) return 1")
        marked = pipe.register_script("return redis.call('GET', ARGV[1]) or ''")
        assert await marked(args=["left"]) == b""  # connected; `mark` itself is still unknown to Redis
        proxy.holding = True
        caller = asyncio.create_task(mark(args=["left", "ran"]))
        await until(proxy.held)  # EVALSHA sent; its NOSCRIPT is held
        caller.cancel()
        proxy.release()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await until(lambda: marked(args=["left"]), within_s=WAIT)
        assert await marked(args=["left"]) == b"ran"
        # and a callback's script (`run_soon`) gets the script's own reply after a NOSCRIPT
        await pipe.call(b"SCRIPT", b"FLUSH")
        replies: list[object] = []
        assert pipe.run_soon(mark, ["soon", "ran too"], replies.append)
        await until(lambda: replies)
        assert replies == [1]
        assert await marked(args=["soon"]) == b"ran too"


async def test_a_batch_cut_off_from_redis_gets_the_queues_503(redis: RedisServer) -> None:
    async with Proxy(redis.port) as proxy:
        spec = redis_spec(redis, retry_s=0.5)
        queue = RedisQueue([TUNNEL], url=proxy.url, spec=spec, queue_max=100, client_seen_grace_s=30)
        await queue.start()
        try:
            await queue.enqueue(TUNNEL, command())
            proxy.holding = True
            batch = [asyncio.create_task(queue.enqueue(TUNNEL, command())) for _ in range(10)]
            await until(proxy.held)
            proxy.refusing = True
            proxy.cut()
            for task in batch:
                with pytest.raises(BackendUnavailable):  # retried for retry_s, then the relay's 503
                    await task
            proxy.refusing = proxy.holding = False
            await queue.enqueue(TUNNEL, command())  # back once Redis is reachable again
        finally:
            await queue.close()
            await queue.dispose()


async def test_commands_sent_while_a_batch_is_in_flight_wait_for_it_and_go_together(redis: RedisServer) -> None:
    async with proxied(redis) as (proxy, pipe):
        echo = pipe.register_script(ECHO)
        assert await echo(args=["warm"]) == b"warm"
        writes = pipe.stats.writes
        proxy.holding = True
        first = asyncio.create_task(echo(args=["first"]))
        await until(proxy.held)  # written and answered; the answer is held back
        later = []
        for i in range(30):  # each in a loop turn of its own
            later.append(asyncio.create_task(echo(args=[str(i)])))
            await asyncio.sleep(0)
        assert pipe.stats.writes == writes + 1  # the first only: the others wait for its answer
        proxy.release()
        assert await first == b"first"
        assert await asyncio.gather(*later) == [str(i).encode() for i in range(30)]
        assert pipe.stats.writes == writes + 2  # then the 30 in one write


async def test_a_subscription_dispatches_messages_and_says_when_its_connection_is_lost(redis: RedisServer) -> None:
    async with proxied(redis) as (proxy, pipe):
        got: list[tuple[bytes, bytes]] = []
        subscription = await pipe.subscribe([b"one", b"two"], lambda channel, data: got.append((channel, data)))
        try:
            holding = asyncio.create_task(subscription.hold(60.0))
            admin = Redis.from_url(redis.url)
            try:
                for channel in ("one", "three", "two"):  # subscribed before `subscribe` returned
                    await admin.publish(channel, f"to {channel}")
            finally:
                await admin.aclose()
            await until(lambda: len(got) == 2)
            assert got == [(b"one", b"to one"), (b"two", b"to two")]
            proxy.cut()
            with pytest.raises(RedisConnectionError):
                await holding
        finally:
            await subscription.aclose()


async def test_a_silent_subscription_fails_its_ping(redis: RedisServer) -> None:
    async with proxied(redis, timeout_s=0.5) as (proxy, pipe):
        subscription = await pipe.subscribe([b"one"], lambda channel, data: None)
        try:
            proxy.holding = True
            with pytest.raises(RedisTimeoutError):
                await subscription.hold(0.1)
        finally:
            await subscription.aclose()


async def test_a_subscription_changes_its_channels_in_place(redis: RedisServer) -> None:
    """`Subscription.change` (a relay reload adding and removing tunnels): the connection is subscribed
    to the added channel and no longer to the removed one, and stays open."""
    async with proxied(redis) as (_, pipe):
        got: list[tuple[bytes, bytes]] = []
        subscription = await pipe.subscribe([b"kept", b"dropped"], lambda channel, data: got.append((channel, data)))
        try:
            subscription.change([b"kept", b"dropped"], [b"kept", b"added"])
            await subscription.ping()  # answered after both confirmations
            admin = Redis.from_url(redis.url)
            try:
                for channel in ("dropped", "added", "kept"):
                    await admin.publish(channel, f"to {channel}")
            finally:
                await admin.aclose()
            await until(lambda: len(got) == 2)
            assert got == [(b"added", b"to added"), (b"kept", b"to kept")]
        finally:
            await subscription.aclose()


async def test_a_tunnel_added_while_the_listener_subscribes_gets_its_wake_ups(redis: RedisServer) -> None:
    """A reload that adds a tunnel while the pub/sub listener waits for Redis to confirm its subscription
    (which names the tunnels as they were): the listener subscribes the added tunnel's channel too, so
    an enqueue wakes that tunnel's waiting poll (the periodic re-check is set far beyond the wait)."""
    async with Proxy(redis.port) as proxy:
        spec = redis_spec(redis, recheck_s=WAIT * 2)
        queue = RedisQueue([TUNNEL], url=proxy.url, spec=spec, queue_max=10, client_seen_grace_s=30.0)
        proxy.holding = True
        await queue.start()
        try:
            await until(lambda: proxy.held_on() == 2)  # the heartbeat's script and the listener's SUBSCRIBE
            queue.serve_tunnels([TUNNEL, "added"])
            proxy.release()
            async with asyncio.timeout(WAIT):
                poll = asyncio.create_task(queue.take("added", limit=5, timeout_s=WAIT * 2, instance_id="gw"))
                await until(lambda: polls_waiting(queue, "added"))
                cmd = command()
                await queue.enqueue("added", cmd)
                assert [c.request_id for c in await poll] == [cmd.request_id]
        finally:
            await queue.close()
            await queue.dispose()
