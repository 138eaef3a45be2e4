"""The relay's CPU per call in one process, without sockets: the lean server's connections are fed the bytes
a client and a gateway send (MCP POSTs, a poll, response POSTs) through in-memory transports.

Owns that measurement only; it changes no relay code and binds nothing. The kernel's share (socket reads
and writes, epoll) is left out on purpose: what is left is the relay's own Python work per call, which a
py-spy profile of the real process cannot separate from time spent blocked in `write`.

    python -m bench.relay_micro --calls 20000              # tracing off
    python -m bench.relay_micro --calls 20000 --tracing    # every span sampled; exported to a loopback sink
    python -m bench.relay_micro --profile                  # cProfile, top functions by own time
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import subprocess
import sys
import time
from typing import Any

import msgspec
import uvloop

from gateway.cli import settle_gc
from gateway.relay import RelayConfig, TunnelSpec, build_relay_app
from gateway.relay.app import LEAN
from gateway.relay.lean_http import LeanConnection, LeanServer
from gateway.relay.queue import MemoryQueue
from gateway.relay.tracing import NO_TRACER, RelayTracer

TUNNEL = "tunnel_bench"
KEY = "gateway-key-bench"
SESSION = "5f1c2a3b4d5e6f708192a3b4c5d6e7f8"


class _Transport:
    """An asyncio transport that keeps what is written (and can be cleared)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        raise AssertionError("the micro-benchmark's requests are all lean ones")


def _connect(server: LeanServer) -> tuple[LeanConnection, _Transport]:
    connection = server()
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


def _mcp_post(index: int, size: int) -> bytes:
    body = msgspec.json.encode(
        {
            "jsonrpc": "2.0",
            "id": index,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "x" * size}},
        }
    )
    head = (
        f"POST /v1/mcp/{TUNNEL} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: application/json, text/event-stream\r\n"
        f"Content-Type: application/json\r\nMcp-Session-Id: {SESSION}\r\nMCP-Protocol-Version: 2025-06-18\r\n"
        "User-Agent: Python/3.11 aiohttp/3.14.5\r\nAccept-Encoding: gzip, deflate\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_POLL = (
    f"GET /v1/tunnels/{TUNNEL}/poll?limit=25&timeout_ms=30000 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    f"Authorization: Bearer {KEY}\r\nX-Tunnel-Client-Instance-Id: gw-1\r\nX-Tunnel-Client-Name: mcp-tunnel-gateway\r\n"
    "X-Tunnel-Client-Version: 0.1\r\nUser-Agent: mcp-tunnel-gateway/0.1\r\n\r\n"
).encode()


def _response_post(command: dict[str, Any]) -> bytes:
    rpc = msgspec.json.decode(command["jsonrpc"].encode() if isinstance(command["jsonrpc"], str) else b"{}")
    answer = {"jsonrpc": "2.0", "id": rpc.get("id"), "result": {"content": [{"type": "text", "text": "ok"}]}}
    body = msgspec.json.encode(
        {
            "request_id": command["request_id"],
            "resp_type": "jsonrpc_response",
            "resp_code": 200,
            "resp_headers": {"Content-Type": ["application/json"]},
            "resp_json": answer,
        }
    )
    head = (
        f"POST /v1/tunnels/{TUNNEL}/response HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        f"Authorization: Bearer {KEY}\r\nX-Tunnel-Shard-Token: {command['shard_token']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _settle() -> None:
    for _ in range(4):
        await asyncio.sleep(0)


async def run(calls: int, concurrency: int, size: int, tracer: RelayTracer) -> tuple[float, float]:
    """(CPU seconds per call of the process, of the event loop's thread alone) over `calls` calls in
    rounds of `concurrency`."""
    config = RelayConfig(
        listen="127.0.0.1:0",
        tunnels={TUNNEL: TunnelSpec(gateway_key=KEY, name="bench")},
        queue_max=100_000,
        response_timeout_s=120,
    )
    backend = MemoryQueue(config.tunnels, queue_max=config.queue_max, client_seen_grace_s=config.client_seen_grace_s)
    await backend.start()
    app = build_relay_app(config, backend=backend, tracer=tracer)
    server = app[LEAN]
    clients = [_connect(server) for _ in range(concurrency)]
    poller, polled = _connect(server)
    responder, acked = _connect(server)
    posts = [_mcp_post(index, size) for index in range(concurrency)]
    # A first poll marks the gateway as seen (the front door refuses callers of a tunnel nobody polls).
    poller.data_received(_POLL.replace(b"timeout_ms=30000", b"timeout_ms=1"))
    await asyncio.sleep(0.01)
    polled.out.clear()
    started = started_loop = 0.0
    done = 0
    rounds = 0
    while done < calls:
        if rounds == 2:  # warmed up; the collector as `gateway relay` sets it once serving
            settle_gc()
            started = time.process_time()
            started_loop = time.thread_time()
            done = 0
        for (connection, _), post in zip(clients, posts, strict=True):
            connection.data_received(post)
        await _settle()
        answered = 0
        while answered < concurrency:
            poller.data_received(_POLL)
            await _settle()
            answer = b"".join(polled.out)
            polled.out.clear()
            reply = json.loads(answer.partition(b"\r\n\r\n")[2])
            if "commands" not in reply:
                raise RuntimeError(f"the poll was refused: {answer[:400]!r}")
            for command in reply["commands"]:
                responder.data_received(_response_post(command))
                await asyncio.sleep(0)
            answered += len(reply["commands"])
        await _settle()
        for _, transport in clients:
            if not transport.out:
                raise RuntimeError(f"a caller was not answered; acks: {acked.out[:2]!r}")
            transport.out.clear()
        acked.out.clear()
        done += answered
        rounds += 1
    spent = time.process_time() - started
    spent_loop = time.thread_time() - started_loop
    await backend.close()
    return spent / done, spent_loop / done


def _tracer(sink: str) -> tuple[RelayTracer, Any]:
    from gateway.config.routing import TelemetrySpec
    from gateway.observe.telemetry import RELAY_SERVICE, build

    telemetry = build(TelemetrySpec(enabled=True, endpoint=sink), service_name=RELAY_SERVICE, environ={})
    return telemetry.relay_tracer(), telemetry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--size", type=int, default=60, help="bytes of the tool argument")
    parser.add_argument("--tracing", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("sort", nargs="?", default="tottime", choices=["tottime", "cumulative"])
    args = parser.parse_args()
    sink = None
    tracer: RelayTracer = NO_TRACER
    telemetry = None
    if args.tracing:
        sink = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink"], stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None
        url = sink.stdout.readline().split()[1]
        tracer, telemetry = _tracer(url)
    try:
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as the relay CLI runs
            per_call, loop_per_call = runner.run(run(args.calls, args.concurrency, args.size, tracer))
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(45)
        if telemetry is not None:
            telemetry.shutdown()  # the export thread's last batches count too
        mode = "tracing on" if args.tracing else "tracing off"
        print(f"relay CPU per call: {per_call * 1e6:.1f} µs, event loop thread {loop_per_call * 1e6:.1f} µs ({mode})")
    finally:
        if sink is not None:
            sink.terminate()
            sink.wait()


if __name__ == "__main__":
    main()
