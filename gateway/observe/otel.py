"""`OtelTelemetry`: the hooks as spans and metrics following the MCP semantic conventions, and the trace
context passed on (command headers, `params._meta`, upstream HTTP headers). OpenTelemetry API only,
no global provider; records no header or secret, no tool arguments/results unless `capture_arguments` (redacted).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit, urlunsplit

from msgspec import UNSET, Raw, UnsetType
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import Logger, SeverityNumber
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway import __version__
from gateway.config.routing import ServerSpec
from gateway.observe.hooks import Observed, RateLimitOutcome, Telemetry, TokenRequest
from gateway.observe.otel_records import Recorder
from gateway.observe.otel_relay import OtelRelayTracer
from gateway.observe.otel_scopes import (
    Attributes,
    ClientSpan,
    CommandSpan,
    Operation,
    PollSpan,
    PostSpan,
    TokenSpan,
)
from gateway.observe.otel_spans import SpanStarter, remote_context
from gateway.observe.records import CallRecord, CallSink
from gateway.protocol.errors import UpstreamError
from gateway.protocol.headers import SESSION_HEADER, VERSION_HEADER
from gateway.protocol.mcp import Call, Frame, Reply, UpstreamInfo, abandon
from gateway.protocol.tracecontext import TRACEPARENT, TRACESTATE, Params, Payloads, request_id_text
from gateway.protocol.wire import RESP_NOTIFY, Headers, JsonRpcMessage, PolledCommand, header_value
from gateway.relay.tracing import RelayTracer

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData

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
METRIC_SETS_KEPT: Final = 4096
"""Metric attribute sets remembered (each label is capped, the method is not); then it starts over."""


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the span current in this context, for log lines; None outside one."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


class _Tally:
    """A count without attributes added to on the hot path as a plain int and read by the SDK at
    collection (an observable instrument): no measurement is built per command."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def add(self, amount: int) -> None:
        self.value += amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.value)


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


def _histogram(meter: Meter, name: str, description: str) -> Recorder:
    return Recorder(
        meter.create_histogram(
            name, unit="s", description=description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
        )
    )


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
        logs: Callable[[], tuple[Logger, Callable[[], object]]] | None = None,
    ) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.NoOpTracerProvider()
        self.tracer = provider.get_tracer(SCOPE, __version__)
        self.tracing = tracer_provider is not None
        """Spans are recorded; without, the scopes keep only the metrics and build no span or context."""
        self.spans = SpanStarter(self.tracer)
        self.relay_spans = SpanStarter(provider.get_tracer(RELAY_SCOPE, __version__))
        self.propagator = TraceContextTextMapPropagator()
        self.payloads = Payloads()
        self.capture = capture_arguments
        self.redact = redact
        self.labels = _Labels(redact)
        self.current: contextvars.ContextVar[CommandSpan | None] = contextvars.ContextVar("command", default=None)
        self._scrape = scrape
        self._shutdowns = list(shutdowns)
        self._sessions: OrderedDict[str, float] = OrderedDict()
        self._upstreams: dict[str, Observed] = {}
        self._servers: dict[str, Attributes] = {}
        self._metric_sets: dict[tuple[str, str | None, str | None, str, str | None], Attributes] = {}
        self._logs = logs
        self._call_logs: CallLogs | None = None
        self._token_requests: dict[TokenRequest, tuple[Attributes, Attributes]] = {}

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
        self.token_duration = _histogram(
            meter, "gateway.token.duration", "Duration of one token request to an identity provider's token endpoint."
        )
        self.polled = _Tally()
        meter.create_observable_counter(
            "gateway.commands.polled", [self.polled.observe], "{command}", "Commands taken from polls."
        )
        self.inflight = _Tally()
        meter.create_observable_up_down_counter(
            "gateway.commands.inflight", [self.inflight.observe], "{command}", "Commands running."
        )
        self.poll_errors = meter.create_counter("gateway.poll.errors", "{poll}", "Polls that failed or were refused.")
        self.post_retries = meter.create_counter("gateway.response.retries", "{retry}", "Response POSTs retried.")
        self.post_failures = meter.create_counter("gateway.response.failures", "{frame}", "Frames not delivered.")
        self.restarts = meter.create_counter("gateway.upstream.restarts", "{restart}", "Upstream process restarts.")
        meter.create_observable_gauge(
            "gateway.upstream.up", [self._observe_upstreams], "1", "1 while an upstream server is up, else 0."
        )
        self.budget_alerts = meter.create_counter(
            "gateway.budget.alerts", "{alert}", "Usage budget thresholds crossed (once per window and key)."
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
        return remote_context(parent, state)

    def carrier(self, span: trace.Span) -> dict[str, str]:
        """`traceparent` (and `tracestate`) for `span`, as the W3C propagator writes them, without
        building a Context for it."""
        context = span.get_span_context()
        if not context.is_valid:
            return {}
        carrier = {TRACEPARENT: f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"}
        if context.trace_state:
            carrier[TRACESTATE] = context.trace_state.to_header()
        return carrier

    def operation(
        self,
        method: str,
        params: Params,
        request_id: Raw | UnsetType | None,
        headers: Headers,
        transport: str,
        *,
        server: Attributes | None = None,
        version: str | None = None,
        traced: bool = True,
    ) -> Operation:
        """`method` as telemetry sees it: span name, span attributes (built only when tracing and `traced`:
        False for a span known not to be recorded), and the metric attribute set, shared by every
        operation with the same labels (never mutated). For an upstream call, `server` (the server's
        attributes) is added and `version` (the negotiated protocol version) takes the place of the
        client's."""
        target: str | None = None
        tool_call = method == "tools/call"
        if isinstance(params.name, str) and method in ("tools/call", "prompts/get"):
            target = self.labels(params.name)
        if version is None:
            version = header_value(headers, VERSION_HEADER)
            if version is None and params.meta is not None:
                version = params.meta.protocol_version
        label = self.labels(version) if version is not None else None
        metric = self._metric_set(method, target, label, transport, server)
        name = f"{method} {target}" if target is not None else method
        attributes: Attributes = {}
        if self.tracing and traced:
            attributes = dict(metric)
            if isinstance(params.uri, str) and method.startswith("resources/"):
                attributes["mcp.resource.uri"] = self.redact(params.uri)
            rid = request_id_text(request_id)
            if rid is not None:
                attributes["jsonrpc.request.id"] = rid
            if server is not None and version is not None:
                attributes["mcp.protocol.version"] = version  # the negotiated version, as the server said it
            session = header_value(headers, SESSION_HEADER)
            if session is not None:
                attributes["mcp.session.id"] = session
        return Operation(method, name, attributes, metric, tool_call, params.arguments)

    def _metric_set(
        self, method: str, target: str | None, version: str | None, transport: str, server: Attributes | None
    ) -> Attributes:
        key = (method, target, version, transport, None if server is None else server["gateway.server"])
        found = self._metric_sets.get(key)
        if found is not None:
            return found
        metric: Attributes = {"mcp.method.name": method, "network.transport": transport}
        if target is not None:
            metric["gen_ai.tool.name" if method == "tools/call" else "gen_ai.prompt.name"] = target
        if method == "tools/call":
            metric["gen_ai.operation.name"] = "execute_tool"
        if version is not None:
            metric["mcp.protocol.version"] = version
        if server is not None:
            metric.update(server)
        if len(self._metric_sets) >= METRIC_SETS_KEPT:
            self._metric_sets.clear()
        self._metric_sets[key] = metric
        return metric

    def settle(
        self, span: trace.Span, op: Operation, body: bytes | None, metric: Attributes, *, server: bool
    ) -> Attributes:
        """Record the JSON-RPC outcome of a response `body` on the span; the metric attributes to record
        with (`metric`, or a copy of it with the error's attributes added)."""
        outcome = self.payloads.outcome(body, op.tool_call)
        error = outcome.error
        if error is not None:
            code = str(error.code)
            span.set_attribute("rpc.response.status_code", code)
            metric = {**metric, "rpc.response.status_code": code}
            if not server or error.code not in NOT_SERVER_ERRORS:
                span.set_attribute("error.type", code)
                metric["error.type"] = code
                span.set_status(Status(StatusCode.ERROR, self.redact(error.message)[:256]))
        elif outcome.tool_error:
            span.set_attribute("error.type", "tool_error")
            metric = {**metric, "error.type": "tool_error"}
            span.set_status(Status(StatusCode.ERROR))
        if server and self.capture and op.tool_call and body and error is None:
            result = self.payloads.result(body)
            if result is not UNSET:
                span.set_attribute("gen_ai.tool.call.result", self.captured(result))
        return metric

    def captured(self, raw: Raw) -> str:
        text = self.redact(bytes(raw).decode(errors="replace"))
        return text if len(text) <= CAPTURE_LIMIT else text[:CAPTURE_LIMIT] + "…"

    def failed(self, span: trace.Span, exc: BaseException) -> str:
        """Record `exc` on the span; its `error.type`."""
        kind = _error_type(exc)
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, self.redact(str(exc))[:256]))
        return kind

    def server_attributes(self, upstream: Observed) -> Attributes:
        found = self._servers.get(upstream.name)
        if found is None:
            transport = "pipe" if upstream.transport == "stdio" else "tcp"
            found = self._servers[upstream.name] = {"gateway.server": upstream.name, "network.transport": transport}
        return found

    # ------------------------------------------------------------------ hooks

    def command(self, command: PolledCommand, received_at: float) -> CommandSpan:
        return CommandSpan(self, command, received_at)

    def describe(self, message: JsonRpcMessage) -> None:
        scope = self.current.get()
        if scope is not None:
            scope.describe(message)

    def post(self, resp_type: str, status: int, body: bytes | None, headers: Headers | None) -> PostSpan:
        scope = self.current.get()
        if scope is not None and resp_type != RESP_NOTIFY:
            scope.settle(status, body, headers or {})
        return PostSpan(self, resp_type, status)

    async def exchange(self, upstream: Observed, call: Call, info: UpstreamInfo) -> AsyncIterator[Frame]:
        # The CLIENT span is never made current: this generator may be finalized in another task.
        client = ClientSpan(self, upstream, call, info)
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

    def poll(self, limit: int) -> PollSpan:
        return PollSpan(self, limit)

    def token_request(self, request: TokenRequest) -> TokenSpan:
        found = self._token_requests.get(request)
        if found is None:
            found = self._token_requests[request] = _token_attributes(request)
        return TokenSpan(self, request.grant, *found)

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

    def budget_alert(self, budget: str, scope: str, threshold: int) -> None:
        labels: dict[str, str | int] = {
            "gateway.budget": budget,
            "gateway.budget.scope": scope,
            "gateway.budget.threshold": threshold,
        }
        self.budget_alerts.add(1, labels)

    def call_log(self) -> CallSink | None:
        if self._call_logs is None and self._logs is not None:
            logger, stop = self._logs()
            self._shutdowns.insert(0, stop)
            self._call_logs = CallLogs(logger)
        return self._call_logs

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
        self._metric_sets.clear()  # a server's attributes may have changed

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
        return OtelRelayTracer(self)

    def metrics_data(self) -> MetricsData | None:
        return self._scrape.get_metrics_data() if self._scrape is not None else None

    def trace_ids(self) -> tuple[str, str] | None:
        return current_trace_ids()

    def shutdown(self) -> None:
        shutdowns, self._shutdowns = self._shutdowns, []
        for stop in shutdowns:
            stop()


class CallLogs:
    """Call records as OTLP log records (event `gateway.call`): the record's fields as attributes, so names,
    outcome, sizes and times only; the session id is not exported."""

    def __init__(self, logger: Logger) -> None:
        self._logger = logger

    def record(self, call: CallRecord) -> None:
        attributes: dict[str, str | int | float] = {}
        for name in call.__struct_fields__:
            value = getattr(call, name)
            if value is not None and name not in ("time", "session"):
                attributes[f"gateway.call.{name}"] = value
        self._logger.emit(
            timestamp=round(call.time * 1e6) * 1000,  # microseconds: what a float of epoch seconds holds
            severity_number=SeverityNumber.INFO if call.outcome == "ok" else SeverityNumber.WARN,
            severity_text="INFO" if call.outcome == "ok" else "WARN",
            body=f"{call.method} {call.outcome}",
            attributes=attributes,
            event_name="gateway.call",
        )


def _token_attributes(request: TokenRequest) -> tuple[Attributes, Attributes]:
    """A token request's span attributes (the OTel HTTP client conventions: the URL without userinfo,
    query or fragment) and the metric attributes of an issued token."""
    parts = urlsplit(request.token_url)
    span: Attributes = {
        "http.request.method": "POST",
        "url.full": urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")),
        "gateway.token.grant": request.grant,
    }
    address = _url_parts(request.token_url)
    if address is not None:
        span["server.address"], span["server.port"] = address
    if request.server is not None:
        span["gateway.server"] = request.server
    return span, {"gateway.token.grant": request.grant, "gateway.token.outcome": "issued"}


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
