"""`Upstream.wait_info` while a server restarts: a waiter woken by a start that a crash undid before it
ran waits for the next start (the fault campaign's SIGKILL loop made it fail inside the gateway), and
gives up, as `UpstreamUnavailable`, at its bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from msgspec import Raw

from gateway.protocol.errors import UpstreamUnavailable
from gateway.protocol.mcp import Call, Era, Frame, Reply, UpstreamInfo
from gateway.protocol.wire import Headers, JsonRpcMessage
from gateway.upstream.base import Upstream


def _info(version: str) -> UpstreamInfo:
    return UpstreamInfo(era=Era.LEGACY, protocol_version=version, capabilities=Raw(b"{}"), server_info=Raw(b"{}"))


class _Restarting(Upstream):
    """An upstream whose ups and downs the test drives."""

    transport = "stdio"

    async def start(self) -> None:
        return

    async def close(self) -> None:
        return

    async def exchange(self, call: Call) -> AsyncIterator[Frame]:
        raise AssertionError("not called")
        yield  # pragma: no cover

    async def respond(self, message: JsonRpcMessage, headers: Headers, own_session: bool) -> Reply:
        raise AssertionError("not called")

    async def end_session(self, headers: Headers) -> Reply:
        raise AssertionError("not called")


async def test_a_start_undone_before_the_waiter_ran_is_waited_past() -> None:
    upstream = _Restarting("s", ready_timeout_s=60)
    waiter = asyncio.ensure_future(upstream.wait_info())
    for _ in range(20):  # the waiter is waiting for the first start
        await asyncio.sleep(0)
    upstream._up(_info("2025-03-26"))
    upstream._down("killed")  # before the waiter got to run
    for _ in range(20):  # every step the waiter could take before the next start
        await asyncio.sleep(0)
    assert not waiter.done(), "a server down again is waited for, not reported up (or failed)"
    upstream._up(_info("2025-06-18"))
    assert (await asyncio.wait_for(waiter, 10)).protocol_version == "2025-06-18"


async def test_a_server_that_never_comes_back_is_unavailable_at_the_bound() -> None:
    upstream = _Restarting("s", ready_timeout_s=0.05)
    upstream._up(_info("2025-03-26"))
    upstream._down("killed")
    with pytest.raises(UpstreamUnavailable):
        await upstream.wait_info()


async def test_an_up_server_answers_at_once() -> None:
    upstream = _Restarting("s", ready_timeout_s=60)
    upstream._up(_info("2025-06-18"))
    assert (await upstream.wait_info()).protocol_version == "2025-06-18"
