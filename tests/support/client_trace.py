"""A known client-side trace context (trace and span ids) made current in a test, as an instrumented MCP client
would have it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

CLIENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7


@contextlib.contextmanager
def client_trace() -> Iterator[None]:
    """Make a known span current in this task: the MCP SDK client injects it into `params._meta`."""
    parent = SpanContext(CLIENT_TRACE, CLIENT_SPAN, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        yield
    finally:
        otel_context.detach(token)
