"""The OpenTelemetry SDK wiring: tracer and meter providers, sampler and OTLP exporters built from config.
Imported only by `telemetry.build` when telemetry is on; sets no global provider (the CLI holds and
shuts down what it returns); records nothing itself (`otel.OtelTelemetry` does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from opentelemetry._logs import Logger
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from gateway import __version__
from gateway.config import secrets as secret_refs
from gateway.config.routing import TelemetrySpec
from gateway.observe.otel import SCOPE, OtelTelemetry
from gateway.protocol.errors import ConfigError


def build_sdk(
    spec: TelemetrySpec,
    env: Mapping[str, str],
    *,
    export: bool,
    pull: bool,
    service: str,
    redact: Callable[[str], str],
    base: Path | None,
    file: str,
) -> OtelTelemetry:
    """The SDK providers and OTLP exporters the config asks for, wrapped in an `OtelTelemetry`."""
    attributes: dict[str, str] = {"service.version": __version__, **spec.resource_attributes}
    if spec.service_name:
        attributes["service.name"] = spec.service_name
    elif not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = service
    resource = Resource.create(attributes)  # merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME

    protocol = spec.protocol or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol not in ("http/protobuf", "grpc"):
        raise ConfigError(file, "telemetry.protocol", f"http/protobuf or grpc (got {protocol!r})")
    headers: dict[str, str] | None = None
    if spec.headers:
        headers = {}
        for name, ref in spec.headers.items():
            try:
                headers[name] = secret_refs.resolve(ref, base=base).reveal()
            except secret_refs.SecretError as exc:
                raise ConfigError(file, f"telemetry.headers.{name}", f"a resolvable secret ({exc})") from None
    shutdowns: list[Callable[[], object]] = []

    tracer_provider: TracerProvider | None = None
    if export and env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none":
        sampler = ParentBased(TraceIdRatioBased(spec.sampling_ratio)) if spec.sampling_ratio is not None else None
        tracer_provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
        span_exporter = _exporter("trace", protocol, spec.endpoint, headers, file)
        from gateway.observe.otel_export import GatewayBatchSpanProcessor  # with the exporter, only when tracing

        tracer_provider.add_span_processor(GatewayBatchSpanProcessor(span_exporter))
        shutdowns.append(tracer_provider.shutdown)

    readers: list[MetricReader] = []
    if export and env.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() != "none":
        readers.append(PeriodicExportingMetricReader(_exporter("metric", protocol, spec.endpoint, headers, file)))
    scrape = InMemoryMetricReader() if pull else None
    if scrape is not None:
        readers.append(scrape)
    # Exemplars cost each measurement a look at the current span and a reservoir offer; they are
    # kept only when OTEL_METRICS_EXEMPLAR_FILTER asks for them (the SDK then reads it itself).
    exemplars = None if env.get("OTEL_METRICS_EXEMPLAR_FILTER") else AlwaysOffExemplarFilter()
    meter_provider = MeterProvider(
        metric_readers=readers, resource=resource, shutdown_on_exit=False, exemplar_filter=exemplars
    )
    shutdowns.append(meter_provider.shutdown)

    logs = None
    if export and env.get("OTEL_LOGS_EXPORTER", "otlp").strip().lower() != "none":

        def logs() -> tuple[Logger, Callable[[], object]]:
            """Built on first use (the audit log asks for it); the second item shuts it down."""
            provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
            exporter = _exporter("log", protocol, spec.endpoint, headers, file)
            provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
            return provider.get_logger(SCOPE, __version__), provider.shutdown

    return OtelTelemetry(
        tracer_provider=tracer_provider,
        meter=meter_provider.get_meter(SCOPE, __version__),
        scrape=scrape,
        capture_arguments=spec.capture_arguments,
        redact=redact,
        shutdowns=shutdowns,
        logs=logs,
    )


def _exporter(
    signal: Literal["trace", "metric", "log"],
    protocol: str,
    endpoint: str | None,
    headers: dict[str, str] | None,
    file: str,
) -> Any:
    """An OTLP exporter; with no `endpoint` it reads OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT itself."""
    if protocol == "grpc":
        try:
            if signal == "log":
                from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (  # type: ignore[import-not-found]
                    OTLPLogExporter as GrpcLogs,
                )

                return GrpcLogs(endpoint=endpoint, headers=headers)
            if signal == "trace":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                    OTLPSpanExporter as GrpcSpans,
                )

                return GrpcSpans(endpoint=endpoint, headers=headers)
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[import-not-found]
                OTLPMetricExporter as GrpcMetrics,
            )

            return GrpcMetrics(endpoint=endpoint, headers=headers)
        except ImportError:
            missing = "http/protobuf (opentelemetry-exporter-otlp-proto-grpc is not installed)"
            raise ConfigError(file, "telemetry.protocol", missing) from None
    url = f"{endpoint.rstrip('/')}/v1/{signal}s" if endpoint else None
    if signal == "log":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        return OTLPLogExporter(endpoint=url, headers=headers)
    if signal == "trace":
        from gateway.observe.otel_export import FastOTLPSpanExporter

        return FastOTLPSpanExporter(endpoint=url, headers=headers)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=url, headers=headers)
