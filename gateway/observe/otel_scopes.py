"""The spans with a lifetime: one command (SERVER), one response POST, one poll, one upstream call
(CLIENT), one token request (CLIENT), each recording its metrics through its `OtelTelemetry`.
Part of the OTel implementation (loaded only when telemetry is on); builds no provider, sets no global.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from msgspec import UNSET, Raw, UnsetType
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.observe.otel_spans import put
from gateway.protocol.headers import SESSION_HEADER, VERSION_HEADER
from gateway.protocol.mcp import Call, Reply, UpstreamInfo
from gateway.protocol.oauth_tokens import Failed, Granted
from gateway.protocol.tracecontext import TRACEPARENT, TRACESTATE, Params, with_trace_headers
from gateway.protocol.wire import COMMAND_SESSION_END, Headers, JsonRpcMessage, PolledCommand, header_value

if TYPE_CHECKING:
    from gateway.observe.hooks import Observed
    from gateway.observe.otel import OtelTelemetry

Attributes = dict[str, Any]
READ_HEADERS: Final = frozenset(name.lower() for name in (TRACEPARENT, TRACESTATE, SESSION_HEADER, VERSION_HEADER))
OAUTH_ERRORS: Final = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    }
)
"""The registered error codes of RFC 6749 §5.2 and RFC 8693 §2.2.2 a span names; any other is `_OTHER`
(the `error` member is the endpoint's text: a careless endpoint could put anything there)."""


@dataclasses.dataclass(slots=True)
class Operation:
    """One MCP message as telemetry sees it: span name, span attributes, metric attributes."""

    method: str
    name: str
    attributes: Attributes
    metric: Attributes
    tool_call: bool
    arguments: Raw | UnsetType = UNSET


class CommandSpan:
    """One command's SERVER span, current while the command runs, and its metrics."""

    __slots__ = (
        "_answered",
        "_command",
        "_headers",
        "_metric",
        "_op",
        "_params",
        "_received",
        "_span",
        "_started",
        "_t",
        "_tokens",
    )

    def __init__(self, t: OtelTelemetry, command: PolledCommand, received_at: float) -> None:
        self._t = t
        self._command = command
        self._received = received_at
        self._op: Operation | None = None
        self._metric: Attributes = {}
        self._answered = False
        self._params: tuple[Raw | UnsetType, Params] | None = None

    def __enter__(self) -> CommandSpan:
        t, command = self._t, self._command
        self._started = time.perf_counter()
        # One pass over the client's headers for the few telemetry reads, instead of a scan per read.
        headers = self._headers = {
            name: values for name, values in command.headers.items() if name.lower() in READ_HEADERS
        }
        session = header_value(headers, SESSION_HEADER) if command.command_type == COMMAND_SESSION_END else None
        if session is not None:
            t.session_closed(session)
        token: Token[otel_context.Context] | None = None
        self._span: trace.Span = trace.INVALID_SPAN
        if t.tracing:
            self._span, token = self._start(t, command, headers, session)
        self._tokens = (token, t.current.set(self))
        t.inflight.add(1)
        return self

    @staticmethod
    def _start(
        t: OtelTelemetry, command: PolledCommand, headers: Headers, session: str | None
    ) -> tuple[trace.Span, Token[otel_context.Context]]:
        """The SERVER span, child of the caller's context, made current (with its context token)."""
        params: Params | None = None
        if command.jsonrpc is not UNSET and header_value(headers, TRACEPARENT) is None:
            raw = bytes(command.jsonrpc)
            if b"traceparent" in raw:  # only then is the message parsed here
                message = t.payloads.message(raw)
                params = t.payloads.params(message.params if message is not None else UNSET)
        parent = t.extract(headers, params)
        attributes: Attributes = {
            "network.transport": "tcp",
            "gateway.channel": t.labels(command.channel),
            "gateway.request.id": command.request_id,
        }
        if session is not None:
            attributes["mcp.session.id"] = session
        span = t.spans.start(command.command_type, SpanKind.SERVER, attributes, parent)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    def describe(self, message: JsonRpcMessage) -> None:
        t = self._t
        if message.method is UNSET:  # a client's answer to a server-initiated request
            self._span.update_name("response")
            return
        params = t.payloads.params(message.params)
        self._params = (message.params, params)
        recording = self._span.is_recording()
        op = self._op = t.operation(message.method, params, message.id, self._headers, "tcp", traced=recording)
        self._metric = op.metric
        if not recording:
            return
        self._span.update_name(op.name)
        put(self._span, op.attributes)
        if t.capture and op.tool_call and op.arguments is not UNSET:
            self._span.set_attribute("gen_ai.tool.call.arguments", t.captured(op.arguments))

    def decoded(self, raw: Raw | UnsetType) -> Params | None:
        """The command's params as `describe` decoded them, when `raw` is the very same buffer."""
        kept = self._params
        return kept[1] if kept is not None and kept[0] is raw else None

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
            self._metric = t.settle(self._span, self._op, body, self._metric, server=True)
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
                self._metric = {**self._metric, "error.type": t.failed(self._span, exc)}
            elif not self._answered:
                self._span.set_attribute("error.type", "unanswered")
                self._metric = {**self._metric, "error.type": "unanswered"}
            if self._op is not None:
                t.server_duration.record(time.perf_counter() - self._started, self._metric)
            t.inflight.add(-1)
            self._span.end()
        finally:
            otel_token, var_token = self._tokens
            t.current.reset(var_token)
            if otel_token is not None:
                otel_context.detach(otel_token)


class PostSpan:
    """One response POST's CLIENT span, current while it runs so retry events land on it."""

    __slots__ = ("_ok", "_resp_type", "_span", "_status", "_t", "_token")

    def __init__(self, t: OtelTelemetry, resp_type: str, status: int) -> None:
        self._t = t
        self._resp_type = resp_type
        self._status = status
        self._ok: bool | None = None
        self._span: trace.Span = trace.INVALID_SPAN
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> PostSpan:
        if not self._t.tracing:
            return self
        attributes: Attributes = {"tunnel.resp_type": self._resp_type, "tunnel.resp_code": self._status}
        self._span = self._t.spans.start("tunnel response", SpanKind.CLIENT, attributes)
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
                kind = t.failed(self._span, exc)
            elif self._ok is False:
                kind = "not_delivered"
                self._span.set_attribute("error.type", kind)
                self._span.set_status(Status(StatusCode.ERROR))
            if kind is not None:
                t.post_failures.add(1, {"tunnel.resp_type": self._resp_type, "error.type": kind})
            self._span.end()
        finally:
            if self._token is not None:
                otel_context.detach(self._token)


class PollSpan:
    """One long poll's span (a root: each poll is a trace of its own) and its metrics."""

    __slots__ = ("_count", "_limit", "_span", "_started", "_t")

    def __init__(self, t: OtelTelemetry, limit: int) -> None:
        self._t = t
        self._limit = limit
        self._count = 0

    def __enter__(self) -> PollSpan:
        self._started = time.perf_counter()
        t = self._t
        self._span = (
            t.spans.start("tunnel poll", SpanKind.CLIENT, {"tunnel.poll.limit": self._limit}, otel_context.Context())
            if t.tracing
            else trace.INVALID_SPAN
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
            kind = outcome["error.type"] = t.failed(self._span, exc)
            t.poll_errors.add(1, {"error.type": kind})
        else:
            put(self._span, {"tunnel.poll.commands": self._count})
            if self._count:
                t.polled.add(self._count)
        t.poll_duration.record(time.perf_counter() - self._started, outcome)
        self._span.end()


class ClientSpan:
    """One upstream call's CLIENT span; `call` is the call carrying its trace context to the server."""

    __slots__ = ("_done", "_metric", "_op", "_span", "_started", "_t", "call")

    def __init__(self, t: OtelTelemetry, upstream: Observed, call: Call, info: UpstreamInfo) -> None:
        self._t = t
        self._done = False
        server = t.server_attributes(upstream)
        scope = t.current.get()  # the command this call serves: its params may be this call's, decoded
        decoded = scope.decoded(call.params) if scope is not None else None
        if decoded is None:
            decoded = t.payloads.params(call.params)
        op = t.operation(
            call.method,
            decoded,
            call.id,
            call.headers,
            server["network.transport"],
            server=server,
            version=info.protocol_version,
            traced=t.tracing and t.spans.records(),
        )
        self._op, self._metric = op, op.metric
        self._started = time.perf_counter()
        if not t.tracing:
            self._span: trace.Span = trace.INVALID_SPAN
            self.call = call
            return
        self._span = t.spans.start(op.name, SpanKind.CLIENT, op.attributes)
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
            self._metric = self._t.settle(self._span, self._op, reply.body, self._metric, server=False)
            self.end()

    def fail(self, exc: BaseException) -> None:
        if not self._done:
            self._metric = {**self._metric, "error.type": self._t.failed(self._span, exc)}
            self.end()

    def end(self) -> None:
        if not self._done:
            self._done = True
            self._t.client_duration.record(time.perf_counter() - self._started, self._metric)
            self._span.end()


class TokenSpan:
    """One token request's CLIENT span, named and described by the OTel HTTP client conventions
    (`POST`), child of the span current when it starts (a call's, for an exchange on the call's path)
    or a root (a background refresh), and its `gateway.token.duration` point. Knows the endpoint's
    address, the status and the outcome only: no token, secret or body reaches it."""

    __slots__ = ("_attributes", "_grant", "_issued", "_metric", "_span", "_started", "_t")

    def __init__(self, t: OtelTelemetry, grant: str, attributes: Attributes, issued: Attributes) -> None:
        self._t = t
        self._grant = grant
        self._attributes = attributes
        self._issued = issued
        self._metric: Attributes | None = None

    def __enter__(self) -> TokenSpan:
        t = self._t
        self._span = t.spans.start("POST", SpanKind.CLIENT, dict(self._attributes)) if t.tracing else trace.INVALID_SPAN
        self._started = time.perf_counter()
        return self

    def settled(self, status: int, outcome: Granted | Failed) -> None:
        if self._metric is not None:
            return
        self._span.set_attribute("http.response.status_code", status)
        if isinstance(outcome, Granted):
            self._metric = self._issued
            return
        if outcome.code is not None:
            self._span.set_attribute("gateway.token.error", outcome.code if outcome.code in OAUTH_ERRORS else "_OTHER")
        kind = "invalid_answer" if 200 <= status < 300 else str(status)  # a 2xx that carries no usable token
        self._metric = self._failure("refused" if outcome.refused else "failed", kind)

    def _failure(self, outcome: str, kind: str) -> Attributes:
        self._span.set_attribute("error.type", kind)
        self._span.set_status(Status(StatusCode.ERROR))
        return {"gateway.token.grant": self._grant, "gateway.token.outcome": outcome, "error.type": kind}

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._metric is None:
            if isinstance(exc, asyncio.CancelledError):  # closing: no outcome to count
                self._span.set_attribute("gateway.token.cancelled", True)
                self._span.end()
                return
            # No answer: the exception's class (its text may name the endpoint's URL), or none at all.
            self._metric = self._failure("failed", type(exc).__name__ if exc is not None else "_OTHER")
        self._t.token_duration.record(time.perf_counter() - self._started, self._metric)
        self._span.end()
