"""Relay replicas over HTTP: in-process `Relay` instances sharing one real redis-server, with plain v1 pollers
(support/redis_relay.py) that count every command they receive: nothing may arrive twice. No timing asserts:
waits are for conditions, bounded by generous timeouts."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import aiohttp
import msgspec
import pytest

from gateway.relay import BACKEND, Relay, TunnelSpec
from gateway.relay.redis_queue import RedisQueue
from tests.support.openapi import validate
from tests.support.redis_relay import (
    AFFINE_INFO,
    GATEWAY,
    KEY,
    TUNNEL,
    WAIT,
    Outcome,
    Poller,
    answer_for,
    call,
    connector,
    redis_spec,
    relay_config,
    replicas,
    run_poller,
)
from tests.support.redis_server import RedisServer
from tests.support.waiting import until


async def _queued(relay: Relay, count: int) -> bool:
    return (await relay.app[BACKEND].status(TUNNEL)).queued == count


@pytest.mark.timeout(600)  # heavy: generous on a loaded machine; finishes in well under a minute
async def test_three_replicas_two_pollers_2000_calls(redis: RedisServer) -> None:
    config = relay_config(redis)
    async with replicas(config, 3) as relays, aiohttp.ClientSession(connector=connector()) as http:
        urls = [relay.url for relay in relays]
        pollers = [Poller(http, urls, "gw-1"), Poller(http, urls, "gw-2")]
        async with asyncio.timeout(600), asyncio.TaskGroup() as tg:
            running = [tg.create_task(run_poller(p)) for p in pollers]
            await until(lambda: relays[0].app[BACKEND].client_seen(TUNNEL))
            gate = asyncio.Semaphore(64)

            async def one(n: int) -> Outcome:
                async with gate:
                    relay = relays[n % 3]
                    return await call(http, relay.url_for(TUNNEL), n % 3, f"c-{n}")

            outcomes = await asyncio.gather(*(one(n) for n in range(2000)))
            for task in running:
                task.cancel()
        for outcome in outcomes:
            assert outcome.status == 200, outcome
            assert outcome.body["id"] == outcome.rpc_id
        delivered = Counter(cmd["jsonrpc"]["id"] for p in pollers for cmd in p.received)
        assert len(delivered) == 2000
        assert max(delivered.values()) == 1  # every call delivered to exactly one poll, once
        assert all(p.received for p in pollers)  # both gateways shared the load
        totals = 0
        for relay in relays:
            async with http.get(f"{relay.url}/metrics") as resp:
                match = re.search(rf'relay_commands_polled_total{{tunnel="{TUNNEL}"}} (\d+)', await resp.text())
            assert match is not None
            totals += int(match[1])
        assert totals == 2000
        status = await relays[1].app[BACKEND].status(TUNNEL)
        assert (status.queued, status.in_flight) == (0, 0)


async def test_cross_replica_semantics_over_http(redis: RedisServer) -> None:
    config = relay_config(redis, queue_max=2)
    async with replicas(config, 3) as (a, b, c), aiohttp.ClientSession(connector=connector()) as http:
        # nobody polled: every replica says so
        for relay in (a, b, c):
            outcome = await call(http, relay.url_for(TUNNEL), 0, "x")
            assert outcome.status == 503
            assert outcome.body["error"]["code"] == "tunnel_client_not_seen"
        poll = f"{b.url}/v1/tunnels/{TUNNEL}/poll"
        async with http.get(poll, params={"timeout_ms": "1"}, headers=GATEWAY) as resp:
            assert resp.status == 204
        async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
            first = tg.create_task(call(http, a.url_for(TUNNEL), 0, "one"))
            second = tg.create_task(call(http, b.url_for(TUNNEL), 1, "two"))
            await until(lambda: _queued(a, 2))
            full = await call(http, c.url_for(TUNNEL), 2, "three")  # the cap holds across replicas
            assert full.status == 429
            assert full.body["error"]["code"] == "tunnel_queue_full"
            validate("APIErrorResponse", full.body)
            async with http.get(poll, params={"limit": "5"}, headers=GATEWAY) as resp:
                commands = (await resp.json())["commands"]
            assert len(commands) == 2
            for cmd in commands:
                url = f"{c.url}/v1/tunnels/{TUNNEL}/response"
                wrong = {**GATEWAY, "X-Tunnel-Shard-Token": "not-it"}
                async with http.post(url, json=answer_for(cmd, "gw"), headers=wrong) as resp:
                    assert resp.status == 401
                right = {**GATEWAY, "X-Tunnel-Shard-Token": cmd["shard_token"]}
                async with http.post(url, json=answer_for(cmd, "gw"), headers=right) as resp:
                    assert resp.status == 200
                async with http.post(
                    f"{a.url}/v1/tunnels/{TUNNEL}/response", json=answer_for(cmd, "gw"), headers=right
                ) as resp:
                    assert resp.status == 404
                    assert (await resp.json())["error"]["code"] == "pending_request_not_found"
        assert first.result().body["id"] == "one"
        assert second.result().body["id"] == "two"


async def test_queued_commands_survive_a_relay_restart(redis: RedisServer) -> None:
    config = relay_config(redis)
    async with Relay(config) as a, aiohttp.ClientSession(connector=connector()) as http:
        b = Relay(config)
        await b.start()
        try:
            poll = f"{b.url}/v1/tunnels/{TUNNEL}/poll"
            async with http.get(poll, params={"timeout_ms": "1"}, headers=GATEWAY) as resp:
                assert resp.status == 204
            async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
                caller = tg.create_task(call(http, a.url_for(TUNNEL), 0, "kept"))
                await until(lambda: _queued(a, 1))
                await b.close()  # the replica the gateway polls restarts...
                b = Relay(config)
                await b.start()
                poll = f"{b.url}/v1/tunnels/{TUNNEL}/poll"
                async with http.get(poll, headers=GATEWAY) as resp:  # ...and still hands out the command
                    (cmd,) = (await resp.json())["commands"]
                headers = {**GATEWAY, "X-Tunnel-Shard-Token": cmd["shard_token"]}
                async with http.post(
                    f"{b.url}/v1/tunnels/{TUNNEL}/response", json=answer_for(cmd, "gw"), headers=headers
                ) as resp:
                    assert resp.status == 200
            assert caller.result().status == 200
            assert caller.result().body["id"] == "kept"
        finally:
            await b.close()


async def test_ops_endpoints_and_redis_outage(redis: RedisServer) -> None:
    config = relay_config(redis, spec=redis_spec(redis, retry_s=0.5))
    async with Relay(config) as relay, aiohttp.ClientSession(connector=connector()) as http:
        async with http.get(f"{relay.url}/healthz") as resp:
            assert (resp.status, await resp.text()) == (200, "ok")
        async with http.get(f"{relay.url}/readyz") as resp:
            assert resp.status == 200
        async with http.get(
            f"{relay.url}/v1/tunnels/{TUNNEL}/poll", params={"timeout_ms": "1"}, headers=GATEWAY
        ) as resp:
            assert resp.status == 204
        async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
            caller = tg.create_task(call(http, relay.url_for(TUNNEL), 0, "m"))
            await until(lambda: _queued(relay, 1))
            async with http.get(f"{relay.url}/metrics") as resp:
                assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = await resp.text()
            assert f'relay_queue_depth{{tunnel="{TUNNEL}"}} 1' in text
            assert f'relay_waiting_callers{{tunnel="{TUNNEL}"}} 1' in text
            assert f'relay_gateway_seen{{tunnel="{TUNNEL}"}} 1' in text
            assert "relay_backend_up 1" in text
            assert f'relay_poll_wait_seconds_count{{tunnel="{TUNNEL}"}} 1' in text
            assert re.search(rf'relay_poll_wait_seconds_bucket{{tunnel="{TUNNEL}",le="\+Inf"}} 1', text)
            # Redis goes away: the waiting caller, a new caller and a poll all get a prompt 503
            await redis.stop()
            outcome = await caller
            assert outcome.status == 503
            assert outcome.body["error"]["code"] == "tunnel_transport_unavailable"
            fresh = await call(http, relay.url_for(TUNNEL), 0, "n")
            assert fresh.status == 503
            assert fresh.body["error"]["code"] == "tunnel_transport_unavailable"
            async with http.get(
                f"{relay.url}/v1/tunnels/{TUNNEL}/poll", params={"timeout_ms": "100"}, headers=GATEWAY
            ) as resp:
                assert resp.status == 503
            async with http.get(f"{relay.url}/readyz") as resp:
                assert resp.status == 503
            async with http.get(f"{relay.url}/metrics") as resp:
                assert "relay_backend_up 0" in await resp.text()
        await redis.start()
        async with http.get(f"{relay.url}/readyz") as resp:
            assert resp.status == 200


async def test_proc_affinity_sessions_stay_on_their_gateway(redis: RedisServer) -> None:
    config = relay_config(redis, client_seen_grace_s=1.0)
    async with replicas(config, 2) as relays, aiohttp.ClientSession(connector=connector()) as http:
        urls = [relay.url for relay in relays]
        pollers = {name: Poller(http, urls, name, server_info=AFFINE_INFO) for name in ("gw-a", "gw-b")}
        async with asyncio.timeout(WAIT * 2), asyncio.TaskGroup() as tg:
            tasks = {name: tg.create_task(run_poller(p)) for name, p in pollers.items()}
            await until(lambda: relays[0].app[BACKEND].client_seen(TUNNEL))
            files = [relay.url_for(TUNNEL, "files") for relay in relays]
            init = await call(http, files[0], 0, "init-1", method="initialize")
            assert init.status == 200
            owner_name = init.body["result"]["by"]
            session = "sess-init-1"
            headers = {"Mcp-Session-Id": session}
            outcomes = await asyncio.gather(
                *(call(http, files[n % 2], n % 2, f"s-{n}", headers=headers) for n in range(40))
            )
            assert {o.body["result"]["by"] for o in outcomes} == {owner_name}  # both gateways were polling
            # the owner stops polling: the session moves to the other gateway
            tasks[owner_name].cancel()
            other = "gw-b" if owner_name == "gw-a" else "gw-a"
            moved = await call(http, files[1], 1, "after", headers=headers)
            assert moved.body["result"]["by"] == other
            backend = relays[0].app[BACKEND]
            assert isinstance(backend, RedisQueue)
            assert await backend.session_owner(TUNNEL, "files", session) == other
            async with http.delete(files[0], headers={"Mcp-Session-Id": session}) as resp:
                assert resp.status == 204
            assert await backend.session_owner(TUNNEL, "files", session) is None
            for task in tasks.values():
                task.cancel()


async def test_a_tunnel_added_and_removed_by_reloads_across_replicas(redis: RedisServer) -> None:
    """Two replicas reloaded with a second tunnel: a gateway polling one replica answers the callers of
    the other on the new tunnel, and the first tunnel serves on beside it. Reloaded without it, each
    replica refuses its callers (404) and its gateway (401), and the first tunnel's queue is left with
    nothing queued or in flight."""
    config = relay_config(redis)
    added = "tunnel_added"
    grown = msgspec.structs.replace(config, tunnels={**config.tunnels, added: TunnelSpec(gateway_key=KEY)})
    async with replicas(config, 2) as (a, b), aiohttp.ClientSession(connector=connector()) as http:
        assert (a.reload(grown), b.reload(grown)) == (None, None)
        pollers = [Poller(http, [b.url], "gw-new", tunnel=added), Poller(http, [a.url], "gw-first")]
        async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
            running = [tg.create_task(run_poller(poller)) for poller in pollers]
            await until(lambda: a.app[BACKEND].client_seen(added))
            await until(lambda: b.app[BACKEND].client_seen(TUNNEL))
            outcomes = await asyncio.gather(
                *(call(http, a.url_for(added), 0, f"new-{n}") for n in range(10)),
                *(call(http, b.url_for(TUNNEL), 1, f"first-{n}") for n in range(10)),
            )
            for task in running:
                task.cancel()
        for outcome in outcomes:
            assert (outcome.status, outcome.body["id"]) == (200, outcome.rpc_id), outcome
        assert sorted(cmd["jsonrpc"]["id"] for cmd in pollers[0].received) == sorted(f"new-{n}" for n in range(10))

        assert (a.reload(config), b.reload(config)) == (None, None)
        for relay in (a, b):
            assert (await call(http, relay.url_for(added), 0, "gone")).status == 404
            async with http.get(f"{relay.url}/v1/tunnels/{added}/poll", headers=GATEWAY) as resp:
                assert resp.status == 401
        status = await a.app[BACKEND].status(TUNNEL)
        assert (status.queued, status.in_flight) == (0, 0)
