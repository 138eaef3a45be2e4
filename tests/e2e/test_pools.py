"""stdio process management end to end: pools with least-loaded dispatch, `max_concurrency`,
per-client processes (isolated, reaped when idle, the one idle longest evicted at the cap), and
readiness that reflects which servers are up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp_types import TextContent
from msgspec import UNSET, Raw

from gateway.protocol.errors import UpstreamUnavailable
from gateway.protocol.mcp import Call, Era, Frame, Notify, Reply, UpstreamInfo
from gateway.protocol.wire import Codec, Headers, JsonRpcMessage
from gateway.upstream.base import Upstream
from gateway.upstream.pool import Bounded, ClientProcesses, StdioPool
from tests.support.harness import PYTHON, SERVERS, Gateway, gateway

MUX = SERVERS / "mux_server.py"


def _stdio(*args: str, extra: str = "") -> str:
    quoted = ", ".join(f'"{a}"' for a in (str(MUX), *args))
    return f'{{stdio: {{command: "{PYTHON}", args: [{quoted}]}}{extra}}}'


def _text(result: Any) -> str:
    assert isinstance(result.content[0], TextContent), result
    return str(result.content[0].text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _gone(pid: int, within_s: float = 15.0) -> None:
    """Until the process has exited (reaped by the gateway)."""
    async with asyncio.timeout(within_s):
        while True:
            if not _alive(pid):
                return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _gateway(
    servers: str, channels: str, tmp_path: Path, extra: str = "", ready: str = r"^gateway: ready$"
) -> AsyncIterator[Gateway]:
    routes = f"relay: {{listen: '127.0.0.1:0'}}\nservers:\n{servers}channels:\n{channels}{extra}"
    async with gateway(routes, tmp_path, ready=ready) as gw:
        yield gw


async def test_pool_spreads_calls_over_its_processes(tmp_path: Path) -> None:
    servers = f"  pool: {_stdio('--name', 'pool', extra=', processes: 3')}\n"
    async with _gateway(servers, "  main: [pool]\n", tmp_path) as gw, Client(gw.urls["main"], mode="auto") as client:
        pids = await asyncio.gather(*(client.call_tool("pid_after", {"ms": 400}) for _ in range(6)))
        counts: dict[str, int] = {}
        for pid in map(_text, pids):
            counts[pid] = counts.get(pid, 0) + 1
        assert sorted(counts.values()) == [2, 2, 2]  # least loaded first: two calls on each process


async def test_max_concurrency_bounds_calls_on_a_server(tmp_path: Path) -> None:
    servers = (
        f"  one: {_stdio('--name', 'one', extra=', max_concurrency: 1')}\n"
        f"  many: {_stdio('--name', 'many')}\n"
        f"  limited: {_stdio('--name', 'limited', extra=', processes: 2, max_concurrency: 3')}\n"
    )
    channels = "  one: [one]\n  many: [many]\n  pool: [limited]\n"
    async with _gateway(servers, channels, tmp_path) as gw:
        for channel, peak in (("one", 1), ("many", 5)):
            async with Client(gw.urls[channel], mode="auto") as client:
                await asyncio.gather(*(client.call_tool("track", {"ms": 150}) for _ in range(5)))
                assert _text(await client.call_tool("peak", {})) == str(peak)
        async with Client(gw.urls["pool"], mode="auto") as client:
            # 6 calls, at most 3 at once, spread over 2 processes: never more than 2 at once on either.
            pids = await asyncio.gather(*(client.call_tool("pid_after", {"ms": 200}) for _ in range(6)))
            assert len({_text(p) for p in pids}) == 2
            peaks = {_text(await client.call_tool("peak", {})) for _ in range(4)}
            assert peaks == {"0"}  # `track` never ran here: the peak is per process
            await asyncio.gather(*(client.call_tool("track", {"ms": 150}) for _ in range(6)))
            peaks = {_text(await client.call_tool("peak", {})) for _ in range(6)}
            assert max(map(int, peaks)) <= 2


PER_CLIENT = (
    f"  stateful: {_stdio('--name', 'stateful', '--legacy', extra=', session: per-client, idle_timeout_s: 1.5')}\n"
    f"  shared: {_stdio('--name', 'shared')}\n"
)


async def test_per_client_processes_are_isolated_and_reaped_when_idle(tmp_path: Path) -> None:
    async with (
        _gateway(PER_CLIENT, "  main: [stateful, shared]\n", tmp_path) as gw,
        Client(gw.urls["main"], mode="legacy") as alice,
        Client(gw.urls["main"], mode="legacy") as bob,
    ):
        # State set by one client is invisible to the other: each has its own process.
        assert [_text(await alice.call_tool("stateful__counter_incr", {})) for _ in range(3)] == ["1", "2", "3"]
        assert _text(await bob.call_tool("stateful__counter_incr", {})) == "1"
        alice_pid = int(_text(await alice.call_tool("stateful__whoami", {})))
        bob_pid = int(_text(await bob.call_tool("stateful__whoami", {})))
        assert alice_pid != bob_pid
        # The shared server is one process for everyone.
        shared = {_text(await c.call_tool("shared__whoami", {})) for c in (alice, bob)}
        assert len(shared) == 1

        # Idle past the timeout: the process is stopped; the session's next call starts a fresh one.
        await _gone(alice_pid)
        await _gone(bob_pid)
        assert _text(await alice.call_tool("stateful__counter_incr", {})) == "1"
        assert int(_text(await alice.call_tool("stateful__whoami", {}))) not in (alice_pid, bob_pid)

        # A 2026-07-28 client has no session: it gets the server's shared process.
        async with Client(gw.urls["main"], mode="auto") as modern:
            first = _text(await modern.call_tool("stateful__whoami", {}))
            assert _text(await modern.call_tool("stateful__whoami", {})) == first


async def test_per_client_cap_evicts_the_session_idle_longest(tmp_path: Path) -> None:
    servers = f"  stateful: {_stdio('--name', 'stateful', extra=', session: per-client, max_sessions: 2')}\n"
    async with (
        _gateway(servers, "  main: [stateful]\n", tmp_path) as gw,
        Client(gw.urls["main"], mode="legacy") as first,
        Client(gw.urls["main"], mode="legacy") as second,
        Client(gw.urls["main"], mode="legacy") as third,
    ):
        first_pid = int(_text(await first.call_tool("whoami", {})))
        second_pid = int(_text(await second.call_tool("whoami", {})))
        await first.call_tool("counter_incr", {})  # first is now the most recently used
        third_pid = int(_text(await third.call_tool("whoami", {})))
        await _gone(second_pid)  # the one idle longest made room
        assert _alive(first_pid)
        assert _alive(third_pid)
        assert _text(await first.call_tool("counter_incr", {})) == "2"


async def test_start_waits_for_servers_and_readiness_names_the_down_ones(tmp_path: Path) -> None:
    servers = (
        f"  pool: {_stdio('--name', 'pool', extra=', processes: 2')}\n"
        "  broken: {stdio: {command: /nonexistent/mcp-server}, startup_timeout_s: 2}\n"
        "  optional: {stdio: {command: /nonexistent/other}, startup_timeout_s: 2, required: false}\n"
    )
    channels = "  main: [pool, broken]\n  side: [optional]\n"
    waiting = r"^waiting: servers\.broken \(could not be started \(No such file or directory\)\)$"
    async with _gateway(servers, channels, tmp_path, "ops: {listen: '127.0.0.1:0'}\n", ready=waiting) as gw:
        url = next(m[1] for line in gw.process.lines if (m := re.match(r"ops: listening on (\S+)", line)))
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
            assert _text(await client.call_tool("pool__echo", {"text": "up"})) == "up"


# --------------------------------------------------------------------------- the wrappers, with fakes


class FakeProcess(Upstream):
    """An Upstream that answers at once, or when `release` is set (method `slow`), or first asks the
    client something (method `ask`)."""

    transport = "stdio"

    def __init__(self, name: str = "fake") -> None:
        super().__init__(name, 1.0)
        self.release = asyncio.Event()
        self.running = 0
        self.answered: list[bytes] = []
        self.closed = False

    async def start(self) -> None:
        self._up(UpstreamInfo(Era.LEGACY, "2025-11-25", Raw(b"{}"), Raw(b'{"name":"fake"}')))

    async def close(self) -> None:
        self.closed = True
        self._down()

    async def exchange(self, call: Call) -> AsyncIterator[Frame]:
        self.running += 1
        try:
            if call.method == "ask":
                yield Notify(CODEC.request(Raw(b'"srv-1"'), "elicitation/create", Raw(b"{}")))
            if call.method == "slow":
                await self.release.wait()
            yield Reply(200, CODEC.result(call.id or Raw(b"0"), Raw(b"{}")))
        finally:
            self.running -= 1

    async def respond(self, message: JsonRpcMessage, headers: Headers, own_session: bool) -> Reply:
        assert message.id is not UNSET
        self.answered.append(bytes(message.id))
        return Reply(202)

    async def end_session(self, headers: Headers) -> Reply:
        return Reply(405)


CODEC = Codec()


async def _drain(frames: AsyncIterator[Frame]) -> list[Frame]:
    return [frame async for frame in frames]


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def test_pool_picks_the_least_loaded_process_and_routes_answers_back() -> None:
    processes = [FakeProcess() for _ in range(3)]
    pool = StdioPool("fake", list(processes), CODEC)
    await pool.start()
    assert pool.ready
    slow = [asyncio.create_task(_drain(pool.exchange(Call("slow", Raw(b"1"))))) for _ in range(2)]
    await _until(lambda: pool.loads == [1, 1, 0])
    await _drain(pool.exchange(Call("quick", Raw(b"2"))))
    for process in processes:
        process.release.set()
    await asyncio.gather(*slow)
    assert pool.loads == [0, 0, 0]

    # A process's request to the client carries an id naming the process; the answer reaches it.
    processes[0].release.clear()
    busy = asyncio.create_task(_drain(pool.exchange(Call("slow", Raw(b"3")))))
    await _until(lambda: pool.loads[0] == 1)
    (asked, _) = await _drain(pool.exchange(Call("ask", Raw(b"4"))))
    assert isinstance(asked, Notify)
    request = CODEC.message(asked.message)
    assert request.id is not UNSET
    answer = JsonRpcMessage(jsonrpc="2.0", id=request.id, result=Raw(b"{}"))
    assert (await pool.respond(answer, {}, True)).status == 202
    assert processes[1].answered == [b'"srv-1"']
    assert (
        await pool.respond(JsonRpcMessage(jsonrpc="2.0", id=Raw(b'"srv-1"'), result=Raw(b"{}")), {}, True)
    ).status == 404
    processes[0].release.set()
    await busy
    await pool.close()
    assert all(process.closed for process in processes)


async def test_bounded_lets_limit_calls_run_at_once() -> None:
    inner = FakeProcess()
    bounded = Bounded(inner, 1)
    await bounded.start()
    first = asyncio.create_task(_drain(bounded.exchange(Call("slow", Raw(b"1")))))
    second = asyncio.create_task(_drain(bounded.exchange(Call("slow", Raw(b"2")))))
    await _until(lambda: inner.running == 1)
    await asyncio.sleep(0.05)
    assert inner.running == 1  # the second waits its turn
    inner.release.set()
    await asyncio.gather(first, second)


async def test_client_processes_evict_the_idle_longest_and_refuse_when_all_are_busy() -> None:
    made: list[FakeProcess] = []

    def factory() -> FakeProcess:
        made.append(FakeProcess())
        return made[-1]

    sessions = ClientProcesses(factory(), factory, max_sessions=2, idle_timeout_s=0.2)
    await sessions.start()
    a = await sessions.for_session("a")
    b = await sessions.for_session("b")
    assert await sessions.for_session("a") is not a  # a fresh view, the same process
    await _drain(a.exchange(Call("quick", Raw(b"1"))))  # a is now the most recently used
    await sessions.for_session("c")
    assert made[2].closed  # b's process (made[2]) was idle longest
    assert not made[1].closed
    # Every process busy: a new session is refused.
    busy = [
        asyncio.create_task(_drain((await sessions.for_session(s)).exchange(Call("slow", Raw(b"2")))))
        for s in ("a", "c")
    ]
    await _until(lambda: made[1].running == 1 and made[3].running == 1)
    with pytest.raises(UpstreamUnavailable):
        await sessions.for_session("d")
    for process in made:
        process.release.set()
    await asyncio.gather(*busy)
    assert b is not None
    # Idle past the timeout: reaped.
    await _until(lambda: sessions.sessions == 0)
    await sessions.close()
    assert made[0].closed  # the shared process
