"""Client CPU per Redis script, in this process: redis-py's `register_script` through a pool (with hiredis
as its parser, and with its Python parser) against the relay's script pipe, alone (c=1) and 64 at once.

Owns only this comparison (issue 20, target 5: the Redis client path); starts its own redis-server
(the one `bash scripts/bootstrap.sh bench` puts in .venv/bin) on a free loopback port, stops it after.

    .venv/bin/python -m bench.redis_micro [ROUNDS]     # medians of ROUNDS alternating samples (default 3)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import uvloop
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis

from gateway.relay import redis_scripts as lua
from gateway.relay.redis_pipe import ScriptPipe

CALLS = 3000
ARGS = ["bench:t:x"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def cpu_per_call(run: Callable[[], Awaitable[object]], concurrency: int) -> float:
    """µs of this process's CPU per call, after one warm-up pass."""
    per_task = CALLS // concurrency

    async def worker() -> None:
        for _ in range(per_task):
            await run()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - start) / (per_task * concurrency) * 1e6


async def sample(url: str) -> dict[str, float]:
    results: dict[str, float] = {}
    for name, parser in (("hiredis", _AsyncHiredisParser), ("Python", _AsyncRESP2Parser)):
        pool = BlockingConnectionPool.from_url(url, max_connections=64, protocol=2, parser_class=parser)
        client = Redis.from_pool(pool)
        script = client.register_script(lua.CLIENT_SEEN)
        for concurrency in (1, 64):
            results[f"redis-py, {name} parser, c={concurrency}"] = await cpu_per_call(
                lambda script=script: script(args=ARGS), concurrency
            )
        await client.aclose()
    pipe = ScriptPipe(ConnectionPool.from_url(url).make_connection(), connect_timeout_s=5.0, timeout_s=5.0)
    piped = pipe.register_script(lua.CLIENT_SEEN)
    for concurrency in (1, 64):
        before = (pipe.stats.commands, pipe.stats.writes)
        results[f"script pipe, c={concurrency}"] = await cpu_per_call(lambda: piped(args=ARGS), concurrency)
        commands, writes = pipe.stats.commands - before[0], pipe.stats.writes - before[1]
        results[f"script pipe, c={concurrency}: scripts per write"] = commands / max(1, writes)
    await pipe.aclose()
    return results


@contextlib.contextmanager
def local_redis() -> Iterator[tuple[str, int]]:
    """A redis-server of the venv on a free loopback port, no persistence, ready: (its URL, its pid)."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:  # ready by its log line
            if "Ready to accept connections" in line:
                break
        yield f"redis://127.0.0.1:{port}/0", server.pid
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with local_redis() as (url, _):
        samples: dict[str, list[float]] = {}
        for _ in range(rounds):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                for key, value in runner.run(sample(url)).items():
                    samples.setdefault(key, []).append(value)
        print("| client path | median | samples |\n|---|---:|---|")
        for key, values in samples.items():
            values.sort()
            print(f"| {key} | {values[len(values) // 2]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
