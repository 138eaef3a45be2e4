"""stdio process management end to end: pools with least-loaded dispatch, `max_concurrency`, per-client
processes (isolated, reaped when idle, the one idle longest evicted at the cap), and readiness that reflects which
servers are up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
from mcp import Client

from tests.support.harness import Gateway, gateway, mux_stdio, tool_text
from tests.support.ops import ops_url
from tests.support.procfs import pid_exists
from tests.support.waiting import until


async def _gone(pid: int, within_s: float = 15.0) -> None:
    """Until the process has exited (reaped by the gateway)."""
    await until(lambda: not pid_exists(pid), within_s, every_s=0.05)


@contextlib.asynccontextmanager
async def _gateway(
    servers: str, channels: str, tmp_path: Path, extra: str = "", ready: str = r"^gateway: ready$"
) -> AsyncIterator[Gateway]:
    routes = f"relay: {{listen: '127.0.0.1:0'}}\nservers:\n{servers}channels:\n{channels}{extra}"
    async with gateway(routes, tmp_path, ready=ready) as gw:
        yield gw


async def test_pool_spreads_calls_over_its_processes(tmp_path: Path) -> None:
    servers = f"  pool: {mux_stdio('--name', 'pool', extra=', processes: 3')}\n"
    async with _gateway(servers, "  main: [pool]\n", tmp_path) as gw, Client(gw.urls["main"], mode="auto") as client:
        pids = await asyncio.gather(*(client.call_tool("pid_after", {"ms": 400}) for _ in range(6)))
        counts: dict[str, int] = {}
        for pid in map(tool_text, pids):
            counts[pid] = counts.get(pid, 0) + 1
        assert sorted(counts.values()) == [2, 2, 2]  # least loaded first: two calls on each process


async def test_max_concurrency_bounds_calls_on_a_server(tmp_path: Path) -> None:
    servers = (
        f"  one: {mux_stdio('--name', 'one', extra=', max_concurrency: 1')}\n"
        f"  many: {mux_stdio('--name', 'many')}\n"
        f"  limited: {mux_stdio('--name', 'limited', extra=', processes: 2, max_concurrency: 3')}\n"
    )
    channels = "  one: [one]\n  many: [many]\n  pool: [limited]\n"
    async with _gateway(servers, channels, tmp_path) as gw:
        for channel, peak in (("one", 1), ("many", 5)):
            async with Client(gw.urls[channel], mode="auto") as client:
                await asyncio.gather(*(client.call_tool("track", {"ms": 150}) for _ in range(5)))
                assert tool_text(await client.call_tool("peak", {})) == str(peak)
        async with Client(gw.urls["pool"], mode="auto") as client:
            # 6 calls, at most 3 at once, spread over 2 processes: never more than 2 at once on either.
            pids = await asyncio.gather(*(client.call_tool("pid_after", {"ms": 200}) for _ in range(6)))
            assert len({tool_text(p) for p in pids}) == 2
            peaks = {tool_text(await client.call_tool("peak", {})) for _ in range(4)}
            assert peaks == {"0"}  # `track` never ran here: the peak is per process
            await asyncio.gather(*(client.call_tool("track", {"ms": 150}) for _ in range(6)))
            peaks = {tool_text(await client.call_tool("peak", {})) for _ in range(6)}
            assert max(map(int, peaks)) <= 2


PER_CLIENT = (
    f"  stateful: {mux_stdio('--name', 'stateful', '--legacy', extra=', session: per-client, idle_timeout_s: 1.5')}\n"
    f"  shared: {mux_stdio('--name', 'shared')}\n"
)


async def test_per_client_processes_are_isolated_and_reaped_when_idle(tmp_path: Path) -> None:
    async with (
        _gateway(PER_CLIENT, "  main: [stateful, shared]\n", tmp_path) as gw,
        Client(gw.urls["main"], mode="legacy") as alice,
        Client(gw.urls["main"], mode="legacy") as bob,
    ):
        # State set by one client is invisible to the other: each has its own process.
        assert [tool_text(await alice.call_tool("stateful__counter_incr", {})) for _ in range(3)] == ["1", "2", "3"]
        assert tool_text(await bob.call_tool("stateful__counter_incr", {})) == "1"
        alice_pid = int(tool_text(await alice.call_tool("stateful__whoami", {})))
        bob_pid = int(tool_text(await bob.call_tool("stateful__whoami", {})))
        assert alice_pid != bob_pid
        # The shared server is one process for everyone.
        shared = {tool_text(await c.call_tool("shared__whoami", {})) for c in (alice, bob)}
        assert len(shared) == 1

        # Idle past the timeout: the process is stopped; the session's next call starts a fresh one.
        await _gone(alice_pid)
        await _gone(bob_pid)
        assert tool_text(await alice.call_tool("stateful__counter_incr", {})) == "1"
        assert int(tool_text(await alice.call_tool("stateful__whoami", {}))) not in (alice_pid, bob_pid)

        # A 2026-07-28 client has no session: it gets the server's shared process.
        async with Client(gw.urls["main"], mode="auto") as modern:
            first = tool_text(await modern.call_tool("stateful__whoami", {}))
            assert tool_text(await modern.call_tool("stateful__whoami", {})) == first


async def test_per_client_cap_evicts_the_session_idle_longest(tmp_path: Path) -> None:
    servers = f"  stateful: {mux_stdio('--name', 'stateful', extra=', session: per-client, max_sessions: 2')}\n"
    async with (
        _gateway(servers, "  main: [stateful]\n", tmp_path) as gw,
        Client(gw.urls["main"], mode="legacy") as first,
        Client(gw.urls["main"], mode="legacy") as second,
        Client(gw.urls["main"], mode="legacy") as third,
    ):
        first_pid = int(tool_text(await first.call_tool("whoami", {})))
        second_pid = int(tool_text(await second.call_tool("whoami", {})))
        await first.call_tool("counter_incr", {})  # first is now the most recently used
        third_pid = int(tool_text(await third.call_tool("whoami", {})))
        await _gone(second_pid)  # the one idle longest made room
        assert pid_exists(first_pid)
        assert pid_exists(third_pid)
        assert tool_text(await first.call_tool("counter_incr", {})) == "2"


async def test_start_waits_for_servers_and_readiness_names_the_down_ones(tmp_path: Path) -> None:
    servers = (
        f"  pool: {mux_stdio('--name', 'pool', extra=', processes: 2')}\n"
        "  broken: {stdio: {command: /nonexistent/mcp-server}, startup_timeout_s: 2}\n"
        "  optional: {stdio: {command: /nonexistent/other}, startup_timeout_s: 2, required: false}\n"
    )
    channels = "  main: [pool, broken]\n  side: [optional]\n"
    waiting = r"^waiting: servers\.broken \(could not be started \(No such file or directory\)\)$"
    async with _gateway(servers, channels, tmp_path, "ops: {listen: '127.0.0.1:0'}\n", ready=waiting) as gw:
        url = ops_url(gw.process)
        async with httpx2.AsyncClient() as http:
            ready = await http.get(f"{url}/readyz")
        body = ready.json()
        assert ready.status_code == 503
        assert body["checks"]["servers.pool"] == "up"
        assert body["checks"]["servers.broken"] == "down"
        assert "servers.broken" in body["not_ready"]
        assert "servers.optional" not in body["not_ready"]
        # The channel serves what is up.
        async with Client(gw.urls["main"], mode="auto") as client:
            assert tool_text(await client.call_tool("pool__echo", {"text": "up"})) == "up"
