"""Real `gateway` processes as replicas of one tunnel, behind relay replicas sharing a real Redis.

The relay replicas are in-process `Relay` objects on one redis-server (tests/support/redis_server.py);
the gateways are real `gateway` processes (`--control-plane URL --tunnel-id ID`, key from
TUNNEL_API_KEY), each polling its own relay replica while callers talk to every replica.
Nothing here asserts on timing: waits are for conditions, bounded by generous timeouts,
and every assertion is a count made at the callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.relay import BACKEND, Relay
from tests.support.harness import Gateway, gateway, mux_http, mux_stdio
from tests.support.redis_relay import KEY, TUNNEL, WAIT, connector, relay_config, replicas
from tests.support.redis_server import RedisServer
from tests.support.waiting import until

SECRET = "the replicas share this session key"
ACCEPT = {"Accept": "application/json, text/event-stream"}


def _stdio_routes() -> str:
    """One stdio server (a process per gateway): `pid_after` tells which gateway ran a call."""
    return f"servers:\n  srv: {mux_stdio('--name', 'srv')}\nchannels:\n  main: [srv]\n"


async def _start_gateway(
    stack: contextlib.AsyncExitStack, routes: str, relay: Relay, folder: Path, **env: str
) -> Gateway:
    await asyncio.to_thread(folder.mkdir)
    args = ("--control-plane", relay.url, "--tunnel-id", TUNNEL)
    return await stack.enter_async_context(gateway(routes, folder, *args, env={"TUNNEL_API_KEY": KEY, **env}))


async def _seen(relay: Relay) -> bool:
    return bool(await relay.app[BACKEND].client_seen(TUNNEL))


@dataclass
class Outcome:
    n: int
    relay: int
    status: int | None = None
    body: Any = None
    error: str | None = None

    @property
    def pid(self) -> int:
        """The stdio server pid in a successful `pid_after` answer."""
        assert self.status == 200, self
        assert self.body["id"] == self.n, self
        result = self.body["result"]
        assert not result.get("isError"), self
        return int(result["content"][0]["text"])


async def _call(http: aiohttp.ClientSession, relays: list[Relay], n: int, ms: int = 0) -> Outcome:
    """One stateless `tools/call pid_after` through relay replica `n % len(relays)`."""
    relay = n % len(relays)
    message = {
        "jsonrpc": "2.0",
        "id": n,
        "method": "tools/call",
        "params": {"name": "pid_after", "arguments": {"ms": ms}},
    }
    try:
        async with http.post(relays[relay].url_for(TUNNEL), json=message, headers=ACCEPT) as resp:
            raw = await resp.read()
            return Outcome(n, relay, resp.status, _decode(raw))
    except aiohttp.ClientError as exc:
        return Outcome(n, relay, error=type(exc).__name__)


def _decode(raw: bytes) -> Any:
    """A JSON body, or the last `data:` event of an SSE body."""
    if not raw:
        return None
    text = raw.decode()
    if text.lstrip().startswith("{"):
        return json.loads(text)
    events = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    return json.loads(events[-1]) if events else text


# =========================================================================== 1. load sharing


@pytest.mark.timeout(180)
async def test_two_real_gateways_share_the_load_over_three_relays(redis: RedisServer, tmp_path: Path) -> None:
    """~300 calls spread over 3 relay replicas; 2 gateway processes (each polling its own replica)
    answer them all, each exactly once, and both serve some (two distinct stdio pids)."""
    total = 300
    async with (
        replicas(relay_config(redis), 3) as relays,
        contextlib.AsyncExitStack() as stack,
        aiohttp.ClientSession(connector=connector()) as http,
    ):
        for n in range(2):
            await _start_gateway(stack, _stdio_routes(), relays[n], tmp_path / f"gw{n}")
        await until(lambda: _seen(relays[2]))
        gate = asyncio.Semaphore(16)

        async def one(n: int) -> Outcome:
            async with gate:
                return await _call(http, relays, n, ms=5)

        async with asyncio.timeout(WAIT * 2):
            outcomes = await asyncio.gather(*(one(n) for n in range(total)))
        pids = Counter(outcome.pid for outcome in outcomes)  # every call: 200, its own id, one answer
        assert sum(pids.values()) == total
        assert len(pids) == 2, pids  # both gateways (each with its own stdio process) served calls
        assert Counter(o.relay for o in outcomes) == {0: 100, 1: 100, 2: 100}
        polled = await _polled(http, relays)
        assert polled == total  # each command handed to exactly one gateway poll (no redelivery)
        status = await relays[0].app[BACKEND].status(TUNNEL)
        assert (status.queued, status.in_flight) == (0, 0)


# =========================================================================== 2. a gateway dies


@pytest.mark.timeout(180)
async def test_sigkill_one_gateway_mid_run(redis: RedisServer, tmp_path: Path) -> None:
    """SIGKILL one of two gateway processes while calls are running.

    Counted at the callers: every call ends (no hang); a 200 carries its own id and a pid of one of
    the two stdio servers; calls the dead gateway had taken get a 504 at their deadline, never a
    second run elsewhere; every call made after the kill is answered by the survivor.
    """
    total, gate_size = 240, 12
    config = relay_config(redis, response_timeout_s=6.0)
    async with (
        replicas(config, 3) as relays,
        contextlib.AsyncExitStack() as survivor_stack,
        aiohttp.ClientSession(connector=connector()) as http,
    ):
        survivor = await _start_gateway(survivor_stack, _stdio_routes(), relays[0], tmp_path / "survivor")
        async with contextlib.AsyncExitStack() as victim_stack:
            victim = await _start_gateway(victim_stack, _stdio_routes(), relays[1], tmp_path / "victim")
            await until(lambda: _seen(relays[2]))
            survivor_pid = await _stdio_child(survivor)
            victim_pid = await _stdio_child(victim)
            gate = asyncio.Semaphore(gate_size)
            by_victim = 0
            victim_killed = False
            killed = asyncio.Event()
            after_kill: set[int] = set()

            async def one(n: int) -> Outcome:
                nonlocal by_victim, victim_killed
                async with gate:
                    if killed.is_set():
                        after_kill.add(n)
                    outcome = await _call(http, relays, n, ms=50)
                if outcome.status == 200 and outcome.pid == victim_pid:
                    by_victim += 1
                if by_victim >= 10 and not victim_killed:  # mid-run: the victim is serving calls
                    victim_killed = True
                    victim.process.proc.send_signal(signal.SIGKILL)
                    await victim.process.proc.wait()
                    # Its relay may still hold a poll whose socket it has not yet seen close; calls that
                    # start once that relay let go of the victim's polls must all reach the survivor.
                    await until(lambda: _no_polls_waiting(http, relays[1]))
                    killed.set()
                return outcome

            async with asyncio.timeout(WAIT * 2):
                outcomes = await asyncio.gather(*(one(n) for n in range(total)))
            assert killed.is_set()
            assert victim.process.proc.returncode == -signal.SIGKILL
        answered = Counter[int]()
        failed = []
        for outcome in outcomes:
            if outcome.status == 200:
                answered[outcome.pid] += 1
            else:
                assert outcome.error is None, outcome  # the relays live: no caller loses its connection
                assert outcome.status == 504, outcome  # an error at the deadline, never a hang
                failed.append(outcome.n)
        assert answered[victim_pid] >= 1
        assert answered[survivor_pid] >= 1
        assert sum(answered.values()) + len(failed) == total  # every call ended exactly once
        # Only what the victim held when it died (at most `gate_size` calls are in flight, plus
        # one poll batch on the wire) is lost; everything else reached the survivor.
        assert len(failed) <= gate_size + 25, failed
        late = [o for o in outcomes if o.n in after_kill]
        assert late
        assert all(o.status == 200 and o.pid == survivor_pid for o in late), [o for o in late if o.status != 200]
        # the survivor keeps serving, and nothing is left behind in Redis
        assert (await _call(http, relays, 99_999)).pid == survivor_pid
        status = await relays[0].app[BACKEND].status(TUNNEL)
        assert (status.queued, status.in_flight) == (0, 0)
        # no command was handed out twice: not those the victim took and never answered either
        assert await _polled(http, relays) == total + 1
        assert survivor.process.proc.returncode is None


async def _metric(http: aiohttp.ClientSession, relay: Relay, name: str) -> int:
    """One of the relay's per-tunnel /metrics values."""
    async with http.get(f"{relay.url}/metrics") as resp:
        text = await resp.text()
    line = next(x for x in text.splitlines() if x.startswith(f'{name}{{tunnel="{TUNNEL}"}}'))
    return int(float(line.rsplit(" ", 1)[1]))


async def _polled(http: aiohttp.ClientSession, relays: list[Relay]) -> int:
    """Commands handed to gateway polls, summed over the relay replicas."""
    return sum([await _metric(http, relay, "relay_commands_polled_total") for relay in relays])


async def _no_polls_waiting(http: aiohttp.ClientSession, relay: Relay) -> bool:
    return await _metric(http, relay, "relay_polls_waiting") == 0


def _children(parent: int) -> list[int]:
    """Pids of `parent`'s mux_server children (from /proc: ppid and command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and b"mux_server" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


async def _stdio_child(gw: Gateway) -> int:
    """The pid of the stdio server gateway `gw` spawned (each gateway has exactly one)."""

    async def spawned() -> bool:
        return bool(await asyncio.to_thread(_children, gw.process.proc.pid))

    await until(spawned)
    (pid,) = await asyncio.to_thread(_children, gw.process.proc.pid)
    return pid


# =========================================================================== 3. session resume


async def _rpc(
    http: aiohttp.ClientSession, relay: Relay, rpc_id: int, method: str, params: dict[str, Any], session: str | None
) -> tuple[int, dict[str, str], Any]:
    headers = {**ACCEPT, "Mcp-Session-Id": session} if session else ACCEPT
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if not method.startswith("notifications/"):
        message["id"] = rpc_id
    async with http.post(relay.url_for(TUNNEL), json=message, headers=headers) as resp:
        return resp.status, dict(resp.headers), _decode(await resp.read())


async def _tool(http: aiohttp.ClientSession, relay: Relay, rpc_id: int, session: str, name: str, **args: Any) -> str:
    status, _, body = await _rpc(http, relay, rpc_id, "tools/call", {"name": name, "arguments": args}, session)
    assert status == 200, (status, body)
    assert body["id"] == rpc_id, body
    assert not body["result"].get("isError"), body
    return str(body["result"]["content"][0]["text"])


@pytest.mark.timeout(180)
async def test_http_session_resumes_on_another_gateway_and_relay(redis: RedisServer, tmp_path: Path) -> None:
    """An aggregated channel of two handshake-era HTTP servers (each refuses calls without its session):
    the client's session, sealed with the `sessions.key` both gateways share, is opened through gateway A;
    A stops; the same session's next calls are served by gateway B (polling another relay replica) with
    no new initialize and the same upstream sessions. The client talks to a third replica throughout."""
    async with (
        replicas(relay_config(redis), 3) as relays,
        mux_http("--legacy", name="h") as h_url,
        mux_http("--legacy", name="k") as k_url,
        aiohttp.ClientSession(connector=connector()) as http,
    ):
        routes = (
            f"servers:\n  h: {{http: {{url: '{h_url}'}}}}\n  k: {{http: {{url: '{k_url}'}}}}\n"
            "channels:\n  main: [h, k]\nsessions: {key: env:SESSION_KEY}\n"
        )
        async with contextlib.AsyncExitStack() as b_stack, contextlib.AsyncExitStack() as a_stack:
            a = await _start_gateway(a_stack, routes, relays[0], tmp_path / "gw-a", SESSION_KEY=SECRET)
            await until(lambda: _seen(relays[2]))
            client = relays[2]
            init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
            status, headers, body = await _rpc(http, client, 1, "initialize", init, None)
            assert status == 200, body
            session = {k.lower(): v for k, v in headers.items()}["mcp-session-id"]
            assert session.startswith("g1."), session  # sealed by the gateway, not an upstream id
            status, _, body = await _rpc(http, client, 0, "notifications/initialized", {}, session)
            assert status == 202, body
            held_h = await _tool(http, client, 2, session, "h__session_header")
            held_k = await _tool(http, client, 3, session, "k__session_header")
            assert held_h
            assert held_k
            assert held_h != held_k
            assert await _tool(http, client, 4, session, "h__echo", text="on A") == "on A"

            b = await _start_gateway(b_stack, routes, relays[1], tmp_path / "gw-b", SESSION_KEY=SECRET)
            await a_stack.aclose()  # gateway A stops; only B, polling another replica, is left
            assert a.process.proc.returncode is not None
            # the second call of the same client session, no initialize in between: B opens the sealed id
            assert await _tool(http, client, 5, session, "k__echo", text="on B") == "on B"
            assert await _tool(http, client, 6, session, "h__session_header") == held_h
            assert await _tool(http, client, 7, session, "k__session_header") == held_k
            assert b.process.proc.returncode is None
            # a session B cannot open is refused, so the resume above was not a silent re-initialize
            status, _, body = await _rpc(
                http, client, 8, "tools/call", {"name": "h__echo", "arguments": {"text": "x"}}, "g1.forged"
            )
            assert status == 404, body
