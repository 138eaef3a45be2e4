"""`Deadlines.at` keeps `asyncio.timeout_at`'s contract: a block past its deadline ends with TimeoutError
(never before the deadline), a block done in time is left alone, a cancellation from elsewhere stays a
cancellation; and one loop timer serves every caller, with nothing left behind of the callers that finished."""

from __future__ import annotations

import asyncio

import pytest

from gateway.relay.deadlines import Deadlines

TICK = 0.02


async def test_a_block_past_its_deadline_ends_with_timeout_error_not_before_it() -> None:
    deadlines = Deadlines(TICK)
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.05
    with pytest.raises(TimeoutError):
        async with deadlines.at(when):
            await asyncio.Event().wait()  # never set
    assert loop.time() >= when


async def test_a_deadline_already_past_ends_the_block_at_its_first_wait() -> None:
    deadlines = Deadlines(TICK)
    reached: list[bool] = []

    async def late() -> None:
        async with deadlines.at(asyncio.get_running_loop().time() - 1):
            reached.append(True)
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        await late()
    assert reached == [True]


async def test_a_block_done_in_time_is_left_alone_when_its_tick_comes() -> None:
    deadlines = Deadlines(TICK)
    loop = asyncio.get_running_loop()
    async with deadlines.at(loop.time() + TICK):
        await asyncio.sleep(0)
    await asyncio.sleep(4 * TICK)  # the tick's timer fires while this task waits: it must not cancel it
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert not deadlines._ticks


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(TICK)
    started = asyncio.Event()

    async def wait() -> None:
        async with deadlines.at(asyncio.get_running_loop().time() + 60):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(wait())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_at_the_deadline_from_elsewhere_wins() -> None:
    """As with `asyncio.timeout_at`: when the task was also cancelled by someone else, the block ends with
    CancelledError, not TimeoutError (the other canceller must see its cancellation)."""
    deadlines = Deadlines(TICK)
    loop = asyncio.get_running_loop()
    when = loop.time() + TICK

    async def wait() -> None:
        async with deadlines.at(when):
            await asyncio.Event().wait()

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    deadline = next(iter(next(iter(deadlines._ticks.values()))))
    deadline.expire()  # the tick's expiry and another cancel, before the task runs again
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_callers_of_one_tick_share_one_timer_and_all_expire() -> None:
    deadlines = Deadlines(1.0)  # a long tick: every caller below falls in the same one (or the next)
    loop = asyncio.get_running_loop()
    when = loop.time() + 0.01
    outcomes: list[str] = []

    async def wait() -> None:
        try:
            async with deadlines.at(when):
                await asyncio.Event().wait()
        except TimeoutError:
            outcomes.append("timeout")

    async with asyncio.timeout(10), asyncio.TaskGroup() as tasks:
        for _ in range(50):
            tasks.create_task(wait())
        await asyncio.sleep(0)
        assert len(deadlines._ticks) == 1
    assert outcomes == ["timeout"] * 50
    assert loop.time() >= when


async def test_a_block_that_ends_early_leaves_its_tick() -> None:
    deadlines = Deadlines(TICK)
    loop = asyncio.get_running_loop()
    async with deadlines.at(loop.time() + 60):
        (members,) = deadlines._ticks.values()
        assert len(members) == 1
    assert not members  # gone from the tick: its timer, when it fires, cancels nobody
    assert not deadlines._ticks  # and the tick's set with it


async def test_used_outside_a_task_it_says_so() -> None:
    deadlines = Deadlines(TICK)
    loop = asyncio.get_running_loop()
    said: asyncio.Future[str] = loop.create_future()

    async def outside() -> None:
        async with deadlines.at(loop.time() + 1):
            pass

    def step() -> None:  # a loop callback, not a task: there is no current task here
        coroutine = outside()
        try:
            coroutine.send(None)
        except RuntimeError as exc:
            said.set_result(str(exc))
        finally:
            coroutine.close()

    loop.call_soon(step)
    assert "inside a task" in await said


async def test_callers_that_finish_early_leave_one_timer_and_no_sets_behind() -> None:
    """A thousand callers with deadlines in a thousand ticks, all done in time: no set of callers is left,
    one number per tick waits for its tick, and the loop holds one timer for all of them."""
    deadlines = Deadlines(TICK)
    loop = asyncio.get_running_loop()
    timers = getattr(loop, "_scheduled", None)  # asyncio's own loop: its pending timers
    before = None if timers is None else sum(not handle.cancelled() for handle in timers)
    start = loop.time() + 60
    for index in range(1000):
        async with deadlines.at(start + index * TICK):
            pass
    assert not deadlines._ticks
    assert len(deadlines._pending) == len(set(deadlines._pending)) >= 990  # one number per tick (float edges)
    if timers is not None and before is not None:
        assert sum(not handle.cancelled() for handle in timers) == before + 1
    # a caller in the earliest tick still times out there, and the timer then moves on to the next tick
    with pytest.raises(TimeoutError):
        async with deadlines.at(loop.time()):
            await asyncio.sleep(10)
    assert deadlines._armed == min(deadlines._pending)


async def test_a_later_deadline_does_not_hold_back_an_earlier_one() -> None:
    deadlines = Deadlines(TICK)
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    async def early() -> None:
        async with deadlines.at(loop.time() + 2 * TICK):
            started.set()
            await asyncio.Event().wait()

    async with asyncio.timeout(5):  # the later caller's deadline is 60 s away: waiting for it would fail here
        task = asyncio.create_task(early())
        await started.wait()
        async with deadlines.at(loop.time() + 60):
            await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            await task


def test_a_deadlines_used_again_on_a_new_loop_still_times_out() -> None:
    """A relay stopped and started again runs its front door on a new loop: the old loop's timer is gone,
    and the new loop's callers must still time out."""
    deadlines = Deadlines(TICK)

    async def late(wait_s: float) -> str:
        try:
            async with deadlines.at(asyncio.get_running_loop().time() + wait_s):
                await asyncio.sleep(wait_s + 10 * TICK)
        except TimeoutError:
            return "timeout"
        return "in time"

    async def first() -> None:
        async with deadlines.at(asyncio.get_running_loop().time() + 2 * TICK):
            pass  # leaves its tick queued and the timer armed on this loop, which then closes

    asyncio.run(first())
    # a later deadline than the dead timer's: nothing would arm a timer for it on the new loop
    assert asyncio.run(asyncio.wait_for(late(10 * TICK), 5)) == "timeout"
