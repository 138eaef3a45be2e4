"""CPU per command of the gateway's telemetry hooks alone, in one process: off, metrics only, and
tracing (every span sampled, spans encoded by our encoder or the SDK's). Measures; changes nothing.

    .venv/bin/python -m bench.telemetry_micro            # all modes, 20,000 commands each, least of 3 runs
    .venv/bin/python -m bench.telemetry_micro --profile tracing   # cProfile of one mode, top 30 by own time

One command here is what the dispatcher does around a `tools/call` with a fast server: the command
span, `describe`, the upstream exchange (one reply), the response POST span, and one poll span
every 8 commands (a batch at c=64). The exporter encodes each batch and sends nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from msgspec import Raw
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gateway.observe.hooks import NOOP, Telemetry
from gateway.observe.otel import OtelTelemetry
from gateway.observe.otel_export import GatewayBatchSpanProcessor, SpanEncoder
from gateway.protocol.mcp import Call, Frame, Reply, UpstreamInfo
from gateway.protocol.wire import JsonRpcMessage, PolledCommand

MODES = ("off", "metrics", "tracing-no-export", "tracing", "tracing-sdk-encoder")
PARAMS = Raw(b'{"name":"echo","arguments":{"text":"hi"}}')
ANSWER = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}]}}'


class _Encoding(SpanExporter):
    def __init__(self, sdk: bool, encode: bool = True) -> None:
        self._sdk = sdk
        self._encode = encode
        self._ours = SpanEncoder()
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        if not self._encode:
            pass
        elif self._sdk:
            encode_spans(spans).SerializePartialToString()
        else:
            self._ours.encode(spans)
        return SpanExportResult.SUCCESS


class _Upstream:
    name = "s0"
    transport = "stdio"
    observer = None
    ready = True

    async def exchange(self, call: Call) -> AsyncIterator[Frame]:
        yield Reply(200, ANSWER)


def _telemetry(mode: str) -> tuple[Telemetry, TracerProvider | None, _Encoding | None]:
    if mode == "off":
        return NOOP, None, None
    tracer_provider = None
    exporter = None
    if mode.startswith("tracing"):
        tracer_provider = TracerProvider()
        exporter = _Encoding(sdk=mode.endswith("sdk-encoder"), encode=not mode.endswith("no-export"))
        tracer_provider.add_span_processor(GatewayBatchSpanProcessor(exporter))  # as otel_sdk builds it
    meters = MeterProvider(metric_readers=[InMemoryMetricReader()], exemplar_filter=AlwaysOffExemplarFilter())
    telemetry = OtelTelemetry(
        tracer_provider=tracer_provider,
        meter=meters.get_meter("bench"),
        scrape=None,
        capture_arguments=False,
        redact=lambda text: text,
        shutdowns=[meters.shutdown],
    )
    return telemetry, tracer_provider, exporter


async def _command(t: Any, command: PolledCommand, message: JsonRpcMessage, info: UpstreamInfo) -> None:
    with t.command(command, asyncio.get_running_loop().time()):
        t.describe(message)
        body = b""
        async for frame in t.exchange(_Upstream(), Call("tools/call", Raw(b"7"), PARAMS), info):
            if isinstance(frame, Reply):
                body = frame.body
        with t.post("jsonrpc_response", 200, body, {}) as post:
            post.delivered(True)


async def measure(mode: str, commands: int, profile: bool = False) -> float:
    """CPU µs per command (process time; the exporter's thread included)."""
    t, tracer_provider, exporter = _telemetry(mode)
    command = PolledCommand(
        request_id="req_1",
        shard_token="s",
        command_type="jsonrpc",
        channel="main",
        headers={"Mcp-Session-Id": ["sess"], "MCP-Protocol-Version": ["2025-06-18"]},
    )
    message = JsonRpcMessage(jsonrpc="2.0", id=Raw(b"7"), method="tools/call", params=PARAMS)
    info = UpstreamInfo(era="legacy", protocol_version="2025-06-18", capabilities=Raw(b"{}"), server_info=Raw(b"{}"))
    for _ in range(1000):
        await _command(t, command, message, info)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    started = time.process_time()
    for index in range(commands):
        if index % 8 == 0:
            with t.poll(64) as poll:
                poll.polled(8)
        await _command(t, command, message, info)
    if tracer_provider is not None:
        tracer_provider.force_flush()
    spent = time.process_time() - started
    exported = exporter.spans if exporter is not None else 0
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    t.shutdown()
    if tracer_provider is not None:
        tracer_provider.shutdown()
    if exporter is not None and exported < (1000 + commands) * 3 + commands // 8:  # 3 spans a command, a poll per 8
        print(f"{mode}: only {exported} spans exported (the processor's queue dropped some)")
    return spent / commands * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry_micro")
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--profile", choices=MODES)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated modes to measure")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode; the least is printed")
    args = parser.parse_args()
    if args.profile:
        print(f"{args.profile}: {await measure(args.profile, args.commands, profile=True):.1f} µs per command")
        return
    modes = [mode for mode in args.modes.split(",") if mode]
    results = {mode: min([await measure(mode, args.commands) for _ in range(args.repeat)]) for mode in modes}
    for mode, us in results.items():
        print(f"{mode:>22}: {us:6.1f} µs of CPU per command")


if __name__ == "__main__":
    asyncio.run(main())
