"""CPU per call of the relay's Redis backend without HTTP: two `RedisQueue` replicas in this process, callers
alternating between them, a gateway task polling replica b and delivering there (`deliver_soon` when the
backend has it), against a local redis-server; this process's CPU and redis-server's, per call.

Owns only this measurement (issue 20, target 5); starts its own redis-server (the one `bash
scripts/bootstrap.sh bench` puts in .venv/bin) on a free loopback port, stops it after.

    .venv/bin/python -m bench.redis_backend_micro [ROUNDS]     # medians of ROUNDS samples (default 5)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import msgspec
import uvloop
from redis.asyncio import Redis

from bench.redis_micro import local_redis
from gateway.protocol.wire import TunnelResponsePayload
from gateway.relay.config import RedisBackend
from gateway.relay.queue import new_command
from gateway.relay.redis_queue import RedisQueue

TUNNEL = "t"
CALLS = 6000
CONCURRENCY = 64
BODY = msgspec.Raw(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}')
RESULT = msgspec.Raw(b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"' + b"x" * 100 + b'"}]}}')


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sample(url: str, server_pid: int) -> tuple[float, float, dict[str, float]]:
    """(this process's µs per call, redis-server's µs per call, commands per call by name)."""
    spec = RedisBackend(url=url, key_prefix="micro", retry_s=5.0, replica_ttl_s=30.0, recheck_s=0.5)
    a, b = (RedisQueue([TUNNEL], url=url, spec=spec, queue_max=10_000, client_seen_grace_s=30) for _ in range(2))
    for queue in (a, b):
        await queue.start()
    loop = asyncio.get_running_loop()
    stopping = False

    async def caller(n: int, calls: int) -> None:
        queue = a if n % 2 else b
        for _ in range(calls):
            assert await queue.client_seen(TUNNEL)
            headers = {"Mcp-Session-Id": [f"s{n}"]}
            cmd = new_command(
                command_type="jsonrpc", channel="main", headers=headers, deadline=loop.time() + 30, jsonrpc=BODY
            )
            await queue.enqueue(TUNNEL, cmd)
            assert (await queue.next_frame(TUNNEL, cmd.request_id)).is_terminal
            await queue.discard(TUNNEL, cmd.request_id)

    async def gateway() -> None:
        soon = getattr(b, "delivers_soon", False)  # main before the task-free POST has no such attribute
        while not stopping:
            pending: list[asyncio.Future[object]] = []
            for cmd in await b.take(TUNNEL, limit=64, timeout_s=0.2, instance_id="gw"):
                frame = TunnelResponsePayload(
                    request_id=cmd.request_id, resp_code=200, resp_type="jsonrpc_response", resp_json=RESULT
                )
                if soon:
                    report: asyncio.Future[object] = loop.create_future()
                    b.deliver_soon(TUNNEL, cmd.shard_token, frame, report.set_result)
                    pending.append(report)
                else:
                    pending.append(asyncio.ensure_future(b.deliver(TUNNEL, cmd.shard_token, frame)))
            for done in pending:
                assert await done is None

    polling = asyncio.create_task(gateway())
    for _ in range(1000):  # until the first poll has marked the gateway as seen
        if await a.client_seen(TUNNEL) and await b.client_seen(TUNNEL):
            break
        await asyncio.sleep(0.01)
    await asyncio.gather(*(caller(n, 20) for n in range(CONCURRENCY)))  # warm-up
    admin = Redis.from_url(url)
    await admin.config_resetstat()
    per = CALLS // CONCURRENCY
    start, server_start = time.process_time(), cpu_s(server_pid)
    await asyncio.gather(*(caller(n, per) for n in range(CONCURRENCY)))
    calls = per * CONCURRENCY
    mine = (time.process_time() - start) / calls * 1e6
    server = (cpu_s(server_pid) - server_start) / calls * 1e6
    stats = await admin.info("commandstats")
    await admin.aclose()
    stopping = True
    await polling
    for queue in (a, b):
        await queue.close()
        await queue.dispose()
    counts = {name.removeprefix("cmdstat_"): value["calls"] / calls for name, value in stats.items()}
    return mine, server, counts


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with local_redis() as (url, pid):
        mine: list[float] = []
        theirs: list[float] = []
        counts: dict[str, float] = {}
        for _ in range(rounds):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                own, server_us, counts = runner.run(sample(url, pid))
            mine.append(own)
            theirs.append(server_us)
        for label, values in (("both replicas' backend", mine), ("redis-server", theirs)):
            values.sort()
            listed = ", ".join(f"{v:.1f}" for v in values)
            print(f"{label}: µs of CPU per call, median {values[len(values) // 2]:.1f} ({listed})")
        print(
            "commands per call (last sample):",
            ", ".join(f"{k} {v:.2f}" for k, v in sorted(counts.items()) if v >= 0.01),
        )


if __name__ == "__main__":
    main()
