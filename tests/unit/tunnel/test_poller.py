"""gateway.tunnel.client's poll loop with fakes of our own interfaces: no exception ends it, and readiness says when
it backs off (issue 14, defect 1)."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.config import routing as routing_config
from gateway.observe.ops import Readiness
from gateway.protocol.wire import Codec, PolledCommand, TunnelClientMetadata
from gateway.tunnel.client import Poller


class FakeControlPlane:
    """Our `ControlPlane` poll interface: one command per poll, then nothing for a moment."""

    def __init__(self) -> None:
        self.polls = 0
        self.last_poll_ok: float | None = None
        self.problem: str | None = None

    async def metadata(self) -> TunnelClientMetadata:
        return TunnelClientMetadata(id="t", name="fake", description="")

    async def poll(self, limit: int, timeout_ms: int) -> tuple[float, list[Any]]:
        self.polls += 1
        await asyncio.sleep(0)
        self.last_poll_ok = asyncio.get_running_loop().time()
        raw = json.dumps({"request_id": f"r{self.polls}", "shard_token": "s"}).encode()
        return self.last_poll_ok, [raw]

    def credentials_rejected(self) -> None:
        raise AssertionError("not expected")


@dataclass
class FailingSink:
    """Our `CommandSink`: refuses its first `failures` commands with an unexpected error."""

    failures: int
    submitted: list[str] = field(default_factory=list)
    free: int = 10

    async def wait_capacity(self, reserved: int) -> None:
        return None

    def capacity_changed(self) -> None:
        return None

    def submit(self, command: PolledCommand, received_at: float) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a bug below the poll loop")
        self.submitted.append(command.request_id)


@dataclass
class _Runtime:
    control_plane: FakeControlPlane
    poller: Poller
    config: routing_config.RoutingConfig = field(
        default_factory=lambda: routing_config.parse(b"servers: {a: {stdio: {command: x}}}\nchannels: {c: [a]}\n", "r")
    )
    upstreams: dict[str, Any] = field(default_factory=dict)


async def test_no_exception_ends_the_poll_loop_and_readyz_shows_it(caplog: pytest.LogCaptureFixture) -> None:
    """Defect 1 at its root: any exception below the poll loop ended it silently. Now the loop logs
    once, reports the fault on `/readyz`, backs off and polls again; the fault clears after a clean poll."""
    cp, sink = FakeControlPlane(), FailingSink(failures=3)
    poller = Poller(cp, sink, Codec(), 1000)  # type: ignore[arg-type]
    readiness = Readiness(max_poll_age_s=60)
    readiness.runtime = _Runtime(cp, poller)  # type: ignore[assignment]
    faults: list[str | None] = []
    with caplog.at_level(logging.ERROR, logger="gateway.tunnel"):
        task = asyncio.create_task(poller.run())
        try:
            while not sink.submitted:
                await asyncio.sleep(0.01)
                faults.append(readiness.report()[1]["checks"]["control_plane"] if poller.fault else None)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert cp.polls >= 4
    assert sink.submitted[0] == "r4"  # the first three polls' commands met the bug
    assert any(f and "poll loop failed (RuntimeError)" in f for f in faults)
    assert poller.fault is None
    assert len([r for r in caplog.records if "poll loop failed" in r.getMessage()]) == 1


async def test_readiness_fails_while_the_poll_loop_backs_off() -> None:
    cp = FakeControlPlane()
    cp.last_poll_ok = 0.0
    poller = Poller(cp, FailingSink(0), Codec(), 1000)  # type: ignore[arg-type]
    readiness = Readiness(max_poll_age_s=60, clock=lambda: 1.0)
    readiness.runtime = _Runtime(cp, poller)  # type: ignore[assignment]
    assert readiness.report()[0]
    poller.fault = "the poll loop failed (RecursionError); retrying"
    ready, body = readiness.report()
    assert not ready
    assert body["not_ready"] == ["control_plane"]
    assert body["checks"]["control_plane"] == poller.fault


@dataclass
class OrderSink:
    """Our `CommandSink`: each command's worker takes one step, then queues a write for the loop's next turn,
    as a stdio pipe's per-tick flush does; `events` has the order of polls, steps and writes."""

    events: list[str]
    free: int = 10
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def wait_capacity(self, reserved: int) -> None:
        return None

    def capacity_changed(self) -> None:
        return None

    def submit(self, command: PolledCommand, received_at: float) -> None:
        async def work() -> None:
            self.events.append(f"step {command.request_id}")
            asyncio.get_running_loop().call_soon(self.events.append, f"write {command.request_id}")

        task = asyncio.create_task(work())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class OrderedControlPlane(FakeControlPlane):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.third = asyncio.Event()

    async def poll(self, limit: int, timeout_ms: int) -> tuple[float, list[Any]]:
        self.events.append(f"poll {self.polls + 1}")
        if self.polls + 1 >= 3:
            self.third.set()
        return await super().poll(limit, timeout_ms)


async def test_with_one_poll_channel_a_command_is_written_upstream_before_the_next_poll() -> None:
    """c=1 latency: the next poll's request is not on a command's path. With one poll in flight, the
    commands a poll brought take their first step and their pipe write goes out before the next poll."""
    events: list[str] = []
    cp = OrderedControlPlane(events)
    poller = Poller(cp, OrderSink(events), Codec(), 1000)  # type: ignore[arg-type]
    task = asyncio.create_task(poller.run())
    try:
        await asyncio.wait_for(cp.third.wait(), 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert events[:7] == ["poll 1", "step r1", "write r1", "poll 2", "step r2", "write r2", "poll 3"]
