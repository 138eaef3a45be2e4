"""Micro-measurements of the hot-path mechanisms: what one costs per command, before and now.

Owns small, isolated comparisons run in this process (CPU time by
`time.process_time`, so the other cores' load matters less than for wall-clock
numbers), each the mechanism the profile found against the one that replaced it
(or, for decoding, the one proposed):

- response POST: aiohttp `ClientSession.post` vs `gateway.tunnel.http1.H1Client` (keep-alive, prebuilt header lines)
- stdio write: `write(line + b"\\n")` + `await drain()` per message vs `gateway.upstream.pipe.LineWriter`
- per-command task: `create_task` + `asyncio.timeout_at` per command vs a pool of worker tasks
- decoding a polled command: batch -> command -> message, plus the byte scans for the era and the
  progress token, vs one typed decode of the batch and no scans (100 B and 1 MB payloads; proposed)

    .venv/bin/python -m bench.micro          # prints a Markdown table, saves bench/out/micro.json
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec

from bench.stacks import BENCH, OUT, PYTHON
from gateway.protocol.wire import JsonRpcMessage
from gateway.tunnel.http1 import H1Client
from gateway.upstream.pipe import LineWriter

N_POST = 3000
N_WRITE = 20000
N_TASK = 50000
CONCURRENCY = 64


async def _cpu_per_op(n: int, body: Callable[[], Awaitable[None]]) -> float:
    """µs of this process's CPU per operation."""
    started = time.process_time()
    await body()
    return 1e6 * (time.process_time() - started) / n


# --------------------------------------------------------------------------- response POST


async def post_costs(url: str) -> dict[str, float]:
    body = (
        b'{"request_id":"req_0123456789abcdef","resp_code":200,"resp_type":"jsonrpc_response",'
        b'"resp_json":{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}]}}}'
    )
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k", "X-Tunnel-Client-Name": "bench"}
    out: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60)) as session:

        async def one_aiohttp() -> None:
            async with session.post(url, data=body, headers={**headers, "X-Tunnel-Shard-Token": "abc"}) as resp:
                await resp.read()

        async def run_aiohttp() -> None:
            await _fanout(N_POST, one_aiohttp)

        await run_aiohttp()  # warm the pool
        out["response POST: aiohttp ClientSession.post (before)"] = await _cpu_per_op(N_POST, run_aiohttp)

    client = H1Client(url)
    lines = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())

    async def one_h1() -> None:
        await client.post(lines + b"X-Tunnel-Shard-Token: abc\r\n", body)

    async def run_h1() -> None:
        await _fanout(N_POST, one_h1)

    await run_h1()  # warm the pool
    out["response POST: gateway.tunnel.http1.H1Client, prebuilt header lines (now)"] = await _cpu_per_op(N_POST, run_h1)
    client.close()
    return out


async def _fanout(n: int, one: Callable[[], Awaitable[None]]) -> None:
    """Run `one` n times, CONCURRENCY at a time."""
    remaining = [n]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


# --------------------------------------------------------------------------- stdio write


async def write_costs() -> dict[str, float]:
    line = (
        b'{"jsonrpc":"2.0","id":12345,"method":"tools/call","params":{"name":"echo","arguments":{"message":"'
        + b"x" * 100
        + b'"}}}'
    )
    out: dict[str, float] = {}
    proc = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
    assert proc.stdin is not None
    stdin = proc.stdin

    async def one_current() -> None:
        stdin.write(line + b"\n")
        await stdin.drain()

    async def run_current() -> None:
        await _fanout(N_WRITE, one_current)

    out["stdio: write(line + newline) + drain() per message (before)"] = await _cpu_per_op(N_WRITE, run_current)

    writer = LineWriter(stdin)

    async def one_coalesced() -> None:
        writer.write(line)
        await writer.drain()  # waits only when the pipe is backed up
        await asyncio.sleep(0)  # a call would await its answer here; keep the same number of loop turns

    async def run_coalesced() -> None:
        await _fanout(N_WRITE, one_coalesced)

    out["stdio: gateway.upstream.pipe.LineWriter, lines coalesced per loop tick (now)"] = await _cpu_per_op(
        N_WRITE, run_coalesced
    )
    stdin.close()
    await proc.wait()
    return out


# --------------------------------------------------------------------------- tasks


async def task_costs() -> dict[str, float]:
    out: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def command(i: int) -> None:
        async with asyncio.timeout_at(loop.time() + 60):
            await asyncio.sleep(0)

    async def run_tasks() -> None:
        tasks: set[asyncio.Task[None]] = set()
        for start in range(0, N_TASK, CONCURRENCY):
            for i in range(start, min(N_TASK, start + CONCURRENCY)):
                task = asyncio.create_task(command(i), name=f"command:req_{i:032x}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)

    out["per command: create_task + timeout_at (before)"] = await _cpu_per_op(N_TASK, run_tasks)

    async def run_workers() -> None:
        queue: asyncio.Queue[int | None] = asyncio.Queue()

        async def worker() -> None:
            while True:
                if await queue.get() is None:
                    return
                await asyncio.sleep(0)  # the command (its deadline checked against loop.time() where it awaits)

        workers = [asyncio.create_task(worker()) for _ in range(CONCURRENCY)]
        for i in range(N_TASK):
            queue.put_nowait(i)
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)

    out["per command: a pool of worker tasks, as the dispatcher runs them (now)"] = await _cpu_per_op(
        N_TASK, run_workers
    )
    return out


# --------------------------------------------------------------------------- decode once


class _Cmd(msgspec.Struct):
    request_id: str
    shard_token: str
    jsonrpc: JsonRpcMessage


class _Batch(msgspec.Struct):
    commands: list[_Cmd]


def decode_costs(payload: int) -> dict[str, float]:
    """One polled command of `payload` bytes through the gateway's decode steps, current vs decode-once."""
    from gateway.protocol.wire import Codec

    codec = Codec()
    message = (
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"%s"}}}'
        % (b"x" * payload)
    )
    command = (
        b'{"request_id":"req_1","shard_token":"t","command_type":"jsonrpc","channel":"main","headers":{},"jsonrpc":%s}'
        % message
    )
    batch = b'{"commands":[%s]}' % command

    typed = msgspec.json.Decoder(_Batch)
    n = 20 if payload >= 1 << 20 else 20000

    def current() -> None:
        for raw in codec.batch(batch).commands:  # Poller.run
            cmd = codec.command(raw)
            assert not isinstance(cmd.jsonrpc, msgspec.UnsetType)
            msg = codec.message(cmd.jsonrpc)  # Dispatcher._decode
            params = msg.params
            assert not isinstance(params, msgspec.UnsetType)
            _ = b"io.modelcontextprotocol/protocolVersion" in memoryview(params).tobytes()  # eras.client_era
            _ = b"progressToken" in bytes(params)  # StdioUpstream._rewrite_progress_token
            codec.request(msgspec.Raw(b"1"), "tools/call", params)  # the line to the server

    def once() -> None:
        for cmd in typed.decode(batch).commands:  # one pass: batch, command and message together
            params = cmd.jsonrpc.params
            assert not isinstance(params, msgspec.UnsetType)
            codec.request(msgspec.Raw(b"1"), "tools/call", params)

    out = {}
    for name, fn in (("current", current), ("decode once, no byte scans (proposed)", once)):
        started = time.process_time()
        for _ in range(n):
            fn()
        out[f"decode path for a {payload:,}-byte command: {name}"] = 1e6 * (time.process_time() - started) / n
    return out


async def main() -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, str(BENCH / "fast_server.py"), "--http", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    url = (await proc.stdout.readline()).decode().split()[1]
    try:
        results = {**await post_costs(url), **await write_costs(), **await task_costs()}
        results.update(decode_costs(100))
        results.update(decode_costs(1 << 20))
    finally:
        proc.terminate()
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
    return results


def render(results: dict[str, float]) -> str:
    rows = ["| mechanism | CPU µs per command |", "|---|---:|"]
    rows += [f"| {name} | {value:.1f} |" for name, value in results.items()]
    return "\n".join(rows)


if __name__ == "__main__":
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        found = runner.run(main())
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "micro.json").write_text(json.dumps(found, indent=1))
    print(render(found))
    sys.exit(0)
