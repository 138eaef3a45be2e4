"""`OtelTelemetry` over in-memory SDK providers, for tests that read what it recorded: finished spans (when
tracing), the metric reader, and optionally an OTLP log provider. Exports nothing anywhere."""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

from gateway.observe.otel import OtelTelemetry


class InMemoryOtel:
    """`telemetry`, with `spans` (every finished span; none without `tracing`) and `reader` (its metrics).
    `sampler`: the tracer provider's (default: the SDK's, which records every trace its caller did not
    mark as not sampled)."""

    def __init__(
        self,
        *,
        tracing: bool = True,
        logs: Callable[[], tuple[object, object]] | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        self.spans = InMemorySpanExporter()
        self.provider: TracerProvider | None = None
        if tracing:
            self.provider = TracerProvider(sampler=sampler)
            self.provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        meters = MeterProvider(metric_readers=[self.reader])
        shutdowns = [meters.shutdown] if self.provider is None else [self.provider.shutdown, meters.shutdown]
        self.telemetry = OtelTelemetry(
            tracer_provider=self.provider,
            meter=meters.get_meter("test"),
            scrape=self.reader,
            capture_arguments=False,
            redact=lambda text: text,
            shutdowns=shutdowns,
            logs=logs,  # type: ignore[arg-type]
        )
