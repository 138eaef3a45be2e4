"""gateway.observe.otel_relay: the relay's SERVER span is the same whether the front door hands it the
message it decoded or the span decodes the body itself, and the command it passes on carries that span's
trace context in `params._meta` either way; a trace that is not sampled records no span and is still
passed on, and a sampled one under a ratio sampler gets its attributes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from multidict import CIMultiDict
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio, Sampler

from gateway.observe.otel import OtelTelemetry
from gateway.protocol.wire import Codec

PARENT = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
BODIES = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}',
    b'{"jsonrpc":"2.0","id":"x","method":"tools/list"}',
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
    b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"e","_meta":{"traceparent":"'
    + PARENT.encode()
    + b'","progressToken":3}}}',
    b'{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///caf\\u00e9"}}',
    b'{"jsonrpc":"2.0","id":4,"result":{}}',
]


def _telemetry(sampler: Sampler | None = None) -> tuple[OtelTelemetry, InMemorySpanExporter]:
    finished = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(finished))
    telemetry = OtelTelemetry(
        tracer_provider=provider,
        meter=MeterProvider().get_meter("test"),
        scrape=None,
        capture_arguments=False,
        redact=lambda text: text,
        shutdowns=[provider.shutdown],
    )
    return telemetry, finished


@pytest.fixture
def telemetry() -> Iterator[tuple[OtelTelemetry, InMemorySpanExporter]]:
    telemetry, finished = _telemetry()
    yield telemetry, finished
    telemetry.shutdown()


def _request(
    telemetry: OtelTelemetry, body: bytes, *, decoded: bool, parent: bool, traceparent: str = PARENT
) -> tuple[bytes | None, str]:
    """One request through the relay's span: (the command's body, the span's traceparent)."""
    headers = CIMultiDict([("Host", "relay"), ("Mcp-Session-Id", "s-1"), ("MCP-Protocol-Version", "2025-06-18")])
    if parent:
        headers["traceparent"] = traceparent
    message = Codec().message(body) if decoded else None
    with telemetry.relay_tracer().request("main", headers, body, message) as trace:
        out_headers, out = trace.inject({"Accept": ["application/json"]}, body)
        trace.answered(200, b'{"jsonrpc":"2.0","id":1,"result":{"isError":true}}')
    return out, out_headers["traceparent"][0]


def _shape(span: ReadableSpan) -> tuple[object, ...]:
    parent = span.parent.span_id if span.parent is not None else None
    return span.name, span.kind, dict(span.attributes or {}), span.status.status_code, parent


@pytest.mark.parametrize("parent", [False, True])
@pytest.mark.parametrize("body", BODIES)
def test_the_span_is_the_same_with_the_front_doors_decode(
    telemetry: tuple[OtelTelemetry, InMemorySpanExporter], body: bytes, parent: bool
) -> None:
    t, finished = telemetry
    own_body, own_trace = _request(t, body, decoded=False, parent=parent)
    shared_body, shared_trace = _request(t, body, decoded=True, parent=parent)
    own_span, shared_span = finished.get_finished_spans()
    assert _shape(own_span) == _shape(shared_span)
    assert own_body is not None
    assert shared_body is not None
    if b'"method"' not in body:
        assert own_body == body, "a response is passed on unchanged"
        assert shared_body == body
        return
    for out, trace in ((own_body, own_trace), (shared_body, shared_trace)):
        meta = json.loads(out)["params"]["_meta"]
        assert meta["traceparent"] == trace, "the command carries the relay span's own context"
    own_meta = json.loads(own_body)["params"]
    shared_meta = json.loads(shared_body)["params"]
    own_meta["_meta"].pop("traceparent")
    shared_meta["_meta"].pop("traceparent")
    assert own_meta == shared_meta, "the rest of params is the same both ways"


@pytest.mark.parametrize("decoded", [False, True])
def test_a_trace_the_caller_did_not_sample_is_passed_on_without_a_span(decoded: bool) -> None:
    """W3C Trace Context §3.2.2.5 (`trace-flags`): with a parent-based sampler, a caller's unsampled trace
    gets no relay span, and the command still tells the gateway (header and `params._meta`) the trace and
    that it is not sampled; a sampled one, under a 1-in-1000 ratio sampler, gets the span with every
    attribute it gets under the default sampler."""
    unsampled = "00-" + "c" * 32 + "-" + "d" * 16 + "-00"
    t, finished = _telemetry(ParentBasedTraceIdRatio(0.001))
    body, trace = _request(t, BODIES[0], decoded=decoded, parent=True, traceparent=unsampled)
    assert finished.get_finished_spans() == ()
    assert body is not None
    assert json.loads(body)["params"]["_meta"]["traceparent"] == trace
    version, trace_id, _, flags = trace.split("-")
    assert (version, trace_id, flags) == ("00", "c" * 32, "00")
    _request(t, BODIES[0], decoded=decoded, parent=True)
    ratio_span = finished.get_finished_spans()[0]
    t.shutdown()
    default, every = _telemetry()
    _request(default, BODIES[0], decoded=decoded, parent=True)
    default.shutdown()
    assert _shape(ratio_span) == _shape(every.get_finished_spans()[0])
    assert "jsonrpc.request.id" in (ratio_span.attributes or {})
