"""The relay on Redis with real processes: `gateway relay` replicas and a gateway killed mid-run (nothing runs
twice, no call hangs), and real `gateway` processes keeping `session: per-client` stdio sessions on their owner."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from mcp import Client
from mcp_types import TextContent

from gateway.relay import BACKEND
from tests.support.harness import PYTHON, Process, gateway, process, stdio_server
from tests.support.redis_relay import (
    KEY,
    TUNNEL,
    WAIT,
    Outcome,
    Poller,
    call,
    connector,
    relay_config,
    replicas,
    run_poller,
)
from tests.support.redis_server import RedisServer
from tests.support.waiting import until


async def _relay_process(stack: contextlib.AsyncExitStack, config_file: Path) -> tuple[Process, str]:
    proc = await stack.enter_async_context(process(PYTHON, "-m", "gateway.cli", "relay", "--config", config_file))
    match = await proc.wait_for(r"relay: ready (\S+)")
    return proc, match[1]


@pytest.mark.timeout(600)  # heavy: generous on a loaded machine; finishes in well under a minute
async def test_kill_a_relay_and_a_gateway_mid_run(redis: RedisServer, tmp_path: Path) -> None:
    """3 `gateway relay` processes, 2 gateways; SIGKILL one relay and crash one gateway mid-run.

    Counted: no command reaches a gateway twice; every call ends (no hang); callers of the
    killed relay get a connection error; callers elsewhere get their answer, or a 504 only
    when their command was abandoned by the crashed gateway or lost inside a poll response
    of the killed relay (then no gateway ever received it).
    """
    config_file = tmp_path / "relay.yaml"
    config_file.write_text(
        "listen: '127.0.0.1:0'\n"
        "response_timeout_s: 25\n"
        f"tunnels: {{{TUNNEL}: {{gateway_key: {KEY}}}}}\n"
        f"backend: {{kind: redis, url: '{redis.url}', key_prefix: kill, replica_ttl_s: 10, recheck_s: 0.2}}\n"
    )
    total, victim = 600, 1
    async with contextlib.AsyncExitStack() as stack:
        started = [await _relay_process(stack, config_file) for _ in range(3)]
        urls = [url for _, url in started]
        http = await stack.enter_async_context(aiohttp.ClientSession(connector=connector()))
        steady = Poller(http, urls, "gw-steady")
        crashing = Poller(http, urls, "gw-crash", crash_after=total // 4)
        async with asyncio.timeout(600), asyncio.TaskGroup() as tg:
            pollers = [tg.create_task(run_poller(p)) for p in (steady, crashing)]
            await until(lambda: _seen_over_http(http, urls[0]))
            gate = asyncio.Semaphore(24)
            done = 0
            killed = asyncio.Event()

            async def one(n: int) -> Outcome:
                nonlocal done
                async with gate:
                    relay = n % 3
                    outcome = await call(http, f"{urls[relay]}/v1/mcp/{TUNNEL}", relay, f"k-{n}")
                done += 1
                if done == total // 3 and not killed.is_set():
                    killed.set()
                    started[victim][0].proc.send_signal(signal.SIGKILL)
                return outcome

            outcomes = await asyncio.gather(*(one(n) for n in range(total)))
            for task in pollers:
                task.cancel()
        assert killed.is_set()
    delivered = Counter(cmd["jsonrpc"]["id"] for p in (steady, crashing) for cmd in p.received)
    assert max(delivered.values()) == 1  # nothing ran twice
    stranded = {cmd["jsonrpc"]["id"] for cmd in crashing.received}  # the crashed gateway may not have answered
    lost_in_transit = 0
    for outcome in outcomes:
        if outcome.error is not None:
            assert outcome.relay == victim, outcome  # only the killed relay's callers lose their connection
        elif outcome.status == 200:
            assert outcome.body["id"] == outcome.rpc_id
            assert delivered[outcome.rpc_id] == 1
        else:
            assert outcome.status == 504, outcome  # an error, never a hang
            if outcome.rpc_id not in stranded:
                assert outcome.rpc_id not in delivered, outcome  # lost in a poll answer of the killed relay
                lost_in_transit += 1
    assert crashing.abandoned  # the crash did strand commands...
    for outcome in outcomes:  # ...and their callers got a 504 (or lost their connection to the killed relay)
        if outcome.rpc_id in crashing.abandoned:
            assert outcome.status == 504 or outcome.relay == victim, outcome
    assert any(o.error is not None for o in outcomes)  # the kill cut some callers off
    assert lost_in_transit <= 2 * 25  # at most one batch per gateway was on the wire when it died
    assert sum(1 for o in outcomes if o.status == 200) >= total // 2


async def _seen_over_http(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(f"{url}/metrics") as resp:
        return f'relay_gateway_seen{{tunnel="{TUNNEL}"}} 1' in await resp.text()


@pytest.mark.timeout(600)  # heavy: generous on a loaded machine; finishes in well under a minute
async def test_real_gateways_keep_stdio_sessions_on_their_owner(redis: RedisServer, tmp_path: Path) -> None:
    """Two `gateway` processes (one per relay replica) serving a `session: per-client` stdio server.

    Each client session lives in one gateway's process: every call of a session must reach that
    gateway (its per-process counter counts 1, 2, 3, ...), although both gateways poll all the time.
    """
    config = relay_config(redis, client_seen_grace_s=2.0)
    server = stdio_server()[:-1] + ", session: per-client}"
    async with replicas(config, 2) as relays, contextlib.AsyncExitStack() as stack:
        for n, relay in enumerate(relays):
            folder = tmp_path / f"gw{n}"
            folder.mkdir()
            routes = (
                f"control_plane: {{url: '{relay.url}', tunnel_id: {TUNNEL}, api_key: {KEY}}}\n"
                f"servers:\n  srv: {server}\nchannels:\n  main: [srv]\n"
            )
            await stack.enter_async_context(gateway(routes, folder))
        await until(lambda: relays[0].app[BACKEND].client_seen(TUNNEL))

        async def session(n: int) -> list[str]:
            url = relays[n % 2].url_for(TUNNEL)
            async with Client(url, mode="legacy") as client:
                seen: list[str] = []
                for _ in range(8):
                    content = (await client.call_tool("counter_incr", {})).content
                    assert isinstance(content[0], TextContent)
                    seen.append(content[0].text)
                return seen

        async with asyncio.timeout(WAIT * 2):
            counts = await asyncio.gather(*(session(n) for n in range(6)))
        assert counts == [[str(i) for i in range(1, 9)]] * 6
