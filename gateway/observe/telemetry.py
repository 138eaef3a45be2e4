"""Telemetry: OpenTelemetry traces and metrics that follow the MCP semantic conventions.

Owns the tracer and meter providers (built from the `telemetry:` section and the
standard OTEL_* variables, held by the CLI, flushed at exit, never global), every
span and instrument the gateway and the relay record, and the trace context they
pass on (command headers, `params._meta`, upstream HTTP headers). The only module
importing opentelemetry, and the SDK only when telemetry is on: `NoopTelemetry`
has the same hooks and does nothing. Records no header, no secret, and no tool
arguments or results unless `capture_arguments` is on (redacted even then).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import urlsplit

from msgspec import UNSET, Raw, UnsetType
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import __version__
from gateway.config import secrets as secret_refs
from gateway.config.routing import ServerSpec, TelemetrySpec
from gateway.protocol.errors import ConfigError, UpstreamError
from gateway.protocol.mcp import Call, Frame, Reply, UpstreamInfo, abandon
from gateway.protocol.tracecontext import TRACEPARENT, TRACESTATE, Params, Payloads, request_id_text, with_trace_headers
from gateway.protocol.wire import COMMAND_SESSION_END, RESP_NOTIFY, Headers, JsonRpcMessage, PolledCommand, header_value
from gateway.relay.tracing import NO_TRACER, RelayTracer

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

GATEWAY_SERVICE: Final = "mcp-tunnel-gateway"
RELAY_SERVICE: Final = "mcp-tunnel-relay"
SCOPE: Final = "mcp-tunnel-gateway"
RELAY_SCOPE: Final = "mcp-tunnel-gateway.relay"

DURATION_BUCKETS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""The MCP semantic conventions' bucket boundaries for operation and session durations (seconds)."""
NOT_SERVER_ERRORS: Final = frozenset({-32700, -32600, -32601, -32602, -32002})
"""JSON-RPC codes meaning the caller sent what the receiver could not serve: not errors on a SERVER span."""
CAPTURE_LIMIT: Final = 4096
LABEL_VALUES_LIMIT: Final = 200
"""Distinct client-chosen values (tool and prompt names, versions) a metric label takes; then `_OTHER`."""
SESSIONS_TRACKED: Final = 10_000
SESSION_HEADER: Final = "Mcp-Session-Id"
VERSION_HEADER: Final = "MCP-Protocol-Version"

RateLimitOutcome = Literal["admitted", "waited", "rejected"]
Attributes = dict[str, Any]


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the span current in this context, for log lines; None outside one."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def _identity(text: str) -> str:
    return text


# --------------------------------------------------------------------------- the hooks


class Observed(Protocol):
    """What telemetry needs of one server's transport (an `Upstream`): its name and kind, its calls,
    and the `observer` hook it reports up/down/restart through."""

    name: str
    transport: str
    observer: Callable[[str, str], None] | None

    @property
    def ready(self) -> bool: ...

    def exchange(self, call: Call) -> AsyncIterator[Frame]: ...


class CommandScope(Protocol):
    def __enter__(self) -> CommandScope: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class PostScope(Protocol):
    def __enter__(self) -> PostScope: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def delivered(self, ok: bool) -> None: ...


class PollScope(Protocol):
    def __enter__(self) -> PollScope: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def polled(self, count: int) -> None: ...


class _NullScope:
    """What every no-op hook returns: a context manager whose methods do nothing."""

    __slots__ = ()

    def __enter__(self) -> _NullScope:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def polled(self, count: int) -> None:
        pass

    def delivered(self, ok: bool) -> None:
        pass


_NULL: Final = _NullScope()


class Telemetry:
    """The hooks the gateway calls; this base records nothing (it is what `NoopTelemetry` is).

    Callers: the dispatcher (`command`, `describe`, `post`), the channel (`exchange`), the
    poller and the responder (`poll`, `post_retry`), the limits (`rate_limit`), the app
    (`watch`, `relay_tracer`), the ops listener (`metrics_data`) and the CLI (`shutdown`).
    """

    enabled: bool = False

    def command(self, command: PolledCommand, received_at: float) -> CommandScope:
        """Around one command's whole life: the SERVER span (current inside), in-flight count, duration."""
        return _NULL

    def describe(self, message: JsonRpcMessage) -> None:
        """The current command carries `message`: names its span and sets the MCP attributes."""

    def post(self, resp_type: str, status: int, body: bytes | None, headers: Headers | None) -> PostScope:
        """Around one response POST of the current command; a terminal frame settles the outcome."""
        return _NULL

    def exchange(self, upstream: Observed, call: Call, info: UpstreamInfo) -> AsyncIterator[Frame]:
        """`upstream.exchange(call)` in a CLIENT span, with the trace context passed on to the server."""
        return upstream.exchange(call)

    def poll(self, limit: int) -> PollScope:
        """Around one long poll; `.polled(n)` reports how many commands it brought."""
        return _NULL

    def post_retry(self, attempt: int, reason: str, delay_s: float) -> None:
        """A response POST is retried after `delay_s`: an event on the POST span and a counter."""

    def rate_limit(self, limit: str, outcome: RateLimitOutcome, wait_s: float = 0.0) -> None:
        """One call met `limit`: an event on the current span when it waits or is rejected, the wait
        time when it is admitted after waiting `wait_s`."""

    def limit_waiting(self, limit: str) -> None:
        """`Limits(on_wait=...)`: a call starts waiting for `limit`."""
        self.rate_limit(limit, "waited")

    def watch_limits(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        """Export the limits' own (limit label, admitted|waited|rejected) counts as counters."""

    def watch(self, upstreams: Mapping[str, Observed], specs: Mapping[str, ServerSpec]) -> None:
        """Observe these upstreams (all of them, replacing earlier ones): up/down gauge, restart counter
        and events, through `Upstream.observer`."""

    def relay_tracer(self) -> RelayTracer:
        """The relay's seam: a span per MCP client request, its context put into the command."""
        return NO_TRACER

    def metrics_data(self) -> MetricsData | None:
        """A collection of every instrument, for `/metrics` (None when metrics are not kept)."""
        return None

    def shutdown(self) -> None:
        """Flush what is buffered and stop exporting (blocking; call at exit)."""


class NoopTelemetry(Telemetry):
    """Telemetry off: no SDK imported, no provider, no exporter; every hook returns at once."""


NOOP: Final = NoopTelemetry()


# --------------------------------------------------------------------------- building


def export_configured(spec: TelemetrySpec, environ: Mapping[str, str]) -> bool:
    """Whether OTLP export is on: `enabled` when set, else whenever an OTLP endpoint is configured
    (and OTEL_SDK_DISABLED is not true)."""
    if spec.enabled is not None:
        return spec.enabled
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        spec.endpoint
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )


def build(
    spec: TelemetrySpec,
    *,
    service_name: str = GATEWAY_SERVICE,
    metrics_pull: bool = False,
    redact: Callable[[str], str] = _identity,
    base: Path | None = None,
    file: str = "routing.yaml",
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Telemetry from config and the OTEL_* environment; `NOOP` when neither OTLP export nor a
    `/metrics` scrape (`metrics_pull`) wants anything. Raises ConfigError for a bad section."""
    env = os.environ if environ is None else environ
    export = export_configured(spec, env)
    if not export and not metrics_pull:
        return NOOP
    return _build_sdk(
        spec, env, export=export, pull=metrics_pull, service=service_name, redact=redact, base=base, file=file
    )


def _build_sdk(
    spec: TelemetrySpec,
    env: Mapping[str, str],
    *,
    export: bool,
    pull: bool,
    service: str,
    redact: Callable[[str], str],
    base: Path | None,
    file: str,
) -> Telemetry:
    # Imported here, not at the top: a gateway with telemetry off never loads the SDK.
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

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
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        shutdowns.append(tracer_provider.shutdown)

    readers: list[MetricReader] = []
    if export and env.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() != "none":
        readers.append(PeriodicExportingMetricReader(_exporter("metric", protocol, spec.endpoint, headers, file)))
    scrape = InMemoryMetricReader() if pull else None
    if scrape is not None:
        readers.append(scrape)
    meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    shutdowns.append(meter_provider.shutdown)
    return OtelTelemetry(
        tracer_provider=tracer_provider,
        meter=meter_provider.get_meter(SCOPE, __version__),
        scrape=scrape,
        capture_arguments=spec.capture_arguments,
        redact=redact,
        shutdowns=shutdowns,
    )


def _exporter(
    signal: Literal["trace", "metric"], protocol: str, endpoint: str | None, headers: dict[str, str] | None, file: str
) -> Any:
    """An OTLP exporter; with no `endpoint` it reads OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT itself."""
    if protocol == "grpc":
        try:
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
    if signal == "trace":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=url, headers=headers)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=url, headers=headers)


# --------------------------------------------------------------------------- attributes


class _Labels:
    """Caps the distinct values a client-chosen label takes, and redacts each value once."""

    def __init__(self, redact: Callable[[str], str], limit: int = LABEL_VALUES_LIMIT) -> None:
        self._redact = redact
        self._limit = limit
        self._seen: dict[str, str] = {}

    def __call__(self, value: str) -> str:
        label = self._seen.get(value)
        if label is None:
            if len(self._seen) >= self._limit:
                return "_OTHER"
            label = self._seen[value] = self._redact(value)
        return label


@dataclasses.dataclass(slots=True)
class _Operation:
    """One MCP message as telemetry sees it: span name, span attributes, metric attributes."""

    method: str
    name: str
    attributes: Attributes
    metric: Attributes
    tool_call: bool
    arguments: Raw | UnsetType = UNSET


def _error_type(exc: BaseException) -> str:
    """A low-cardinality `error.type`: the tunnel_failure source of an upstream failure, else the class."""
    if isinstance(exc, UpstreamError):
        return exc.failure.source
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
        return "cancelled"
    status = getattr(exc, "status", None)
    if isinstance(status, int):  # ControlPlaneError: the HTTP status the control plane answered
        return str(status)
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else type(exc).__qualname__


def _histogram(meter: Meter, name: str, description: str) -> Histogram:
    return meter.create_histogram(
        name, unit="s", description=description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
    )


# --------------------------------------------------------------------------- the real thing


class OtelTelemetry(Telemetry):
    """Spans and metrics through the SDK providers this object was given (no global provider is set)."""

    enabled = True

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None,
        meter: Meter,
        scrape: InMemoryMetricReader | None,
        capture_arguments: bool,
        redact: Callable[[str], str],
        shutdowns: Sequence[Callable[[], object]],
    ) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.NoOpTracerProvider()
        self.tracer = provider.get_tracer(SCOPE, __version__)
        self.relay_spans = provider.get_tracer(RELAY_SCOPE, __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.payloads = Payloads()
        self.capture = capture_arguments
        self.redact = redact
        self.labels = _Labels(redact)
        self.current: contextvars.ContextVar[_Command | None] = contextvars.ContextVar("command", default=None)
        self._scrape = scrape
        self._shutdowns = list(shutdowns)
        self._sessions: OrderedDict[str, float] = OrderedDict()
        self._upstreams: dict[str, Observed] = {}
        self._servers: dict[str, Attributes] = {}

        self.server_duration = _histogram(
            meter,
            "mcp.server.operation.duration",
            "MCP request or notification duration as observed on the receiver from the time it was received "
            "until the result or ack is sent.",
        )
        self.client_duration = _histogram(
            meter,
            "mcp.client.operation.duration",
            "The duration of the MCP request or notification as observed on the sender from the time it was "
            "sent until the response or ack is received.",
        )
        self.session_duration = _histogram(
            meter, "mcp.server.session.duration", "The duration of the MCP session as observed on the MCP server."
        )
        self.command_age = _histogram(
            meter, "gateway.command.age", "Time from poll receipt to the command's terminal response."
        )
        self.poll_duration = _histogram(meter, "gateway.poll.duration", "Duration of one long poll.")
        self.ratelimit_wait = _histogram(meter, "gateway.ratelimit.wait", "Time calls waited for a limit.")
        self.polled = meter.create_counter("gateway.commands.polled", "{command}", "Commands taken from polls.")
        self.inflight = meter.create_up_down_counter("gateway.commands.inflight", "{command}", "Commands running.")
        self.poll_errors = meter.create_counter("gateway.poll.errors", "{poll}", "Polls that failed or were refused.")
        self.post_retries = meter.create_counter("gateway.response.retries", "{retry}", "Response POSTs retried.")
        self.post_failures = meter.create_counter("gateway.response.failures", "{frame}", "Frames not delivered.")
        self.restarts = meter.create_counter("gateway.upstream.restarts", "{restart}", "Upstream process restarts.")
        meter.create_observable_gauge(
            "gateway.upstream.up", [self._observe_upstreams], "1", "1 while an upstream server is up, else 0."
        )
        self._limit_counts: Callable[[], Mapping[tuple[str, str], int]] | None = None
        for outcome in ("admitted", "waited", "rejected"):
            meter.create_observable_counter(
                f"gateway.ratelimit.{outcome}", [self._observe_limits(outcome)], "{call}", f"Calls a limit {outcome}."
            )

    # ------------------------------------------------------------------ propagation and attributes

    def extract(self, headers: Headers, params: Params | None) -> otel_context.Context | None:
        """The caller's context: `traceparent` in the headers first, then in `params._meta`."""
        parent = header_value(headers, TRACEPARENT)
        state = header_value(headers, TRACESTATE) if parent is not None else None
        if parent is None and params is not None and params.meta is not None:
            parent, state = params.meta.traceparent, params.meta.tracestate
        if parent is None:
            return None
        carrier = {TRACEPARENT: parent, TRACESTATE: state} if state else {TRACEPARENT: parent}
        found = self.propagator.extract(carrier)
        return found if trace.get_current_span(found).get_span_context().is_valid else None

    def carrier(self, span: trace.Span) -> dict[str, str]:
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier, context=trace.set_span_in_context(span))
        return carrier

    def operation(
        self, method: str, params: Params, request_id: Raw | UnsetType | None, headers: Headers, transport: str
    ) -> _Operation:
        attributes: Attributes = {"mcp.method.name": method, "network.transport": transport}
        metric: Attributes = {"mcp.method.name": method, "network.transport": transport}
        target: str | None = None
        tool_call = method == "tools/call"
        if isinstance(params.name, str) and method in ("tools/call", "prompts/get"):
            target = self.labels(params.name)
            key = "gen_ai.tool.name" if tool_call else "gen_ai.prompt.name"
            attributes[key] = metric[key] = target
        if tool_call:
            attributes["gen_ai.operation.name"] = metric["gen_ai.operation.name"] = "execute_tool"
        if isinstance(params.uri, str) and method.startswith("resources/"):
            attributes["mcp.resource.uri"] = self.redact(params.uri)
        rid = request_id_text(request_id)
        if rid is not None:
            attributes["jsonrpc.request.id"] = rid
        version = header_value(headers, VERSION_HEADER)
        if version is None and params.meta is not None:
            version = params.meta.protocol_version
        if version is not None:
            attributes["mcp.protocol.version"] = metric["mcp.protocol.version"] = self.labels(version)
        session = header_value(headers, SESSION_HEADER)
        if session is not None:
            attributes["mcp.session.id"] = session
        name = f"{method} {target}" if target is not None else method
        return _Operation(method, name, attributes, metric, tool_call, params.arguments)

    def settle(self, span: trace.Span, op: _Operation, body: bytes | None, metric: Attributes, *, server: bool) -> None:
        """Record the JSON-RPC outcome of a response `body` on the span and the metric attributes."""
        outcome = self.payloads.outcome(body, op.tool_call)
        error = outcome.error
        if error is not None:
            code = str(error.code)
            span.set_attribute("rpc.response.status_code", code)
            metric["rpc.response.status_code"] = code
            if not server or error.code not in NOT_SERVER_ERRORS:
                span.set_attribute("error.type", code)
                metric["error.type"] = code
                span.set_status(Status(StatusCode.ERROR, self.redact(error.message)[:256]))
        elif outcome.tool_error:
            span.set_attribute("error.type", "tool_error")
            metric["error.type"] = "tool_error"
            span.set_status(Status(StatusCode.ERROR))
        if server and self.capture and op.tool_call and body and error is None:
            result = self.payloads.result(body)
            if result is not UNSET:
                span.set_attribute("gen_ai.tool.call.result", self.captured(result))

    def captured(self, raw: Raw) -> str:
        text = self.redact(bytes(raw).decode(errors="replace"))
        return text if len(text) <= CAPTURE_LIMIT else text[:CAPTURE_LIMIT] + "…"

    def failed(self, span: trace.Span, exc: BaseException, metric: Attributes | None) -> str:
        kind = _error_type(exc)
        span.set_attribute("error.type", kind)
        if metric is not None:
            metric["error.type"] = kind
        span.set_status(Status(StatusCode.ERROR, self.redact(str(exc))[:256]))
        return kind

    def server_attributes(self, upstream: Observed) -> Attributes:
        found = self._servers.get(upstream.name)
        if found is None:
            transport = "pipe" if upstream.transport == "stdio" else "tcp"
            found = self._servers[upstream.name] = {"gateway.server": upstream.name, "network.transport": transport}
        return found

    # ------------------------------------------------------------------ hooks

    def command(self, command: PolledCommand, received_at: float) -> _Command:
        return _Command(self, command, received_at)

    def describe(self, message: JsonRpcMessage) -> None:
        scope = self.current.get()
        if scope is not None:
            scope.describe(message)

    def post(self, resp_type: str, status: int, body: bytes | None, headers: Headers | None) -> _Post:
        scope = self.current.get()
        if scope is not None and resp_type != RESP_NOTIFY:
            scope.settle(status, body, headers or {})
        return _Post(self, resp_type, status)

    async def exchange(self, upstream: Observed, call: Call, info: UpstreamInfo) -> AsyncIterator[Frame]:
        # The CLIENT span is never made current: this generator may be finalized in another task.
        client = _Client(self, upstream, call, info)
        frames = upstream.exchange(client.call)
        try:
            async for frame in frames:
                if isinstance(frame, Reply):
                    client.reply(frame)
                yield frame
        except BaseException as exc:
            client.fail(exc)
            raise
        finally:
            client.end()
            await abandon(frames)  # closed early: the transport cancels the call now

    def poll(self, limit: int) -> _Poll:
        return _Poll(self, limit)

    def post_retry(self, attempt: int, reason: str, delay_s: float) -> None:
        self.post_retries.add(1, {"gateway.retry.reason": reason})
        event: Attributes = {
            "gateway.retry.attempt": attempt,
            "gateway.retry.reason": reason,
            "gateway.retry.delay_s": delay_s,
        }
        trace.get_current_span().add_event("retry", event)

    def rate_limit(self, limit: str, outcome: RateLimitOutcome, wait_s: float = 0.0) -> None:
        labels = {"gateway.ratelimit.limit": limit}
        if outcome == "admitted":
            if wait_s > 0:
                self.ratelimit_wait.record(wait_s, labels)
            return
        event = "rate_limit.wait" if outcome == "waited" else "rate_limit.reject"
        trace.get_current_span().add_event(event, {**labels, "gateway.ratelimit.wait_s": wait_s})

    def watch_limits(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._limit_counts = counts

    def _observe_limits(self, outcome: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            counts = self._limit_counts() if self._limit_counts is not None else {}
            for (label, kind), count in list(counts.items()):
                if kind == outcome:
                    yield Observation(count, {"gateway.ratelimit.limit": label})

        return observe

    def watch(self, upstreams: Mapping[str, Observed], specs: Mapping[str, ServerSpec]) -> None:
        self._upstreams = dict(upstreams)  # the whole current set (a reload passes the new one)
        for name, upstream in upstreams.items():
            upstream.observer = self._upstream_event
            spec = specs.get(name)
            attributes: Attributes = {"gateway.server": name, "network.transport": "pipe"}
            if spec is not None and spec.http is not None:
                attributes["network.transport"] = "tcp"
                parts = _url_parts(spec.http.url)
                if parts is not None:
                    attributes["server.address"], attributes["server.port"] = parts
            self._servers[name] = attributes

    def _upstream_event(self, server: str, event: str) -> None:
        """`Upstream.observer`: `up`, `down`, `restart` (a span with one event for the latter two)."""
        if event == "restart":
            self.restarts.add(1, {"gateway.server": server})
        if event in ("restart", "down"):
            attributes = self._servers.get(server, {"gateway.server": server})
            span = self.tracer.start_span(
                f"upstream {event}", kind=SpanKind.INTERNAL, attributes=attributes, context=otel_context.Context()
            )
            span.add_event(f"upstream.{event}", {"gateway.server": server})
            span.end()

    def _observe_upstreams(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, upstream in list(self._upstreams.items()):
            yield Observation(1 if upstream.ready else 0, {"gateway.server": name})

    def session_opened(self, session_id: str) -> None:
        self._sessions[session_id] = time.monotonic()
        while len(self._sessions) > SESSIONS_TRACKED:
            self._sessions.popitem(last=False)

    def session_closed(self, session_id: str) -> None:
        opened = self._sessions.pop(session_id, None)
        if opened is not None:
            self.session_duration.record(time.monotonic() - opened, {"network.transport": "tcp"})

    def relay_tracer(self) -> RelayTracer:
        return _RelayTracer(self)

    def metrics_data(self) -> MetricsData | None:
        return self._scrape.get_metrics_data() if self._scrape is not None else None

    def shutdown(self) -> None:
        shutdowns, self._shutdowns = self._shutdowns, []
        for stop in shutdowns:
            stop()


def _url_parts(url: str) -> tuple[str, int] | None:
    """(host, port) of a URL; never its userinfo, path or query."""
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


# --------------------------------------------------------------------------- scopes


class _Command:
    """One command's SERVER span, current while the command runs, and its metrics."""

    __slots__ = ("_answered", "_command", "_metric", "_op", "_received", "_span", "_started", "_t", "_tokens")

    def __init__(self, t: OtelTelemetry, command: PolledCommand, received_at: float) -> None:
        self._t = t
        self._command = command
        self._received = received_at
        self._op: _Operation | None = None
        self._metric: Attributes = {}
        self._answered = False

    def __enter__(self) -> _Command:
        t, command = self._t, self._command
        self._started = time.perf_counter()
        params: Params | None = None
        if command.jsonrpc is not UNSET and header_value(command.headers, TRACEPARENT) is None:
            raw = bytes(command.jsonrpc)
            if b"traceparent" in raw:  # only then is the message parsed here
                message = t.payloads.message(raw)
                params = t.payloads.params(message.params if message is not None else UNSET)
        parent = t.extract(command.headers, params)
        attributes: Attributes = {
            "network.transport": "tcp",
            "gateway.channel": t.labels(command.channel),
            "gateway.request.id": command.request_id,
        }
        if command.command_type == COMMAND_SESSION_END:
            session = header_value(command.headers, SESSION_HEADER)
            if session is not None:
                attributes["mcp.session.id"] = session
                t.session_closed(session)
        self._span = t.tracer.start_span(
            command.command_type, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        self._tokens = (
            otel_context.attach(trace.set_span_in_context(self._span, parent)),
            t.current.set(self),
        )
        t.inflight.add(1)
        return self

    def describe(self, message: JsonRpcMessage) -> None:
        t = self._t
        if message.method is UNSET:  # a client's answer to a server-initiated request
            self._span.update_name("response")
            return
        params = t.payloads.params(message.params)
        op = self._op = t.operation(message.method, params, message.id, self._command.headers, "tcp")
        self._metric = op.metric
        self._span.update_name(op.name)
        self._span.set_attributes(op.attributes)
        if t.capture and op.tool_call and op.arguments is not UNSET:
            self._span.set_attribute("gen_ai.tool.call.arguments", t.captured(op.arguments))

    def settle(self, status: int, body: bytes | None, headers: Headers) -> None:
        """The terminal frame is about to be posted: record what it says."""
        if self._answered:
            return
        self._answered = True
        t = self._t
        t.command_age.record(asyncio.get_running_loop().time() - self._received)
        if status >= 500:
            self._span.set_attribute("http.response.status_code", status)
        if self._op is not None:
            t.settle(self._span, self._op, body, self._metric, server=True)
            if self._op.method == "initialize":
                session = header_value(headers, SESSION_HEADER)
                if session is not None:
                    t.session_opened(session)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        t = self._t
        try:
            if exc is not None:
                t.failed(self._span, exc, self._metric)
            elif not self._answered:
                self._span.set_attribute("error.type", "unanswered")
                self._metric["error.type"] = "unanswered"
            if self._op is not None:
                t.server_duration.record(time.perf_counter() - self._started, self._metric)
            t.inflight.add(-1)
            self._span.end()
        finally:
            otel_token, var_token = self._tokens
            t.current.reset(var_token)
            otel_context.detach(otel_token)


class _Post:
    """One response POST's CLIENT span, current while it runs so retry events land on it."""

    __slots__ = ("_ok", "_resp_type", "_span", "_status", "_t", "_token")

    def __init__(self, t: OtelTelemetry, resp_type: str, status: int) -> None:
        self._t = t
        self._resp_type = resp_type
        self._status = status
        self._ok: bool | None = None

    def __enter__(self) -> _Post:
        attributes: Attributes = {"tunnel.resp_type": self._resp_type, "tunnel.resp_code": self._status}
        self._span = self._t.tracer.start_span("tunnel response", kind=SpanKind.CLIENT, attributes=attributes)
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def delivered(self, ok: bool) -> None:
        self._ok = ok

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        t = self._t
        try:
            kind: str | None = None
            if exc is not None:
                kind = t.failed(self._span, exc, None)
            elif self._ok is False:
                kind = "not_delivered"
                self._span.set_attribute("error.type", kind)
                self._span.set_status(Status(StatusCode.ERROR))
            if kind is not None:
                t.post_failures.add(1, {"tunnel.resp_type": self._resp_type, "error.type": kind})
            self._span.end()
        finally:
            otel_context.detach(self._token)


class _Poll:
    """One long poll's span (a root: each poll is a trace of its own) and its metrics."""

    __slots__ = ("_count", "_limit", "_span", "_started", "_t")

    def __init__(self, t: OtelTelemetry, limit: int) -> None:
        self._t = t
        self._limit = limit
        self._count = 0

    def __enter__(self) -> _Poll:
        self._started = time.perf_counter()
        self._span = self._t.tracer.start_span(
            "tunnel poll",
            kind=SpanKind.CLIENT,
            attributes={"tunnel.poll.limit": self._limit},
            context=otel_context.Context(),
        )
        return self

    def polled(self, count: int) -> None:
        self._count = count

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        t = self._t
        outcome: Attributes = {}
        if isinstance(exc, asyncio.CancelledError):  # shutting down: not a failed poll
            self._span.set_attribute("tunnel.poll.cancelled", True)
            self._span.end()
            return
        if exc is not None:
            kind = t.failed(self._span, exc, outcome)
            t.poll_errors.add(1, {"error.type": kind})
        else:
            self._span.set_attribute("tunnel.poll.commands", self._count)
            if self._count:
                t.polled.add(self._count)
        t.poll_duration.record(time.perf_counter() - self._started, outcome)
        self._span.end()


class _Client:
    """One upstream call's CLIENT span; `call` is the call carrying its trace context to the server."""

    __slots__ = ("_done", "_metric", "_op", "_span", "_started", "_t", "call")

    def __init__(self, t: OtelTelemetry, upstream: Observed, call: Call, info: UpstreamInfo) -> None:
        self._t = t
        self._done = False
        server = t.server_attributes(upstream)
        op = t.operation(
            call.method, t.payloads.params(call.params), call.id, call.headers, server["network.transport"]
        )
        op.attributes.update(server)
        op.attributes["mcp.protocol.version"] = info.protocol_version
        op.metric.update(server)
        op.metric["mcp.protocol.version"] = t.labels(info.protocol_version)
        self._op, self._metric = op, op.metric
        self._started = time.perf_counter()
        self._span = t.tracer.start_span(op.name, kind=SpanKind.CLIENT, attributes=op.attributes)
        carrier = t.carrier(self._span)
        if carrier:
            params = t.payloads.inject_params(call.params, carrier)
            call = dataclasses.replace(
                call,
                params=call.params if params is None else params,
                headers=with_trace_headers(call.headers, carrier),
            )
        self.call = call

    def reply(self, reply: Reply) -> None:
        if not self._done:
            if reply.status >= 400:
                self._span.set_attribute("http.response.status_code", reply.status)
            self._t.settle(self._span, self._op, reply.body, self._metric, server=False)
            self.end()

    def fail(self, exc: BaseException) -> None:
        if not self._done:
            self._t.failed(self._span, exc, self._metric)
            self.end()

    def end(self) -> None:
        if not self._done:
            self._done = True
            self._t.client_duration.record(time.perf_counter() - self._started, self._metric)
            self._span.end()


# --------------------------------------------------------------------------- the relay's seam


class _RelayTracer:
    """The relay's `RelayTracer`: a SERVER span per MCP client request."""

    def __init__(self, t: OtelTelemetry) -> None:
        self._t = t

    def request(self, channel: str, headers: Mapping[str, str], body: bytes | None) -> _RelayRequest:
        return _RelayRequest(self._t, channel, headers, body)


class _RelayRequest:
    """One client request on the relay: continues the client's trace, passes its own on in the command."""

    __slots__ = ("_body", "_channel", "_headers", "_op", "_span", "_t")

    def __init__(self, t: OtelTelemetry, channel: str, headers: Mapping[str, str], body: bytes | None) -> None:
        self._t = t
        self._channel = channel
        self._headers: Headers = {name: [value] for name, value in headers.items()}
        self._body = body
        self._op: _Operation | None = None

    def __enter__(self) -> _RelayRequest:
        t = self._t
        message = t.payloads.message(self._body)
        params = t.payloads.params(message.params if message is not None else UNSET)
        attributes: Attributes = {"network.transport": "tcp", "gateway.channel": t.labels(self._channel)}
        if message is not None and message.method is not UNSET:
            self._op = t.operation(message.method, params, message.id, self._headers, "tcp")
            attributes.update(self._op.attributes)
            name = self._op.name
        else:
            name = "response" if message is not None else "session_termination"
            session = header_value(self._headers, SESSION_HEADER)
            if session is not None:
                attributes["mcp.session.id"] = session
        parent = t.extract(self._headers, params)
        self._span = t.relay_spans.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        return self

    def inject(self, headers: Headers, body: bytes | None) -> tuple[Headers, bytes | None]:
        carrier = self._t.carrier(self._span)
        if not carrier:
            return headers, body
        if body is not None:
            body = self._t.payloads.inject_message(body, carrier)
        return with_trace_headers(headers, carrier), body

    def answered(self, status: int, body: bytes | None) -> None:
        self._span.set_attribute("http.response.status_code", status)
        if self._op is not None:
            self._t.settle(self._span, self._op, body, {}, server=True)
        if status >= 500:
            self._span.set_attribute("error.type", str(status))
            self._span.set_status(Status(StatusCode.ERROR))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._t.failed(self._span, exc, None)
        self._span.end()
