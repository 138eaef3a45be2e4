"""Telemetry with metrics and no tracing: the scopes build no span and no context, and the MCP duration
histograms get exactly the attribute sets they get with tracing on, error cases included (a shared
attribute set is never changed by one call's error). The same for traces that are not sampled, which
still pass their context on."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator

from msgspec import Raw
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import DEFAULT_OFF, DEFAULT_ON, ParentBasedTraceIdRatio, Sampler

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
    """An upstream that answers `body`, or fails as a server sending garbage would; keeps each call."""

    name = "fast"
    transport = "stdio"
    observer = None
    ready = True

    def __init__(self, body: bytes | None, calls: list[Call] | None = None) -> None:
        self.body = body
        self.calls = calls if calls is not None else []

    async def exchange(self, call: Call) -> AsyncIterator[Frame]:
        self.calls.append(call)
        if self.body is None:
            raise UpstreamProtocolError("fast", "invalid_json")
        yield Reply(200, self.body)


def _telemetry(
    tracing: bool, sampler: Sampler | None = None
) -> tuple[OtelTelemetry, InMemoryMetricReader, InMemorySpanExporter]:
    otel = InMemoryOtel(tracing=tracing, sampler=sampler)
    return otel.telemetry, otel.reader, otel.spans


async def _command(
    t: OtelTelemetry,
    tool: str,
    body: bytes | None,
    *,
    answer: bool = True,
    traceparent: str | None = None,
    calls: list[Call] | None = None,
) -> None:
    headers = {"Mcp-Session-Id": ["sess"], "MCP-Protocol-Version": ["2025-06-18"]}
    if traceparent is not None:
        headers["traceparent"] = [traceparent]
    command = PolledCommand(request_id="req_1", shard_token="s", channel="main", headers=headers)
    params = Raw(b'{"name":"%s","arguments":{}}' % tool.encode())
    message = JsonRpcMessage(jsonrpc="2.0", id=Raw(b"7"), method="tools/call", params=params)
    with t.command(command, asyncio.get_running_loop().time()):
        t.describe(message)
        assert current_trace_ids() is None or t.tracing
        posted = None
        try:
            async for frame in t.exchange(_Upstream(body, calls), Call("tools/call", Raw(b"7"), params), INFO):
                if isinstance(frame, Reply):
                    posted = frame.body
        except UpstreamProtocolError:
            posted = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"upstream failed"}}'
        if answer:
            with t.post("jsonrpc_response", 200, posted, {}) as post:
                post.delivered(True)


async def _calls(t: OtelTelemetry, traceparent: str | None = None, calls: list[Call] | None = None) -> None:
    """Every outcome, with successes before and after the failures."""
    for tool, body, answer in [
        ("echo", OK, True),
        ("echo", RPC_ERROR, True),
        ("echo", SERVER_ERROR, True),
        ("echo", TOOL_ERROR, True),
        ("echo", None, True),
        ("echo", OK, False),
        ("add", OK, True),
        ("echo", OK, True),
    ]:
        await _command(t, tool, body, answer=answer, traceparent=traceparent, calls=calls)


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


UNSAMPLED_TRACE = "5" * 32
UNSAMPLED = f"00-{UNSAMPLED_TRACE}-{'6' * 16}-00"
"""A caller's context whose trace is not sampled (W3C Trace Context, `trace-flags` 00)."""


async def test_an_unsampled_trace_records_no_span_the_same_metrics_and_passes_its_context_on() -> None:
    """W3C Trace Context §3.2.2.5 (`trace-flags`): a trace the caller did not sample, under the default
    parent-based sampler, and traces a `parentbased_always_off` or a 1-in-1000 ratio sampler turns down
    (tracing on with `OTEL_TRACES_SAMPLER`, or `telemetry.sampling_ratio`) record no span. The duration
    histograms still get exactly the attribute sets of every-span tracing (the span attributes left
    unbuilt are not the metrics'), and the server is still told the trace and that it is not sampled
    (`traceparent` in `params._meta`, the sampled flag off), so it starts no trace of its own."""
    everything, everything_reader, _ = _telemetry(tracing=True)
    await _calls(everything)
    expected = _sets(everything_reader)
    cases: list[tuple[Sampler, str | None]] = [
        (DEFAULT_ON, UNSAMPLED),
        (DEFAULT_OFF, None),
        (ParentBasedTraceIdRatio(0.001), UNSAMPLED),
    ]
    for sampler, traceparent in cases:
        t, reader, spans = _telemetry(tracing=True, sampler=sampler)
        calls: list[Call] = []
        await _calls(t, traceparent, calls)
        t.shutdown()
        assert spans.get_finished_spans() == (), sampler.get_description()
        assert _sets(reader) == expected, sampler.get_description()
        assert len(calls) == 8
        for call in calls:
            meta = json.loads(bytes(call.params))["_meta"] if call.params else {}
            version, trace_id, span_id, flags = meta["traceparent"].split("-")
            assert version == "00"
            assert int(flags, 16) & 1 == 0  # not sampled (a root's id also says random: 02)
            assert int(span_id, 16) != 0
            if traceparent is not None:
                assert trace_id == UNSAMPLED_TRACE
    everything.shutdown()


async def test_a_sampled_trace_gets_every_attribute_under_any_sampler() -> None:
    """The attributes left unbuilt for unsampled spans are built whenever a span may be recorded: a caller's
    sampled trace under a 1-in-1000 ratio sampler gets the spans, names and attributes it gets under the
    default sampler."""
    sampled = f"00-{'7' * 32}-{'8' * 16}-01"
    shapes = []
    for sampler in (DEFAULT_ON, ParentBasedTraceIdRatio(0.001)):
        t, _, spans = _telemetry(tracing=True, sampler=sampler)
        await _calls(t, sampled)
        t.shutdown()
        finished = spans.get_finished_spans()
        assert len(finished) == 8 * 3 - 1  # a command, its upstream call and its response POST (one unanswered)
        calls = [span for span in finished if span.name.startswith("tools/call")]
        assert len(calls) == 16  # each command's SERVER span and its upstream call's CLIENT span
        for span in calls:  # span-only attributes (the metrics have the others); the session is the client's
            wanted = {"jsonrpc.request.id", "mcp.session.id"} if span.kind.name == "SERVER" else {"jsonrpc.request.id"}
            assert wanted <= set(span.attributes or {}), span.kind
        shapes.append(sorted((span.name, span.kind.name, sorted((span.attributes or {}).items())) for span in finished))
    assert shapes[0] == shapes[1]


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
