"""The Redis relay's task-free response POST (`lean_http._respond_soon`, `RedisQueue.deliver_soon`), over
HTTP against a real redis-server behind a loopback proxy (support/redis_proxy.py): the POST is answered
from the DELIVER script's reply with no task per POST, and only once Redis has stored the frame; a Redis
cut off mid-POST gets the tunnel API's 503 and loses nothing; refusals keep their codes; a delivery cut
off while the relay closes is refused, not retried (Secure MCP Tunnel v1: `POST /v1/tunnels/{id}/response`,
200 ack, 401 tunnel_request_mismatch, 404 pending_request_not_found, 503 tunnel_transport_unavailable).
No timing asserts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
from redis.asyncio import Redis

from gateway.relay import BACKEND, Relay
from gateway.relay.app import LEAN
from gateway.relay.errors import RelayClosing
from gateway.relay.queue import Command
from gateway.relay.redis_queue import RedisQueue
from tests.support.openapi import validate
from tests.support.redis_proxy import Proxy
from tests.support.redis_relay import GATEWAY, TUNNEL, WAIT, command, frame, redis_spec, relay_config, take
from tests.support.redis_server import RedisServer
from tests.support.waiting import until

UNHURRIED = 0.3
"""Loop time given to a wrong implementation to answer early (the test asserts it did not)."""


@contextlib.asynccontextmanager
async def relay_via_proxy(redis: RedisServer, **spec: Any) -> AsyncIterator[tuple[Proxy, Relay, RedisQueue]]:
    async with Proxy(redis.port) as proxy:
        config = relay_config(redis, spec=msgspec.structs.replace(redis_spec(redis, **spec), url=proxy.url))
        async with Relay(config) as relay:
            backend = relay.app[BACKEND]
            assert isinstance(backend, RedisQueue)
            warm = await in_flight(backend)  # Redis learns the scripts (EVAL after NOSCRIPT) before any test holds it
            await backend.deliver(TUNNEL, warm.shard_token, frame(warm))
            assert (await backend.next_frame(TUNNEL, warm.request_id)).is_terminal
            await backend.discard(TUNNEL, warm.request_id)
            yield proxy, relay, backend


def frame_body(cmd: Command) -> dict[str, Any]:
    return {
        "request_id": cmd.request_id,
        "resp_code": 200,
        "resp_type": "jsonrpc_response",
        "resp_json": {"jsonrpc": "2.0", "id": 1, "result": {}},
    }


async def post_response(
    http: aiohttp.ClientSession, relay: Relay, cmd: Command, *, token: str | None = None
) -> tuple[int, Any]:
    headers = {**GATEWAY, "X-Tunnel-Shard-Token": token or cmd.shard_token}
    url = f"{relay.url}/v1/tunnels/{TUNNEL}/response"
    async with http.post(url, json=frame_body(cmd), headers=headers) as resp:
        return resp.status, await resp.json()


async def in_flight(backend: RedisQueue) -> Command:
    """A command queued by a caller on this replica and taken by a poll (as a gateway would)."""
    cmd = command()
    await backend.enqueue(TUNNEL, cmd)
    assert [c.request_id for c in await take(backend)] == [cmd.request_id]
    return cmd


@contextlib.asynccontextmanager
async def frames_stored(redis: RedisServer, cmd: Command) -> AsyncIterator[Any]:
    """A condition for `until`: Redis itself (not through the proxy) holds the frame DELIVER stored."""
    admin = Redis.from_url(redis.url)
    try:

        async def stored() -> bool:
            return bool(await admin.llen(f"test:t:{TUNNEL}:f:{cmd.request_id}"))

        yield stored
    finally:
        await admin.aclose()


def serving_tasks() -> list[asyncio.Task[Any]]:
    """Tasks running a lean request handler (`LeanConnection._serve`)."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "").endswith("._serve")]


async def test_a_response_post_is_acked_from_the_script_reply_only_once_stored_and_with_no_task(
    redis: RedisServer,
) -> None:
    async with relay_via_proxy(redis, retry_s=10.0, replica_ttl_s=30.0, recheck_s=30.0) as (proxy, relay, backend):
        cmd = await in_flight(backend)
        caller = asyncio.create_task(backend.next_frame(TUNNEL, cmd.request_id))
        served = relay.app[LEAN].served
        async with aiohttp.ClientSession() as http:
            proxy.holding = True  # Redis runs DELIVER; its reply stays with the proxy
            post = asyncio.create_task(post_response(http, relay, cmd))
            async with frames_stored(redis, cmd) as stored:
                await until(stored)  # DELIVER ran in Redis; its reply is held
            await asyncio.sleep(UNHURRIED)
            assert not post.done()  # not acknowledged before Redis has answered
            assert not caller.done()
            assert serving_tasks() == []  # the POST waits with no task of its own
            assert relay.app[LEAN].served == served + 1  # and it is the lean layer's
            proxy.release()
            assert await post == (200, {"status": "ok"})
        frame = await asyncio.wait_for(caller, WAIT)  # handed over here, not after a 30 s re-check
        assert frame.request_id == cmd.request_id
        assert frame.is_terminal
        await backend.discard(TUNNEL, cmd.request_id)


async def test_a_response_post_cut_off_from_redis_is_a_503_and_the_frame_is_not_lost(redis: RedisServer) -> None:
    async with relay_via_proxy(redis, retry_s=0.5, replica_ttl_s=30.0, recheck_s=0.2) as (proxy, relay, backend):
        cmd = await in_flight(backend)
        baseline = len(asyncio.all_tasks())
        async with aiohttp.ClientSession() as http:
            proxy.holding = True
            post = asyncio.create_task(post_response(http, relay, cmd))
            async with frames_stored(redis, cmd) as stored:
                await until(stored)  # DELIVER ran in Redis; its reply will never arrive
            proxy.refusing = True
            proxy.cut()
            status, body = await post
            assert status == 503, body
            assert body["error"]["code"] == "tunnel_transport_unavailable"
            validate("APIErrorResponse", body)
            proxy.refusing = proxy.holding = False
            # The frame was stored by the attempt whose reply was lost: the caller reads it on its re-check,
            # and a gateway posting it again is told the request is no longer pending (never applied twice).
            frame = await asyncio.wait_for(backend.next_frame(TUNNEL, cmd.request_id), WAIT)
            assert frame.request_id == cmd.request_id
            assert frame.is_terminal
            status, body = await post_response(http, relay, cmd)
            assert status == 404
            assert body["error"]["code"] == "pending_request_not_found"
        await backend.discard(TUNNEL, cmd.request_id)

        async def no_task_left() -> bool:  # no delivery retry left running
            return len(asyncio.all_tasks()) <= baseline

        await until(no_task_left)


async def test_a_response_post_while_redis_is_briefly_away_is_retried_and_acked(redis: RedisServer) -> None:
    async with relay_via_proxy(redis, retry_s=30.0, replica_ttl_s=30.0, recheck_s=30.0) as (proxy, relay, backend):
        cmd = await in_flight(backend)
        caller = asyncio.create_task(backend.next_frame(TUNNEL, cmd.request_id))
        async with aiohttp.ClientSession() as http:
            proxy.holding = True
            post = asyncio.create_task(post_response(http, relay, cmd))
            async with frames_stored(redis, cmd) as stored:
                await until(stored)
            proxy.cut()  # the reply is lost; the backend retries with the same attempt id
            proxy.holding = False
            assert await post == (200, {"status": "ok"})
            admin = Redis.from_url(redis.url)
            try:  # applied once: one frame stored for the caller
                assert await admin.llen(f"test:t:{TUNNEL}:f:{cmd.request_id}") == 1
            finally:
                await admin.aclose()
        frame = await asyncio.wait_for(caller, WAIT)
        assert frame.request_id == cmd.request_id
        await backend.discard(TUNNEL, cmd.request_id)


async def test_refusals_on_the_task_free_path_keep_their_codes(redis: RedisServer) -> None:
    async with relay_via_proxy(redis, retry_s=10.0, replica_ttl_s=30.0, recheck_s=0.2) as (_, relay, backend):
        cmd = await in_flight(backend)
        async with aiohttp.ClientSession() as http:
            status, body = await post_response(http, relay, cmd, token="not-the-token")
            assert status == 401
            assert body["error"]["code"] == "tunnel_request_mismatch"
            validate("APIErrorResponse", body)
            assert await post_response(http, relay, cmd) == (200, {"status": "ok"})
            status, body = await post_response(http, relay, cmd)  # final already
            assert status == 404
            assert body["error"]["code"] == "pending_request_not_found"
        frame = await asyncio.wait_for(backend.next_frame(TUNNEL, cmd.request_id), WAIT)
        assert frame.request_id == cmd.request_id
        await backend.discard(TUNNEL, cmd.request_id)


async def test_a_delivery_cut_off_while_the_relay_closes_is_refused_not_retried(redis: RedisServer) -> None:
    async with Proxy(redis.port) as proxy:
        spec = msgspec.structs.replace(redis_spec(redis, retry_s=30.0), url=proxy.url)
        queue = RedisQueue([TUNNEL], url=proxy.url, spec=spec, queue_max=10, client_seen_grace_s=30)
        await queue.start()
        try:
            cmd = await in_flight(queue)
            proxy.holding = True
            report: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
            queue.deliver_soon(TUNNEL, cmd.shard_token, frame(cmd), report.set_result)
            await until(proxy.held)
            await queue.close()  # shutdown began
            proxy.cut()
            assert isinstance(await asyncio.wait_for(report, WAIT), RelayClosing)  # the relay's 503, at once
            retrying = [t for t in asyncio.all_tasks() if "_deliver_later" in getattr(t.get_coro(), "__qualname__", "")]
            assert retrying == []  # no retry that would reconnect after dispose
        finally:
            await queue.close()
            await queue.dispose()
