"""gateway.observe.otel_export: the span encoder writes what the SDK's OTLP encoder writes (decoded as
an ExportTraceServiceRequest, the two are equal), the exporter posts it to a real OTLP/HTTP receiver,
and the batch processor queues what the SDK's queues (the SDK code it stands in for is pinned)."""

from __future__ import annotations

import hashlib
import http.server
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._shared_internal import BatchProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from gateway.observe.otel_export import FastOTLPSpanExporter, GatewayBatchSpanProcessor, SpanEncoder
from gateway.observe.otel_spans import SpanStarter


def _spans() -> list[ReadableSpan]:
    """Spans of every shape the SDK makes: each kind, value type, events, links, statuses, remote parents,
    trace state, two scopes and two resources."""
    spans: list[ReadableSpan] = []
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "v1"), ("other", "x")]),
    )
    for service in ("gateway", "relay"):
        provider = TracerProvider(resource=Resource.create({"service.name": service, "service.version": "1.2"}))
        finished = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(finished))
        for scope, version in (("mcp-tunnel-gateway", "0.1"), ("other.library", None)):
            tracer = provider.get_tracer(scope, version, schema_url="https://opentelemetry.io/schemas/1.30.0")
            attributes = {
                "mcp.method.name": "tools/call",
                "network.transport": "tcp",
                "tunnel.poll.limit": 64,
                "negative": -5,
                "big": 2**62,
                "ratio": 0.25,
                "flag": True,
                "off": False,
                "names": ("a", "b"),
                "numbers": [1, 2, 3],
                "empty": "",
            }
            for kind in SpanKind:
                with tracer.start_as_current_span(
                    f"{scope} {kind.name}",
                    kind=kind,
                    attributes=attributes,
                    context=set_span_in_context(NonRecordingSpan(remote)),
                    links=[Link(remote, {"link.kind": "follows"}), Link(remote)],
                ) as span:
                    span.add_event("retry", {"gateway.retry.attempt": 2, "gateway.retry.delay_s": 0.5})
                    span.add_event("plain")
                    with tracer.start_as_current_span("child") as child:
                        child.set_status(Status(StatusCode.ERROR, "upstream said no: ünïcode"))
                    with tracer.start_as_current_span("ok") as child:
                        child.set_status(Status(StatusCode.OK))
            root = tracer.start_span("root", context=set_span_in_context(NonRecordingSpan(SpanContext(0, 0, False))))
            root.end()
        spans += finished.get_finished_spans()
        provider.shutdown()
    return spans


def _decoded(data: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    return request


def test_encoding_equals_the_sdk_encoders() -> None:
    spans = _spans()
    assert len(spans) > 40
    encoder = SpanEncoder()
    expected = encode_spans(spans)
    first = _decoded(encoder.encode(spans))
    assert first == expected
    again = _decoded(encoder.encode(spans))  # the remembered parts give the same bytes
    assert again == expected
    for span in spans[:5]:  # one span alone, as small batches are
        assert _decoded(encoder.encode([span])) == encode_spans([span])


def test_encoding_of_many_distinct_values_stays_right() -> None:
    """Past the remembered pairs' bound the memory starts over and the output is unchanged."""
    provider = TracerProvider()
    finished = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("t")
    for index in range(5000):
        tracer.start_span("s", attributes={"gateway.request.id": f"req-{index}", "n": index}).end()
    spans = list(finished.get_finished_spans())
    assert _decoded(SpanEncoder().encode(spans)) == encode_spans(spans)


def test_the_gateways_own_spans_encode_as_the_sdk_encodes_them() -> None:
    """Spans `SpanStarter` makes (the shared empty event and link lists, one span given an event) whose
    values under one key are 1, 1.0 and True in turn: equal as dict keys, each encoded as its own type
    however the pairs seen before it were remembered."""
    provider = TracerProvider()
    finished = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    starter = SpanStarter(provider.get_tracer("mcp-tunnel-gateway", "0.1"))
    values: list[object] = [1, 1.0, True, 1, "1", False, 0, 0.0, 2**63 - 1, -1]
    for index, value in enumerate(values * 2):
        span = starter.start(f"s{index % 3}", SpanKind(index % 5), {"v": value, "gateway.request.id": "req"})
        if index == 4:
            span.add_event("retry", {"v": value})
        span.end()
    spans = list(finished.get_finished_spans())
    assert len(spans) == 2 * len(values)
    encoder = SpanEncoder()
    for span in spans:  # one at a time: each value meets the pairs the ones before it left behind
        assert _decoded(encoder.encode([span])) == encode_spans([span])
    assert _decoded(encoder.encode(spans)) == encode_spans(spans)


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []
    handler = type("Handler", (_Receiver,), {"bodies": bodies})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_exporter_posts_the_batch(receiver: tuple[str, list[bytes]]) -> None:
    url, bodies = receiver
    exporter = FastOTLPSpanExporter(endpoint=url, timeout=10)
    spans = _spans()
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(bodies) == 1
    assert _decoded(bodies[0]) == encode_spans(spans)
    exporter.shutdown()


def test_the_batch_processor_queues_what_the_sdks_queues() -> None:
    exported = InMemorySpanExporter()
    processor = GatewayBatchSpanProcessor(exported, max_export_batch_size=4, schedule_delay_millis=60_000)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("s")
    for index in range(10):
        tracer.start_span(f"span {index}").end()
    unsampled = set_span_in_context(NonRecordingSpan(SpanContext(0xABC, 0xDEF, True, TraceFlags(0))))
    tracer.start_span("not sampled", context=unsampled).end()
    assert processor.force_flush()
    assert sorted(span.name for span in exported.get_finished_spans()) == sorted(f"span {i}" for i in range(10))
    provider.shutdown()
    tracer.start_span("after shutdown").end()  # the SDK's emit: refused
    assert len(exported.get_finished_spans()) == 10


def test_the_sdk_code_the_batch_processor_stands_in_for_is_unchanged() -> None:
    """`GatewayBatchSpanProcessor.on_end` does what these two do (minus `os.getpid()` per span): if the SDK
    changes either, compare and update it, then the hashes here."""
    sources = {
        "BatchProcessor.emit": (BatchProcessor.emit, "221acffa5dbab37b"),
        "BatchSpanProcessor.on_end": (BatchSpanProcessor.on_end, "0f0a7d0eb4f998a4"),
    }
    for name, (function, expected) in sources.items():
        digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]
        assert digest == expected, f"the SDK's {name} changed: review GatewayBatchSpanProcessor.on_end"


def test_the_exporters_session_reads_the_environment_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Proxies, `no_proxy`, a .netrc login and the CA bundle apply as `requests` would apply them per request."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine collector.example login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "bundle.pem"))
    remote = FastOTLPSpanExporter(endpoint="https://collector.example/v1/traces")
    session = remote._client._transport._session  # type: ignore[attr-defined]
    assert session.trust_env is False
    assert session.proxies["https"] == "http://127.0.0.1:3128"
    assert session.auth == ("user", "secret")
    assert session.verify == str(tmp_path / "bundle.pem")
    local = FastOTLPSpanExporter(endpoint="http://127.0.0.1:4318/v1/traces")
    session = local._client._transport._session  # type: ignore[attr-defined]
    assert session.trust_env is False
    assert "http" not in session.proxies
    assert session.auth is None
    assert session.verify is True
