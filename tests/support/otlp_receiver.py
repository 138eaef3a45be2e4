"""A real OTLP/HTTP receiver on 127.0.0.1 for tests: decodes the protobuf exports and keeps them.

`POST /v1/traces` takes an `ExportTraceServiceRequest`, `POST /v1/metrics` an
`ExportMetricsServiceRequest`, `POST /v1/logs` an `ExportLogsServiceRequest` (gzip or plain),
exactly as a collector would; spans, metric points and log records are flattened into small
records the tests query.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.support.loopback_app import serve_app

FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "300"}
"""Environment for a process whose exports should reach the receiver within a fraction of a second."""
SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items if isinstance(item, KeyValue)}


@dataclass
class Span:
    service: str
    scope: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    status_message: str


@dataclass
class Point:
    service: str
    metric: str
    kind: str
    unit: str
    attributes: dict[str, Any]
    value: float
    bounds: list[float] = field(default_factory=list)


@dataclass
class LogRecord:
    service: str
    scope: str
    event_name: str
    severity: str
    body: Any
    attributes: dict[str, Any]


@dataclass
class Receiver:
    url: str = ""
    spans: list[Span] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    requests: int = 0
    raw: list[bytes] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, predicate: Callable[[Receiver], bool], within_s: float = 30.0) -> None:
        """Until `predicate(self)` holds (checked after every export), or TimeoutError."""
        async with asyncio.timeout(within_s):
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

    def named(self, name: str, *, scope: str | None = None) -> list[Span]:
        return [s for s in self.spans if s.name == name and (scope is None or s.scope == scope)]

    def metric_names(self) -> set[str]:
        return {p.metric for p in self.points}

    # ------------------------------------------------------------------ decoding

    def _traces(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            service=service,
                            scope=scope_spans.scope.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                            attributes=_attributes(span.attributes),
                            events=[(e.name, _attributes(e.attributes)) for e in span.events],
                            status_code=span.status.code,
                            status_message=span.status.message,
                        )
                    )

    def _metrics(self, body: bytes) -> None:
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        for resource_metrics in request.resource_metrics:
            service = str(_attributes(resource_metrics.resource.attributes).get("service.name", ""))
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data") or ""
                    data = getattr(metric, kind)
                    for point in data.data_points:
                        if kind == "histogram":
                            value, bounds = float(point.count), list(point.explicit_bounds)
                        else:
                            number = point.WhichOneof("value")
                            value, bounds = float(getattr(point, number)) if number else 0.0, []
                        self.points.append(
                            Point(service, metric.name, kind, metric.unit, _attributes(point.attributes), value, bounds)
                        )

    def _logs(self, body: bytes) -> None:
        request = ExportLogsServiceRequest()
        request.ParseFromString(body)
        for resource_logs in request.resource_logs:
            service = str(_attributes(resource_logs.resource.attributes).get("service.name", ""))
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    self.logs.append(
                        LogRecord(
                            service=service,
                            scope=scope_logs.scope.name,
                            event_name=record.event_name,
                            severity=record.severity_text,
                            body=_value(record.body),
                            attributes=_attributes(record.attributes),
                        )
                    )

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.requests += 1
        self.raw.append(body)
        if request.path == "/v1/traces":
            self._traces(body)
            answer = ExportTraceServiceResponse().SerializeToString()
        elif request.path == "/v1/logs":
            self._logs(body)
            answer = ExportLogsServiceResponse().SerializeToString()
        else:
            self._metrics(body)
            answer = ExportMetricsServiceResponse().SerializeToString()
        self._changed.set()
        return web.Response(body=answer, content_type="application/x-protobuf")


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[Receiver]:
    """A receiver listening on 127.0.0.1 (a free port); `receiver.url` is the OTLP base URL."""
    receiver = Receiver()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", receiver._handle)
    app.router.add_post("/v1/metrics", receiver._handle)
    app.router.add_post("/v1/logs", receiver._handle)
    async with serve_app(app) as url:
        receiver.url = url
        yield receiver
