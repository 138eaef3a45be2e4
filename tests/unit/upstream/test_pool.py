"""gateway.upstream.pool with fake processes (our `Upstream` interface): the least-loaded pick and answers routed
back, `Bounded`, per-client processes evicted when idle and refused when all are busy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from msgspec import UNSET, Raw

from gateway.protocol.errors import UpstreamUnavailable
from gateway.protocol.mcp import Call, Era, Frame, Notify, Reply, UpstreamInfo
from gateway.protocol.wire import Codec, Headers, JsonRpcMessage
from gateway.upstream.base import Upstream
from gateway.upstream.pool import Bounded, ClientProcesses, StdioPool
from tests.support.waiting import until

CODEC = Codec()


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


async def _drain(frames: AsyncIterator[Frame]) -> list[Frame]:
    return [frame async for frame in frames]


async def test_pool_picks_the_least_loaded_process_and_routes_answers_back() -> None:
    processes = [FakeProcess() for _ in range(3)]
    pool = StdioPool("fake", list(processes), CODEC)
    await pool.start()
    assert pool.ready
    slow = [asyncio.create_task(_drain(pool.exchange(Call("slow", Raw(b"1"))))) for _ in range(2)]
    await until(lambda: pool.loads == [1, 1, 0], 5, every_s=0.01)
    await _drain(pool.exchange(Call("quick", Raw(b"2"))))
    for process in processes:
        process.release.set()
    await asyncio.gather(*slow)
    assert pool.loads == [0, 0, 0]

    # A process's request to the client carries an id naming the process; the answer reaches it.
    processes[0].release.clear()
    busy = asyncio.create_task(_drain(pool.exchange(Call("slow", Raw(b"3")))))
    await until(lambda: pool.loads[0] == 1, 5, every_s=0.01)
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
    await until(lambda: inner.running == 1, 5, every_s=0.01)
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
    await until(lambda: made[1].running == 1 and made[3].running == 1, 5, every_s=0.01)
    with pytest.raises(UpstreamUnavailable):
        await sessions.for_session("d")
    for process in made:
        process.release.set()
    await asyncio.gather(*busy)
    assert b is not None
    # Idle past the timeout: reaped.
    await until(lambda: sessions.sessions == 0, 5, every_s=0.01)
    await sessions.close()
    assert made[0].closed  # the shared process
