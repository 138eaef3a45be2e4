"""deploy/otel-collector.yaml: the pipelines reference only defined components and agree with compose and
Prometheus; an OTLP/HTTP export from the OpenTelemetry SDK, configured by the compose file's OTEL_* variables,
reaches a loopback receiver wired like those pipelines, which decodes the protobuf."""

from __future__ import annotations

import gzip
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from gateway.config.base import split_listen
from tests.support.deploy_files import DEPLOY, OPS_PORT, load_yaml, run_command

COLLECTOR = DEPLOY / "otel-collector.yaml"
SIGNALS = ("traces", "metrics", "logs")


def _collector() -> dict[str, Any]:
    return dict(load_yaml(COLLECTOR))


def test_collector_pipelines_are_wired() -> None:
    collector = _collector()
    service = collector["service"]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline_id, pipeline in service["pipelines"].items():
        assert pipeline_id.partition("/")[0] in SIGNALS, pipeline_id
        for kind in ("receivers", "exporters"):
            assert pipeline.get(kind), f"{pipeline_id} has no {kind}"
        for kind, names in used.items():
            for name in pipeline.get(kind, []):
                assert name in (collector.get(kind) or {}), f"{pipeline_id}: {kind[:-1]} {name} is not defined"
                names.add(name)
        processors = pipeline.get("processors", [])
        assert processors[0] == "memory_limiter", "the memory limiter goes first"
        assert processors[-1] == "batch", "batching goes last"
    for kind, names in used.items():
        assert set(collector.get(kind) or {}) == names, f"{kind} defined but unused"
    assert set(service.get("extensions", [])) == set(collector.get("extensions") or {})
    pipelines = service["pipelines"]
    assert any(e.partition("/")[0] == "otlp" for e in pipelines["traces"]["exporters"]), "traces go to Jaeger over OTLP"
    assert "prometheus" in pipelines["metrics"]["exporters"]


def test_collector_and_compose_and_prometheus_agree(compose_model: dict[str, Any]) -> None:
    collector = _collector()
    services = compose_model["services"]
    http_port = split_listen(collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"])[1]
    for name in ("relay", "gateway"):
        endpoint = urlsplit(services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.hostname, endpoint.port) == ("otel-collector", http_port)
        assert services[name]["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    jaeger_host, _, jaeger_port = collector["exporters"]["otlp/jaeger"]["endpoint"].rpartition(":")
    assert jaeger_host in services
    assert jaeger_port == "4317"
    prometheus = load_yaml(DEPLOY / "prometheus.yml")
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    exporter_port = split_listen(collector["exporters"]["prometheus"]["endpoint"])[1]
    assert targets == {f"otel-collector:{exporter_port}", f"gateway:{OPS_PORT}"}


@dataclass
class LoopbackCollector:
    """The collector's OTLP/HTTP receiver on 127.0.0.1: decodes each export and hands it to the
    exporters of every pipeline of that signal fed by the `otlp` receiver, as the config wires them."""

    pipelines: dict[str, Any]
    delivered: list[tuple[str, str, Any]] = field(default_factory=list)
    """(signal, exporter, decoded request)"""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, body: bytes, encoding: str) -> bytes | None:
        signal = {"/v1/traces": "traces", "/v1/metrics": "metrics"}.get(path)
        if signal is None:
            return None
        if encoding == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest() if signal == "traces" else ExportMetricsServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for pipeline_id, pipeline in self.pipelines.items():
                if pipeline_id.partition("/")[0] == signal and "otlp" in pipeline["receivers"]:
                    self.delivered += [(signal, exporter, request) for exporter in pipeline["exporters"]]
        response = ExportTraceServiceResponse() if signal == "traces" else ExportMetricsServiceResponse()
        return bytes(response.SerializeToString())


@pytest.fixture
def loopback_collector() -> Iterator[tuple[LoopbackCollector, str]]:
    sink = LoopbackCollector(_collector()["service"]["pipelines"])

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.headers["Content-Type"] == "application/x-protobuf"
            answer = sink.handle(self.path, body, self.headers.get("Content-Encoding", ""))
            self.send_response(200 if answer is not None else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer or b"")))
            self.end_headers()
            self.wfile.write(answer or b"")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _attributes(resource: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in resource.attributes}


def test_otlp_export_reaches_the_collector_pipelines(
    loopback_collector: tuple[LoopbackCollector, str], compose_model: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's OTLP output, configured exactly by the compose file's variables, arrives and is
    routed: spans to the traces pipeline's exporters, metrics to the metrics pipeline's."""
    sink, url = loopback_collector
    environment = dict(compose_model["services"]["gateway"]["environment"])
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        if name.startswith("OTEL_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)  # the collector, on loopback here

    resource = Resource.create()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    try:
        with tracer_provider.get_tracer("test_deploy").start_as_current_span("tools/call now") as span:
            span.set_attribute("mcp.method.name", "tools/call")
            span.set_attribute("gen_ai.tool.name", "now")
        histogram = meter_provider.get_meter("test_deploy").create_histogram("mcp.server.operation.duration", unit="s")
        histogram.record(0.25, {"mcp.method.name": "tools/call"})
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()  # collects and exports the histogram synchronously

    pipelines = _collector()["service"]["pipelines"]
    traces = [(exporter, request) for signal, exporter, request in sink.delivered if signal == "traces"]
    metrics = [(exporter, request) for signal, exporter, request in sink.delivered if signal == "metrics"]
    assert {e for e, _ in traces} == set(pipelines["traces"]["exporters"])
    assert {e for e, _ in metrics} == set(pipelines["metrics"]["exporters"])

    expected = dict(item.split("=", 1) for item in environment["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    expected["service.name"] = environment["OTEL_SERVICE_NAME"]
    (_, trace_request), *_ = traces
    (resource_spans,) = trace_request.resource_spans
    assert expected.items() <= _attributes(resource_spans.resource).items()
    (span_data,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span_data.name == "tools/call now"
    assert {a.key: a.value.string_value for a in span_data.attributes}["gen_ai.tool.name"] == "now"

    (_, metric_request), *_ = metrics
    (resource_metrics,) = metric_request.resource_metrics
    assert expected.items() <= _attributes(resource_metrics.resource).items()
    (metric,) = [m for scope in resource_metrics.scope_metrics for m in scope.metrics]
    assert metric.name == "mcp.server.operation.duration"
    assert metric.histogram.data_points[0].sum == 0.25


OTELCOL = shutil.which("otelcol-contrib") or shutil.which("otelcol")


@pytest.mark.skipif(
    OTELCOL is None,
    reason="no otelcol binary: no PyPI/npm/Debian package ships a collector with the OTLP receiver and "
    "Prometheus exporter; the pipeline shape is checked by the loopback receiver test instead",
)
def test_collector_config_validates_with_otelcol() -> None:
    assert OTELCOL is not None
    result = run_command(OTELCOL, "validate", f"--config={COLLECTOR}")
    assert result.returncode == 0, result.stdout + result.stderr
