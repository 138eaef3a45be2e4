"""The relay on Redis: one contract for every queue backend, then replicas sharing a real Redis.

A real redis-server (tests/redis_server.py) is started per test on 127.0.0.1.
Relay replicas are in-process `Relay` instances (or `gateway relay` processes
where one must be killed) and gateways are plain v1 pollers written here, which
count every command they receive: nothing may arrive twice. No timing asserts:
waits are for conditions, bounded by generous timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from mcp import Client
from mcp_types import TextContent

from gateway.protocol.wire import TunnelResponsePayload
from gateway.relay import BACKEND, MemoryQueue, QueueBackend, Relay, RelayConfig, TunnelSpec, new_command
from gateway.relay.config import (
    MemoryBackend,
    RedisBackend,
    RelayConfigError,
    decode_relay_config,
    load_relay_config,
)
from gateway.relay.errors import (
    BackendUnavailable,
    FrameBacklog,
    PendingNotFound,
    QueueFull,
    RelayClosing,
    ShardMismatch,
)
from gateway.relay.queue import FRAME_BACKLOG, Command
from gateway.relay.redis_queue import RedisQueue
from tests.support.harness import PYTHON, Process, gateway, process, stdio_server
from tests.support.openapi import validate
from tests.support.redis_server import RedisServer, redis_server

TUNNEL = "tunnel_r"
KEY = "gateway-key-r"
GATEWAY = {"Authorization": f"Bearer {KEY}"}
WAIT = 60.0
"""Generous bound for anything that should happen promptly (never a timing assert)."""
AFFINE_INFO = json.dumps(
    {"version": 1, "channels": [{"name": "files", "proc_affinity": True}, {"name": "main"}]}, separators=(",", ":")
)


def redis_spec(server: RedisServer, **overrides: Any) -> RedisBackend:
    settings: dict[str, Any] = {"retry_s": 10.0, "replica_ttl_s": 30.0, "recheck_s": 0.1, **overrides}
    return RedisBackend(url=server.url, key_prefix="test", **settings)


def relay_config(server: RedisServer, *, spec: RedisBackend | None = None, **overrides: Any) -> RelayConfig:
    tunnels = {TUNNEL: TunnelSpec(gateway_key=KEY, name="Redis tunnel", description="replicated")}
    return RelayConfig(listen="127.0.0.1:0", tunnels=tunnels, backend=spec or redis_spec(server), **overrides)


async def until(condition: Callable[[], Awaitable[bool]], within_s: float = WAIT) -> None:
    """Re-check a condition until it holds (bounded); for state that changes with time passing."""
    async with asyncio.timeout(within_s):
        while not await condition():  # noqa: ASYNC110 - the state lives in Redis, not in an Event
            await asyncio.sleep(0.02)


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path) as server:
        yield server


# =========================================================================== backend contract

MakeBackend = Callable[..., Awaitable[QueueBackend]]


@pytest.fixture(params=["memory", "redis"])
async def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    """Makes backends of one kind; with Redis every call is another replica on the same server."""
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(redis_server(tmp_path)) if request.param == "redis" else None
        made: list[QueueBackend] = []

        async def make(*, queue_max: int = 10, grace: float = 30.0) -> QueueBackend:
            if server is None:
                backend: QueueBackend = MemoryQueue([TUNNEL], queue_max=queue_max, client_seen_grace_s=grace)
            else:
                spec = redis_spec(server)
                backend = RedisQueue(
                    [TUNNEL], url=server.url, spec=spec, queue_max=queue_max, client_seen_grace_s=grace
                )
            await backend.start()
            made.append(backend)
            return backend

        try:
            yield make
        finally:
            for backend in made:
                await backend.close()
                await backend.dispose()


def command(
    channel: str = "main", *, session: str | None = None, timeout: float = WAIT, kind: str = "jsonrpc"
) -> Command:
    headers = {"Mcp-Session-Id": [session]} if session else {}
    deadline = asyncio.get_running_loop().time() + timeout
    body = msgspec.Raw(b'{"jsonrpc":"2.0","id":1,"method":"ping"}') if kind == "jsonrpc" else msgspec.UNSET
    return new_command(command_type=kind, channel=channel, headers=headers, deadline=deadline, jsonrpc=body)


def frame(
    cmd: Command, *, kind: str = "jsonrpc_response", headers: dict[str, list[str]] | None = None
) -> TunnelResponsePayload:
    payload = TunnelResponsePayload(request_id=cmd.request_id, resp_code=200, resp_type=kind)
    if headers is not None:
        payload = msgspec.structs.replace(payload, resp_headers=headers)
    return payload


async def take(backend: QueueBackend, instance: str = "gw-1", **kwargs: Any) -> list[Command]:
    kwargs.setdefault("limit", 25)
    kwargs.setdefault("timeout_s", 0.05)
    return await backend.take(TUNNEL, instance_id=instance, **kwargs)


async def owner(backend: QueueBackend, channel: str, session: str) -> str | None:
    assert isinstance(backend, MemoryQueue | RedisQueue)
    return await backend.session_owner(TUNNEL, channel, session)


async def test_contract_round_trip(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    cmd = command()
    await queue.enqueue(TUNNEL, cmd)
    (taken,) = await take(queue)
    assert (taken.request_id, taken.shard_token, taken.headers) == (cmd.request_id, cmd.shard_token, cmd.headers)
    assert bytes(taken.jsonrpc) == bytes(cmd.jsonrpc)  # type: ignore[arg-type]
    assert re.fullmatch(r"[1-9][0-9]*ms", taken.polled(asyncio.get_running_loop().time()).response_timeout or "")
    assert await take(queue) == []  # handed out once
    with pytest.raises(ShardMismatch):
        await queue.deliver(TUNNEL, "wrong", frame(cmd))
    unknown = msgspec.structs.replace(frame(cmd), request_id="req_unknown")
    with pytest.raises(PendingNotFound):
        await queue.deliver(TUNNEL, cmd.shard_token, unknown)
    await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd, kind="jsonrpc_notify"))
    await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd))
    with pytest.raises(PendingNotFound):
        await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd))
    first, last = [await queue.next_frame(TUNNEL, cmd.request_id) for _ in range(2)]
    assert (first.resp_type, last.resp_type) == ("jsonrpc_notify", "jsonrpc_response")
    status = await queue.status(TUNNEL)
    assert (status.queued, status.in_flight, status.last_instance_id) == (0, 0, "gw-1")
    await queue.discard(TUNNEL, cmd.request_id)
    with pytest.raises(PendingNotFound):
        await queue.next_frame(TUNNEL, cmd.request_id)


async def test_contract_fifo_limit_and_channels(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    commands = [command(channel) for channel in ("alpha", "beta", "alpha-2", "alpha")]
    for cmd in commands:
        await queue.enqueue(TUNNEL, cmd)
    (beta,) = await take(queue, channels=frozenset({"beta"}))
    assert beta.request_id == commands[1].request_id
    first_two = await take(queue, limit=2)
    assert [c.request_id for c in first_two] == [commands[0].request_id, commands[2].request_id]
    assert [c.request_id for c in await take(queue)] == [commands[3].request_id]


async def test_contract_queue_cap(make_backend: MakeBackend) -> None:
    queue = await make_backend(queue_max=2)
    await queue.enqueue(TUNNEL, command())
    await queue.enqueue(TUNNEL, command())
    with pytest.raises(QueueFull):
        await queue.enqueue(TUNNEL, command())
    assert len(await take(queue, limit=1)) == 1
    await queue.enqueue(TUNNEL, command())  # room again


async def test_contract_discarded_and_expired_are_never_handed_out(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    gone, late, live = command(), command(timeout=0.001), command()
    for cmd in (gone, late, live):
        await queue.enqueue(TUNNEL, cmd)
    await queue.discard(TUNNEL, gone.request_id)
    await asyncio.sleep(0.05)  # let `late` pass its deadline (time passing, not readiness)
    assert [c.request_id for c in await take(queue)] == [live.request_id]
    assert (await queue.status(TUNNEL)).queued == 0  # the expired one was purged
    with pytest.raises(PendingNotFound):
        await queue.deliver(TUNNEL, late.shard_token, frame(late))


async def test_contract_frame_backlog(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    cmd = command()
    await queue.enqueue(TUNNEL, cmd)
    await take(queue)
    for _ in range(FRAME_BACKLOG):
        await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd, kind="jsonrpc_notify"))
    with pytest.raises(FrameBacklog):
        await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd, kind="jsonrpc_notify"))
    await queue.deliver(TUNNEL, cmd.shard_token, frame(cmd))  # the terminal frame always lands
    frames = [await queue.next_frame(TUNNEL, cmd.request_id) for _ in range(FRAME_BACKLOG + 1)]
    assert [f.is_terminal for f in frames] == [False] * FRAME_BACKLOG + [True]


async def test_contract_client_seen(make_backend: MakeBackend) -> None:
    queue = await make_backend(grace=30.0)
    assert not await queue.client_seen(TUNNEL)
    assert await take(queue) == []
    assert await queue.client_seen(TUNNEL)
    assert (await queue.status(TUNNEL)).client_seen


async def test_contract_close_wakes_polls_and_callers(make_backend: MakeBackend) -> None:
    queue = await make_backend()
    cmd = command()
    await queue.enqueue(TUNNEL, cmd)
    async with asyncio.timeout(WAIT):
        poll = asyncio.create_task(take(queue, channels=frozenset({"none"}), timeout_s=WAIT))
        caller = asyncio.create_task(queue.next_frame(TUNNEL, cmd.request_id))
        await until(lambda: _polls_waiting(queue))
        await queue.close()
        assert await poll == []
        with pytest.raises(RelayClosing):
            await caller
    with pytest.raises(RelayClosing):
        await queue.enqueue(TUNNEL, command())


async def _polls_waiting(queue: QueueBackend) -> bool:
    return (await queue.status(TUNNEL)).polls_waiting > 0


async def test_contract_proc_affinity_routing_and_reassignment(make_backend: MakeBackend) -> None:
    queue = await make_backend(grace=0.3)
    affine = frozenset({"files"})
    # `initialize` on an affine channel: no session yet, any instance may take it
    init = command("files")
    await queue.enqueue(TUNNEL, init)
    assert len(await take(queue, "gw-a", affine_channels=affine)) == 1
    await queue.deliver(TUNNEL, init.shard_token, frame(init, headers={"Mcp-Session-Id": ["sess-1"]}))
    assert await owner(queue, "files", "sess-1") == "gw-a"
    # the same session on a non-affine channel is not routed
    await queue.enqueue(TUNNEL, free := command("main", session="sess-1"))
    assert [c.request_id for c in await take(queue, "gw-b", affine_channels=affine)] == [free.request_id]

    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        # gw-a is polling (for another channel), so it counts as seen: gw-b must leave its session alone
        owner_poll = tg.create_task(take(queue, "gw-a", channels=frozenset({"other"}), timeout_s=WAIT))
        await until(lambda: _polls_waiting(queue))
        bound = command("files", session="sess-1")
        await queue.enqueue(TUNNEL, bound)
        assert await take(queue, "gw-b", affine_channels=affine, timeout_s=0.3) == []
        owner_poll.cancel()
    (mine,) = await take(queue, "gw-a", affine_channels=affine)
    assert mine.request_id == bound.request_id
    await queue.deliver(TUNNEL, bound.shard_token, frame(bound))
    assert await owner(queue, "files", "sess-1") == "gw-a"

    # gw-a stops polling: after the grace period gw-b gets the session's next command and owns it
    again = command("files", session="sess-1")
    await queue.enqueue(TUNNEL, again)
    (moved,) = await take(queue, "gw-b", affine_channels=affine, timeout_s=WAIT)
    assert moved.request_id == again.request_id
    assert await owner(queue, "files", "sess-1") == "gw-b"
    await queue.deliver(TUNNEL, again.shard_token, frame(again))

    # ending the session forgets the binding
    end = command("files", session="sess-1", kind="session_termination")
    await queue.enqueue(TUNNEL, end)
    (ending,) = await take(queue, "gw-b", affine_channels=affine)
    assert ending.command_type == "session_termination"
    await queue.deliver(TUNNEL, end.shard_token, frame(end, kind="session_termination_response"))
    assert await owner(queue, "files", "sess-1") is None


# =========================================================================== Redis backend


async def test_config_backend_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(decode_relay_config("tunnels: {t: {gateway_key: k}}\n").backend, MemoryBackend)
    file = tmp_path / "relay.yaml"
    file.write_text("tunnels: {t: {gateway_key: k}}\nbackend: {kind: redis, url: 'file:redis.url'}\n")
    loaded = load_relay_config(file).backend
    assert isinstance(loaded, RedisBackend)
    assert loaded.url == f"file:{tmp_path / 'redis.url'}"  # relative to the config file, like other secrets
    text = "tunnels: {t: {gateway_key: k}}\nbackend: {kind: redis, url: env:RELAY_REDIS_URL, key_prefix: p1}\n"
    config = decode_relay_config(text)
    assert isinstance(config.backend, RedisBackend)
    assert (config.backend.url, config.backend.key_prefix) == ("env:RELAY_REDIS_URL", "p1")
    for bad, key in [
        ("backend: {kind: kafka}", "$.backend.kind"),
        ("backend: {kind: redis, bogus: 1}", "$.backend"),
        ("backend: {kind: redis, key_prefix: 'a b'}", "$.backend.key_prefix"),
    ]:
        with pytest.raises(RelayConfigError) as info:
            decode_relay_config("tunnels: {t: {gateway_key: k}}\n" + bad)
        assert info.value.key == key
    monkeypatch.delenv("RELAY_REDIS_URL", raising=False)
    with pytest.raises(RelayConfigError) as info:
        await Relay(config).start()
    assert info.value.key == "$.backend.url"
    monkeypatch.setenv("RELAY_REDIS_URL", "http://user:hunter2@example.invalid/")
    with pytest.raises(RelayConfigError) as info:
        await Relay(config).start()
    assert "hunter2" not in str(info.value)


async def test_replicas_share_commands_frames_and_bookkeeping(redis: RedisServer) -> None:
    spec = redis_spec(redis)
    a, b, c = (RedisQueue([TUNNEL], url=redis.url, spec=spec, queue_max=10, client_seen_grace_s=30) for _ in range(3))
    for queue in (a, b, c):
        await queue.start()
    try:
        assert not await a.client_seen(TUNNEL)
        assert await take(b) == []  # a gateway polls replica b...
        assert await a.client_seen(TUNNEL)  # ...and replica a knows
        cmd = command()
        await a.enqueue(TUNNEL, cmd)  # the caller waits on a
        (taken,) = await take(b)
        with pytest.raises(ShardMismatch):
            await c.deliver(TUNNEL, "wrong", frame(cmd))
        await c.deliver(TUNNEL, taken.shard_token, frame(cmd))  # the answer is posted to c
        assert (await a.next_frame(TUNNEL, cmd.request_id)).is_terminal
        with pytest.raises(PendingNotFound):
            await b.deliver(TUNNEL, taken.shard_token, frame(cmd))
    finally:
        for queue in (a, b, c):
            await queue.close()
            await queue.dispose()


async def test_a_take_is_given_back_or_repeated_never_lost(redis: RedisServer) -> None:
    queue = RedisQueue([TUNNEL], url=redis.url, spec=redis_spec(redis), queue_max=10, client_seen_grace_s=30)
    await queue.start()
    try:
        cmd = command()
        await queue.enqueue(TUNNEL, cmd)
        answers = iter([True, False])  # the poller is there when the take starts, gone when it returns
        assert await take(queue, wanted=lambda: next(answers)) == []
        # the batch went back to the head of the queue; a take retried after a lost reply (same
        # memo token) gets the same batch again instead of losing it
        base = f"test:t:{TUNNEL}"
        args = [base, "test:replicas", "gw-1", 5, "", "", 100, 1000, "memo-1", 1000]
        first = await queue._take(args=args)
        again = await queue._take(args=args)
        assert first[0] == again[0] == cmd.request_id.encode()
        assert await take(queue) == []  # and nobody else gets it
    finally:
        await queue.close()
        await queue.dispose()


async def test_poll_disconnect_loses_nothing_on_redis(redis: RedisServer) -> None:
    config = relay_config(redis)
    async with Relay(config) as relay, aiohttp.ClientSession(connector=connector()) as http:
        poll = f"{relay.url}/v1/tunnels/{TUNNEL}/poll"
        async with asyncio.timeout(WAIT):
            poller = asyncio.create_task(http.get(poll, params={"timeout_ms": "20000"}, headers=GATEWAY))
            await until(lambda: _polls_waiting(relay.app[BACKEND]))
            poller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await poller
            await until(lambda: _no_polls_waiting(relay.app[BACKEND]))
            caller = asyncio.create_task(call(http, relay.url_for(TUNNEL), 0, "kept"))
            async with http.get(poll, headers=GATEWAY) as resp:
                (cmd,) = (await resp.json())["commands"]
            headers = {**GATEWAY, "X-Tunnel-Shard-Token": cmd["shard_token"]}
            url = f"{relay.url}/v1/tunnels/{TUNNEL}/response"
            async with http.post(url, json=answer_for(cmd, "gw"), headers=headers) as resp:
                assert resp.status == 200
            assert (await caller).body["id"] == "kept"


async def _no_polls_waiting(queue: QueueBackend) -> bool:
    return (await queue.status(TUNNEL)).polls_waiting == 0


async def test_dead_replica_commands_are_purged(redis: RedisServer) -> None:
    spec = redis_spec(redis)
    a, b = (RedisQueue([TUNNEL], url=redis.url, spec=spec, queue_max=10, client_seen_grace_s=30) for _ in range(2))
    await a.start()
    await b.start()
    try:
        queued, in_flight = command(), command()
        await a.enqueue(TUNNEL, in_flight)
        assert len(await take(b)) == 1
        await a.enqueue(TUNNEL, queued)
        await a.dispose()  # replica a is gone (its callers with it): nothing of theirs is run or answered
        assert await take(b) == []
        assert (await b.status(TUNNEL)).queued == 0
        with pytest.raises(PendingNotFound):
            await b.deliver(TUNNEL, in_flight.shard_token, frame(in_flight))
    finally:
        await b.close()
        await b.dispose()


async def test_redis_outage_is_a_prompt_503_then_recovers(redis: RedisServer) -> None:
    spec = redis_spec(redis, retry_s=0.5)
    queue = RedisQueue([TUNNEL], url=redis.url, spec=spec, queue_max=10, client_seen_grace_s=30)
    await queue.start()
    try:
        cmd = command()
        await queue.enqueue(TUNNEL, cmd)
        await redis.stop()
        assert not await queue.ready()
        async with asyncio.timeout(WAIT):
            with pytest.raises(BackendUnavailable):
                await queue.enqueue(TUNNEL, command())
            with pytest.raises(BackendUnavailable):
                await take(queue, timeout_s=1.0)
            with pytest.raises(BackendUnavailable):
                await queue.next_frame(TUNNEL, cmd.request_id)
        await redis.start()
        assert await queue.ready()
        await queue.enqueue(TUNNEL, command())
    finally:
        await queue.close()
        await queue.dispose()


async def test_queued_commands_survive_a_redis_restart(tmp_path: Path) -> None:
    async with redis_server(tmp_path, persist=True) as server:
        spec = redis_spec(server)
        a, b = (RedisQueue([TUNNEL], url=server.url, spec=spec, queue_max=10, client_seen_grace_s=30) for _ in range(2))
        await a.start()
        await b.start()
        try:
            cmd = command()
            await a.enqueue(TUNNEL, cmd)
            async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
                caller = tg.create_task(a.next_frame(TUNNEL, cmd.request_id))  # waits through the outage
                await server.restart()
                (taken,) = await take(b)
                assert taken.request_id == cmd.request_id
                await b.deliver(TUNNEL, taken.shard_token, frame(cmd))
            assert caller.result().is_terminal
        finally:
            for queue in (a, b):
                await queue.close()
                await queue.dispose()


# =========================================================================== replicas over HTTP


@contextlib.asynccontextmanager
async def replicas(config: RelayConfig, count: int) -> AsyncIterator[list[Relay]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Relay(config)) for _ in range(count)]


def answer_for(cmd: dict[str, Any], instance: str) -> dict[str, Any]:
    """What the test gateway posts for a command: an echo naming the instance that ran it."""
    payload: dict[str, Any] = {"request_id": cmd["request_id"], "channel": cmd.get("channel", "main")}
    if cmd.get("command_type") == "session_termination":
        return {**payload, "resp_code": 204, "resp_type": "session_termination_response"}
    rpc = cmd["jsonrpc"]
    if "id" not in rpc:
        return {**payload, "resp_code": 202, "resp_type": "notify_ack"}
    payload.update(resp_code=200, resp_json={"jsonrpc": "2.0", "id": rpc["id"], "result": {"by": instance}})
    if rpc.get("method") == "initialize":
        payload["resp_headers"] = {"Mcp-Session-Id": [f"sess-{rpc['id']}"]}
    return payload


@dataclass
class Poller:
    """A plain v1 gateway: polls the relays in turn, answers through another relay, counts everything."""

    http: aiohttp.ClientSession
    relays: list[str]
    instance: str
    server_info: str | None = None
    crash_after: int | None = None
    """Die on the poll that brings more than this many commands, answering none past the limit."""
    received: list[dict[str, Any]] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    abandoned: set[str] = field(default_factory=set)
    """JSON-RPC ids received but certainly never answered (past `crash_after`)."""

    async def run(self) -> None:
        turn = random.randrange(len(self.relays))
        headers = {**GATEWAY, "X-Tunnel-Client-Instance-Id": self.instance}
        if self.server_info:
            headers["X-Tunnel-MCP-Server-Info"] = self.server_info
        async with asyncio.TaskGroup() as answers:
            while True:
                base = self.relays[turn % len(self.relays)]
                turn += 1
                url = f"{base}/v1/tunnels/{TUNNEL}/poll"
                try:
                    async with self.http.get(
                        url, params={"limit": "25", "timeout_ms": "2000"}, headers=headers
                    ) as resp:
                        if resp.status != 200:
                            await resp.read()
                            continue
                        body = await resp.json()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    continue  # that replica is gone or the connection broke: try the next one, as a gateway would
                validate("PolledCommandList", body)
                for cmd in body["commands"]:
                    self.received.append(cmd)
                    if self.crash_after is not None and len(self.received) > self.crash_after:
                        self.abandoned.add(cmd["jsonrpc"]["id"])
                    else:
                        answers.create_task(self.respond(cmd, turn))
                if self.abandoned:
                    raise _Crashed()  # dies with this batch (and any answers still being posted) unanswered

    async def respond(self, cmd: dict[str, Any], turn: int) -> None:
        payload = answer_for(cmd, self.instance)
        headers = {**GATEWAY, "X-Tunnel-Shard-Token": cmd["shard_token"]}
        for attempt in range(len(self.relays) * 3):
            base = self.relays[(turn + attempt) % len(self.relays)]
            try:
                async with self.http.post(
                    f"{base}/v1/tunnels/{TUNNEL}/response", json=payload, headers=headers
                ) as resp:
                    await resp.read()
                    if resp.status in (200, 404):
                        if resp.status == 200:
                            self.answered.add(cmd["request_id"])
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue


class _Crashed(Exception):
    pass


async def run_poller(poller: Poller) -> None:
    """Run a poller; its deliberate crash ends it quietly, anything else fails the test at once."""
    try:
        await poller.run()
    except* _Crashed:
        pass


@dataclass
class Outcome:
    relay: int
    rpc_id: str
    status: int | None = None
    body: Any = None
    error: str | None = None


async def call(
    http: aiohttp.ClientSession,
    url: str,
    relay: int,
    rpc_id: str,
    *,
    method: str = "tools/call",
    headers: dict[str, str] | None = None,
) -> Outcome:
    message = {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": {}}
    try:
        async with http.post(url, json=message, headers={"Accept": "application/json", **(headers or {})}) as resp:
            body = await resp.read()
            return Outcome(relay, rpc_id, resp.status, json.loads(body) if body else None)
    except aiohttp.ClientError as exc:
        return Outcome(relay, rpc_id, error=type(exc).__name__)


def connector() -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=0)


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


async def _queued(relay: Relay, count: int) -> bool:
    return (await relay.app[BACKEND].status(TUNNEL)).queued == count


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


# =========================================================================== killing things mid-run


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


# =========================================================================== real gateways


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
