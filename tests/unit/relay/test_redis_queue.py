"""gateway.relay.redis_queue against a real redis-server started per test on 127.0.0.1 (support/redis_server.py):
the backend section of relay.yaml, replicas sharing commands and frames, takes never lost, dead replicas
purged, a Redis outage and a Redis restart."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import msgspec
import pytest

from gateway.relay import BACKEND, Relay
from gateway.relay.config import MemoryBackend, RedisBackend, RelayConfigError, decode_relay_config, load_relay_config
from gateway.relay.errors import BackendUnavailable, PendingNotFound, ShardMismatch
from gateway.relay.redis_queue import RedisQueue
from tests.support.redis_relay import (
    GATEWAY,
    TUNNEL,
    WAIT,
    answer_for,
    call,
    command,
    connector,
    frame,
    no_polls_waiting,
    polls_waiting,
    redis_spec,
    relay_config,
    take,
)
from tests.support.redis_server import RedisServer, redis_server
from tests.support.waiting import until


async def test_config_backend_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(decode_relay_config("tunnels: {t: {gateway_key: k}}\n").backend, MemoryBackend)
    file = tmp_path / "relay.yaml"
    file.write_text("tunnels: {t: {gateway_key: k}}\nbackend: {kind: redis, url: 'file:redis.url'}\n")
    loaded = load_relay_config(file).backend
    assert isinstance(loaded, RedisBackend)
    assert loaded.url == f"file:{tmp_path / 'redis.url'}"  # relative to the config file, like other secrets
    text = "tunnels: {t: {gateway_key: k}}\nbackend: {kind: redis, url: env:RELAY_REDIS_URL, key_prefix: p1}\n"
    config = decode_relay_config(text)
    assert isinstance(config.backend, RedisBackend)
    assert (config.backend.url, config.backend.key_prefix) == ("env:RELAY_REDIS_URL", "p1")
    for bad, key in [
        ("backend: {kind: kafka}", "$.backend.kind"),
        ("backend: {kind: redis, bogus: 1}", "$.backend"),
        ("backend: {kind: redis, key_prefix: 'a b'}", "$.backend.key_prefix"),
    ]:
        with pytest.raises(RelayConfigError) as info:
            decode_relay_config("tunnels: {t: {gateway_key: k}}\n" + bad)
        assert info.value.key == key
    monkeypatch.delenv("RELAY_REDIS_URL", raising=False)
    with pytest.raises(RelayConfigError) as info:
        await Relay(config).start()
    assert info.value.key == "$.backend.url"
    monkeypatch.setenv("RELAY_REDIS_URL", "http://user:hunter2@example.invalid/")
    with pytest.raises(RelayConfigError) as info:
        await Relay(config).start()
    assert "hunter2" not in str(info.value)


async def test_replicas_share_commands_frames_and_bookkeeping(redis: RedisServer) -> None:
    spec = redis_spec(redis)
    a, b, c = (RedisQueue([TUNNEL], url=redis.url, spec=spec, queue_max=10, client_seen_grace_s=30) for _ in range(3))
    for queue in (a, b, c):
        await queue.start()
    try:
        assert not await a.client_seen(TUNNEL)
        assert await take(b) == []  # a gateway polls replica b...
        assert await a.client_seen(TUNNEL)  # ...and replica a knows
        cmd = command()
        await a.enqueue(TUNNEL, cmd)  # the caller waits on a
        (taken,) = await take(b)
        with pytest.raises(ShardMismatch):
            await c.deliver(TUNNEL, "wrong", frame(cmd))
        await c.deliver(TUNNEL, taken.shard_token, frame(cmd))  # the answer is posted to c
        assert (await a.next_frame(TUNNEL, cmd.request_id)).is_terminal
        with pytest.raises(PendingNotFound):
            await b.deliver(TUNNEL, taken.shard_token, frame(cmd))
    finally:
        for queue in (a, b, c):
            await queue.close()
            await queue.dispose()


async def test_a_take_is_given_back_or_repeated_never_lost(redis: RedisServer) -> None:
    queue = RedisQueue([TUNNEL], url=redis.url, spec=redis_spec(redis), queue_max=10, client_seen_grace_s=30)
    await queue.start()
    try:
        cmd = command()
        await queue.enqueue(TUNNEL, cmd)
        answers = iter([True, False])  # the poller is there when the take starts, gone when it returns
        assert await take(queue, wanted=lambda: next(answers)) == []
        # the batch went back to the head of the queue; a take retried after a lost reply (same
        # memo token) gets the same batch again instead of losing it
        base = f"test:t:{TUNNEL}"
        args = [base, "test:replicas", "gw-1", 5, "", "", 100, 1000, "memo-1", 1000, 1000]
        first = await queue._take(args=args)
        again = await queue._take(args=args)
        assert first[0] == again[0] == cmd.request_id.encode()
        assert await take(queue) == []  # and nobody else gets it
    finally:
        await queue.close()
        await queue.dispose()


async def test_poll_disconnect_loses_nothing_on_redis(redis: RedisServer) -> None:
    config = relay_config(redis)
    async with Relay(config) as relay, aiohttp.ClientSession(connector=connector()) as http:
        poll = f"{relay.url}/v1/tunnels/{TUNNEL}/poll"
        async with asyncio.timeout(WAIT):
            poller = asyncio.create_task(http.get(poll, params={"timeout_ms": "20000"}, headers=GATEWAY))
            await until(lambda: polls_waiting(relay.app[BACKEND]))
            poller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await poller
            await until(lambda: no_polls_waiting(relay.app[BACKEND]))
            caller = asyncio.create_task(call(http, relay.url_for(TUNNEL), 0, "kept"))
            async with http.get(poll, headers=GATEWAY) as resp:
                (cmd,) = (await resp.json())["commands"]
            headers = {**GATEWAY, "X-Tunnel-Shard-Token": cmd["shard_token"]}
            url = f"{relay.url}/v1/tunnels/{TUNNEL}/response"
            async with http.post(url, json=answer_for(cmd, "gw"), headers=headers) as resp:
                assert resp.status == 200
            assert (await caller).body["id"] == "kept"


async def test_status_says_how_long_the_oldest_command_has_waited(redis: RedisServer) -> None:
    """The console's "oldest queued" age on the Redis backend, from any replica: the first command
    queued (an hour before the second), then nothing once every command is taken."""
    spec = redis_spec(redis)
    a, b = (RedisQueue([TUNNEL], url=redis.url, spec=spec, queue_max=10, client_seen_grace_s=30) for _ in range(2))
    await a.start()
    await b.start()
    try:
        assert (await b.status(TUNNEL)).oldest_queued_s is None  # nothing queued
        early = command()
        hour_ago = datetime.strptime(early.created_at, "%Y-%m-%dT%H:%M:%S.%fZ") - timedelta(hours=1)
        early = msgspec.structs.replace(early, created_at=hour_ago.isoformat(timespec="milliseconds") + "Z")
        await a.enqueue(TUNNEL, early)
        await a.enqueue(TUNNEL, command())
        status = await b.status(TUNNEL)
        assert status.queued == 2
        assert status.oldest_queued_s is not None
        assert status.oldest_queued_s >= 3600
        assert len(await take(b)) == 2
        status = await a.status(TUNNEL)
        assert (status.queued, status.in_flight, status.oldest_queued_s) == (0, 2, None)
    finally:
        for queue in (a, b):
            await queue.close()
            await queue.dispose()


async def test_dead_replica_commands_are_purged(redis: RedisServer) -> None:
    spec = redis_spec(redis)
    a, b = (RedisQueue([TUNNEL], url=redis.url, spec=spec, queue_max=10, client_seen_grace_s=30) for _ in range(2))
    await a.start()
    await b.start()
    try:
        queued, in_flight = command(), command()
        await a.enqueue(TUNNEL, in_flight)
        assert len(await take(b)) == 1
        await a.enqueue(TUNNEL, queued)
        await a.dispose()  # replica a is gone (its callers with it): nothing of theirs is run or answered
        assert await take(b) == []
        assert (await b.status(TUNNEL)).queued == 0
        with pytest.raises(PendingNotFound):
            await b.deliver(TUNNEL, in_flight.shard_token, frame(in_flight))
    finally:
        await b.close()
        await b.dispose()


async def test_redis_outage_is_a_prompt_503_then_recovers(redis: RedisServer) -> None:
    spec = redis_spec(redis, retry_s=0.5)
    queue = RedisQueue([TUNNEL], url=redis.url, spec=spec, queue_max=10, client_seen_grace_s=30)
    await queue.start()
    try:
        cmd = command()
        await queue.enqueue(TUNNEL, cmd)
        await redis.stop()
        assert not await queue.ready()
        async with asyncio.timeout(WAIT):
            with pytest.raises(BackendUnavailable):
                await queue.enqueue(TUNNEL, command())
            with pytest.raises(BackendUnavailable):
                await take(queue, timeout_s=1.0)
            with pytest.raises(BackendUnavailable):
                await queue.next_frame(TUNNEL, cmd.request_id)
        await redis.start()
        assert await queue.ready()
        await queue.enqueue(TUNNEL, command())
    finally:
        await queue.close()
        await queue.dispose()


async def test_queued_commands_survive_a_redis_restart(tmp_path: Path) -> None:
    async with redis_server(tmp_path, persist=True) as server:
        spec = redis_spec(server)
        a, b = (RedisQueue([TUNNEL], url=server.url, spec=spec, queue_max=10, client_seen_grace_s=30) for _ in range(2))
        await a.start()
        await b.start()
        try:
            cmd = command()
            await a.enqueue(TUNNEL, cmd)
            async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
                caller = tg.create_task(a.next_frame(TUNNEL, cmd.request_id))  # waits through the outage
                await server.restart()
                (taken,) = await take(b)
                assert taken.request_id == cmd.request_id
                await b.deliver(TUNNEL, taken.shard_token, frame(cmd))
            assert caller.result().is_terminal
        finally:
            for queue in (a, b):
                await queue.close()
                await queue.dispose()
