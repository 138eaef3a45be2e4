"""The relay's spans: a SERVER span per MCP client request (`OtelRelayTracer`), continuing the client's
trace and passing its own on in the command. Part of the OTel implementation (loaded only when telemetry
is on); builds no provider, sets no global.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from msgspec import UNSET
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.observe.otel_scopes import READ_HEADERS, Attributes, Operation
from gateway.observe.otel_spans import put
from gateway.protocol.headers import SESSION_HEADER
from gateway.protocol.tracecontext import with_trace_headers
from gateway.protocol.wire import Headers, JsonRpcMessage, header_value

if TYPE_CHECKING:
    from gateway.observe.otel import OtelTelemetry


class OtelRelayTracer:
    """The relay's `RelayTracer`: a SERVER span per MCP client request."""

    def __init__(self, t: OtelTelemetry) -> None:
        self._t = t

    def request(
        self, channel: str, headers: Mapping[str, str], body: bytes | None, message: JsonRpcMessage | None = None
    ) -> RelayRequestSpan:
        return RelayRequestSpan(self._t, channel, headers, body, message)


class RelayRequestSpan:
    """One client request on the relay: continues the client's trace, passes its own on in the command."""

    __slots__ = ("_body", "_channel", "_headers", "_message", "_op", "_span", "_t")

    def __init__(
        self,
        t: OtelTelemetry,
        channel: str,
        headers: Mapping[str, str],
        body: bytes | None,
        message: JsonRpcMessage | None = None,
    ) -> None:
        self._t = t
        self._channel = channel
        # Only the headers telemetry reads (trace context, protocol version, session), not all of them.
        self._headers: Headers = {name: [value] for name, value in headers.items() if name.lower() in READ_HEADERS}
        self._body = body
        self._message = message
        """The body as the front door decoded it (one decode for both), or None: decoded here."""
        self._op: Operation | None = None

    def __enter__(self) -> RelayRequestSpan:
        t = self._t
        message = self._message
        if message is None:
            message = self._message = t.payloads.message(self._body)
        params = t.payloads.params(message.params if message is not None else UNSET)
        parent = t.extract(self._headers, params)
        if not t.relay_spans.records(parent):
            # A trace not sampled: the span only carries the context on (nothing of it is recorded, and
            # the relay keeps no metrics of its own), so no name, attribute or outcome is worked out.
            self._span = t.relay_spans.start("request", SpanKind.SERVER, {}, parent)
            return self
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
        self._span = t.relay_spans.start(name, SpanKind.SERVER, attributes, parent)
        return self

    def inject(self, headers: Headers, body: bytes | None) -> tuple[Headers, bytes | None]:
        carrier = self._t.carrier(self._span)
        if not carrier:
            return headers, body
        if body is not None:
            body = self._t.payloads.inject_message(body, carrier)
        return with_trace_headers(headers, carrier), body

    def subject(self, subject: str) -> None:
        self._span.set_attribute("user.id", subject)

    def answered(self, status: int, body: bytes | None) -> None:
        put(self._span, {"http.response.status_code": status})
        if self._op is not None:
            self._t.settle(self._span, self._op, body, {}, server=True)
        if status >= 500:
            self._span.set_attribute("error.type", str(status))
            self._span.set_status(Status(StatusCode.ERROR))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self._t.failed(self._span, exc)
        self._span.end()
