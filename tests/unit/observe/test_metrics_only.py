"""Telemetry with metrics and no tracing: the scopes build no span and no context, and the MCP duration
histograms get exactly the attribute sets they get with tracing on, error cases included (a shared
attribute set is never changed by one call's error)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

from msgspec import Raw
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.observe.otel import OtelTelemetry, current_trace_ids
from gateway.protocol.errors import UpstreamProtocolError
from gateway.protocol.mcp import Call, Era, Frame, Reply, UpstreamInfo
from gateway.protocol.wire import JsonRpcMessage, PolledCommand
from tests.support.otel_memory import InMemoryOtel

OK = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}]}}'
RPC_ERROR = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"no such tool"}}'
SERVER_ERROR = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"boom"}}'
TOOL_ERROR = b'{"jsonrpc":"2.0","id":7,"result":{"isError":true,"content":[]}}'
INFO = UpstreamInfo(era=Era.LEGACY, protocol_version="2025-06-18", capabilities=Raw(b"{}"), server_info=Raw(b"{}"))
DURATIONS = ("mcp.server.operation.duration", "mcp.client.operation.duration", "gateway.command.age")


class _Upstream:
    """An upstream that answers `body`, or fails as a server sending garbage would."""

    name = "fast"
    transport = "stdio"
    observer = None
    ready = True

    def __init__(self, body: bytes | None) -> None:
        self.body = body

    async def exchange(self, call: Call) -> AsyncIterator[Frame]:
        if self.body is None:
            raise UpstreamProtocolError("fast", "invalid_json")
        yield Reply(200, self.body)


def _telemetry(tracing: bool) -> tuple[OtelTelemetry, InMemoryMetricReader, InMemorySpanExporter]:
    otel = InMemoryOtel(tracing=tracing)
    return otel.telemetry, otel.reader, otel.spans


async def _command(t: OtelTelemetry, tool: str, body: bytes | None, *, answer: bool = True) -> None:
    command = PolledCommand(
        request_id="req_1",
        shard_token="s",
        channel="main",
        headers={"Mcp-Session-Id": ["sess"], "MCP-Protocol-Version": ["2025-06-18"]},
    )
    params = Raw(b'{"name":"%s","arguments":{}}' % tool.encode())
    message = JsonRpcMessage(jsonrpc="2.0", id=Raw(b"7"), method="tools/call", params=params)
    with t.command(command, asyncio.get_running_loop().time()):
        t.describe(message)
        assert current_trace_ids() is None or t.tracing
        posted = None
        try:
            async for frame in t.exchange(_Upstream(body), Call("tools/call", Raw(b"7"), params), INFO):
                if isinstance(frame, Reply):
                    posted = frame.body
        except UpstreamProtocolError:
            posted = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"upstream failed"}}'
        if answer:
            with t.post("jsonrpc_response", 200, posted, {}) as post:
                post.delivered(True)


async def _calls(t: OtelTelemetry) -> None:
    """Every outcome, with successes before and after the failures."""
    await _command(t, "echo", OK)
    await _command(t, "echo", RPC_ERROR)
    await _command(t, "echo", SERVER_ERROR)
    await _command(t, "echo", TOOL_ERROR)
    await _command(t, "echo", None)
    await _command(t, "echo", OK, answer=False)
    await _command(t, "add", OK)
    await _command(t, "echo", OK)


def _sets(reader: InMemoryMetricReader) -> dict[str, Counter[tuple[tuple[str, object], ...]]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, Counter[tuple[tuple[str, object], ...]]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name in DURATIONS:
                    counts = out.setdefault(metric.name, Counter())
                    for point in metric.data.data_points:
                        counts[tuple(sorted((point.attributes or {}).items()))] += point.count  # type: ignore[union-attr]
    return out


async def test_metrics_only_records_what_tracing_records_and_builds_no_span() -> None:
    traced, traced_reader, spans = _telemetry(tracing=True)
    metered, metered_reader, _ = _telemetry(tracing=False)
    assert traced.tracing
    assert not metered.tracing
    await _calls(traced)
    await _calls(metered)
    assert spans.get_finished_spans()  # the tracing side did make spans
    assert _sets(metered_reader) == _sets(traced_reader)
    traced.shutdown()
    metered.shutdown()


def _by_error(counts: Counter[tuple[tuple[str, object], ...]]) -> Counter[object]:
    out: Counter[object] = Counter()
    for key, count in counts.items():
        out[dict(key).get("error.type")] += count
    return out


async def test_an_error_never_leaks_into_the_shared_attribute_set() -> None:
    """mcp semantic conventions (`error.type` only on failed operations): after every kind of failure,
    a successful call of the same tool is still recorded without `error.type`."""
    metered, reader, _ = _telemetry(tracing=False)
    await _calls(metered)
    sets = _sets(reader)
    server = _by_error(sets["mcp.server.operation.duration"])
    # echo: 2 ok, -32602 (not a server error: no error.type), -32603, tool_error, failed upstream
    # (answered with -32603), unanswered; add: 1 ok.
    assert server == {None: 4, "-32603": 2, "tool_error": 1, "unanswered": 1}
    client = _by_error(sets["mcp.client.operation.duration"])
    assert client == {None: 4, "-32602": 1, "-32603": 1, "tool_error": 1, "protocol": 1}
    ok_sets = [dict(key) for key, _ in sets["mcp.server.operation.duration"].items() if "error.type" not in dict(key)]
    assert {attributes.get("rpc.response.status_code") for attributes in ok_sets} == {None, "-32602"}
    metered.shutdown()
