"""`SpanStarter`: starts real SDK spans (`opentelemetry.sdk.trace.Span`, seen by the provider's span
processors, parented and propagated like any other) without the SDK's per-value attribute cleaning, for
attributes this package builds (str/int/float/bool values only). Owns no provider and sets no global.

`Tracer.start_span` cleans each attribute value through `BoundedAttributes` (about 1.3 µs a value),
asks the sampler, builds the span through two `__init__`s and four locks, and `Span.end` copies the span
into a second `ReadableSpan` for the processors. With one of the SDK's own samplers (`always_on`,
`always_off`, `traceidratio` and their `parentbased_` forms, the delegates for parents left as they
are), an enabled tracer and no value-length limit, this makes the sampler's decision itself (the same
rule: the parent's flag, else the trace id's low 64 bits against the ratio's bound), builds the same
`Span` (same type, same fields, the values put in as they are) or the same `NonRecordingSpan`, and
hands a recorded span itself to `on_end`; any other sampler, limit or tracer, or a value of another
type, goes through the SDK's own `start_span`. `tests/unit/observe/test_otel_spans.py`
pins the SDK internals this relies on (the fields of `Span`, `BoundedAttributes` and `Tracer`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from threading import Lock
from time import time_ns
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import _Span
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation import tracecontext as w3c
from opentelemetry.trace.span import _TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH, DEFAULT_TRACE_STATE

_CLEAN: Final = frozenset({str, bool, int, float})
"""Attribute value types put into a span as they are (the SDK keeps these unchanged without a length limit)."""
_FLAGS: Final = {
    (True, True): TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID),
    (True, False): TraceFlags(TraceFlags.SAMPLED),
    (False, True): TraceFlags(TraceFlags.DEFAULT | TraceFlags.RANDOM_TRACE_ID),
    (False, False): TraceFlags(TraceFlags.DEFAULT),
}
"""Trace flags by (sampled, random trace id), built once."""
_UNSET: Final = Status(StatusCode.UNSET)
_NO_STATE: Final = DEFAULT_TRACE_STATE
_TRACE_ID_MAX: Final = 2**128 - 1
_RATIO_BITS: Final = TraceIdRatioBased.TRACE_ID_LIMIT
"""The trace id bits a ratio sampler compares with its bound (the low 64)."""
_SPAN_ID_MAX: Final = 2**64 - 1
_W3C: Final = w3c.TraceContextTextMapPropagator
_TRACEPARENT: Final[re.Pattern[str]] = _W3C._TRACEPARENT_HEADER_FORMAT_RE
_TRACEPARENT_LIMIT: Final[int] = _W3C._TRACEPARENT_MAXIMUM_LENGTH
_TRACESTATE_LIMIT: Final[int] = _TRACECONTEXT_MAXIMUM_TRACESTATE_LENGTH
_sdk_logger = logging.getLogger("opentelemetry.sdk.trace")
"""Warnings about misuse go where the SDK's own span writes them."""


class GatewaySpan(_Span):
    """The SDK's span; `end` hands the span itself to the processors (it is a `ReadableSpan`, frozen once
    ended, sharing what the SDK's copy would share) and `put` adds attributes without re-cleaning them.
    Its event and link lists start as one shared empty list and are made on the first event or link
    (most spans have none: two lists, two locks and four objects for the collector fewer per span)."""

    def _add_event(self, event: Any) -> None:
        self._append("_events", "max_events", event, "add_event")

    def _add_link(self, link: Any) -> None:
        self._append("_links", "max_links", link, "add_link")

    def _append(self, field: str, limit: str, item: Any, what: str) -> None:
        """What the SDK's `_add_event`/`_add_link` do, making the span's own list first if it has none."""
        with self._lock:
            if self._end_time is None:
                items = self.__dict__[field]
                if type(items) is _NoItems:
                    items = self.__dict__[field] = BoundedList(getattr(self._limits, limit))
                items.append(item)
                return
        _sdk_logger.warning("Tried calling %s on an ended span.", what)

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                _sdk_logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            attributes: Any = self._attributes
            attributes._immutable = True
        if self._record_end_metrics:
            self._record_end_metrics()
        processor = self._span_processor
        processor._on_ending(self)
        processor.on_end(self)

    def put(self, attributes: Mapping[str, Any]) -> None:
        """`set_attributes` for values of the clean types within the limits; anything else the SDK's way."""
        bounded: Any = self._attributes
        plain: dict[str, Any] = bounded._dict
        if (
            bounded.max_value_len is not None
            or bounded.maxlen is None
            or len(plain) + len(attributes) > bounded.maxlen
            or not _CLEAN.issuperset(map(type, attributes.values()))
        ):
            self.set_attributes(attributes)
            return
        with self._lock:
            if self._end_time is None:
                plain.update(attributes)
                return
        _sdk_logger.warning("Setting attribute on ended span.")


class _NoItems(BoundedList):  # type: ignore[type-arg]
    """The empty event or link list spans share until they get one of their own; never added to."""

    def __init__(self) -> None:
        super().__init__(0)

    def append(self, item: Any) -> None:
        raise TypeError("a shared empty list of a GatewaySpan was added to (an SDK change?)")

    def extend(self, seq: Any) -> None:
        raise TypeError("a shared empty list of a GatewaySpan was added to (an SDK change?)")


def remote_context(traceparent: str, tracestate: str | None) -> otel_context.Context | None:
    """The context `TraceContextTextMapPropagator.extract` makes from these two header values, or None where
    it would find no valid parent; the propagator's own pattern and rules, without its carrier, getter and
    `re` cache look-ups."""
    if len(traceparent) > _TRACEPARENT_LIMIT:
        return None
    match = _TRACEPARENT.search(traceparent)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16 or version == "ff" or (version == "00" and rest):
        return None
    state = None
    if tracestate is not None and len(tracestate) <= _TRACESTATE_LIMIT:
        state = TraceState.from_header([tracestate])
    remote = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)), state)
    return trace.set_span_in_context(NonRecordingSpan(remote), otel_context.Context())


def put(span: trace.Span, attributes: Mapping[str, Any]) -> None:
    """Attributes onto any span: `GatewaySpan.put` when it is one, else `set_attributes`."""
    if isinstance(span, GatewaySpan):
        span.put(attributes)
    else:
        span.set_attributes(attributes)


class Decider:
    """The decision of one of the SDK's own samplers, made here by the sampler's own rule: `parent_based`
    follows a valid parent's sampled flag (the SDK's default delegates for parents); otherwise, and for a
    root, a trace id whose low 64 bits are below `bound` is sampled (`always_on`: every id, `always_off`:
    none, `traceidratio`: the sampler's bound)."""

    __slots__ = ("bound", "parent_based")

    def __init__(self, parent_based: bool, bound: int) -> None:
        self.parent_based = parent_based
        self.bound = bound

    @classmethod
    def of(cls, sampler: Sampler | None) -> Decider | None:
        """The decider for `sampler`, or None when only the sampler itself can decide."""
        parent_based = type(sampler) in (ParentBased, ParentBasedTraceIdRatio)
        if parent_based:
            # Its private fields (a test pins them): an SDK that renames them gets its own sampler asked.
            delegates = [getattr(sampler, name, None) for name in _DELEGATE_FIELDS]
            if any(given is not default for given, default in zip(delegates, _DELEGATES, strict=True)):
                return None
            sampler = getattr(sampler, "_root", None)
        if sampler is ALWAYS_ON:
            return cls(parent_based, _RATIO_BITS + 1)
        if sampler is ALWAYS_OFF:
            return cls(parent_based, 0)
        if type(sampler) is TraceIdRatioBased:
            return cls(parent_based, sampler.bound)
        return None

    def sampled(self, trace_id: int, parent: SpanContext | None) -> bool:
        if parent is not None and self.parent_based:
            return parent.trace_flags.sampled
        return trace_id & _RATIO_BITS < self.bound


_DELEGATE_FIELDS: Final = (
    "_remote_parent_sampled",
    "_remote_parent_not_sampled",
    "_local_parent_sampled",
    "_local_parent_not_sampled",
)
_DELEGATES: Final = (ALWAYS_ON, ALWAYS_OFF, ALWAYS_ON, ALWAYS_OFF)
"""`ParentBased`'s defaults for a remote sampled, remote unsampled, local sampled and local unsampled parent."""


class SpanStarter:
    """Starts spans of one tracer; `start` is `Tracer.start_span` for attributes of the clean types."""

    __slots__ = ("_decider", "_none", "_sampler", "_sdk", "tracer")

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer
        self._none = _NoItems()
        self._sdk: Any = tracer if type(tracer) is SdkTracer else None
        self._sampler: Sampler | None = self._sdk.sampler if self._sdk is not None else None
        self._decider = Decider.of(self._sampler)

    def records(self, context: otel_context.Context | None = None) -> bool:
        """False only when a span started now as a child of `context` (the current context when None) is
        known not to be recorded: the sampler's rule decides by the parent's flag or trace id, or samples no
        root. Attributes the span would drop need not be built then. True whenever it cannot be known."""
        tracer = self._sdk
        decider = self._decider
        if tracer is None or decider is None or tracer.sampler is not self._sampler:
            return True
        parent = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            return decider.bound > 0  # a root: its trace id is not drawn yet
        return decider.sampled(parent.trace_id, parent)

    def start(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any],
        context: otel_context.Context | None = None,
    ) -> trace.Span:
        """A started span named `name` with `attributes` (the dict is given away: the span keeps it), child
        of the span in `context` (the current context when None), as `Tracer.start_span` would make it."""
        tracer = self._sdk
        decider = self._decider
        if (
            tracer is None
            or decider is None
            or tracer.sampler is not self._sampler
            or not tracer._tracer_config.is_enabled
        ):
            return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        ids = tracer.id_generator
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = ids.generate_trace_id()
            random_id = ids.is_trace_id_random()
            trace_state = None
        else:
            trace_id = parent.trace_id
            random_id = parent.trace_flags.random_trace_id
            trace_state = parent.trace_state
        sampled = decider.sampled(trace_id, parent)
        if not sampled:
            span_context = _span_context(trace_id, ids.generate_span_id(), _FLAGS[False, random_id], trace_state)
            tracer._tracer_metrics.start_span(parent, Decision.DROP)
            return NonRecordingSpan(context=span_context)
        limits = tracer._span_limits
        maxlen = limits.max_span_attributes
        if (
            limits.max_span_attribute_length is not None
            or maxlen is None
            or len(attributes) > maxlen
            or not _CLEAN.issuperset(map(type, attributes.values()))
        ):
            return tracer.start_span(name, context=context, kind=kind, attributes=attributes)  # type: ignore[no-any-return]
        span_context = _span_context(trace_id, ids.generate_span_id(), _FLAGS[True, random_id], trace_state)
        record_end_metrics = tracer._tracer_metrics.start_span(parent, Decision.RECORD_AND_SAMPLE)
        span = _new_span(tracer, name, span_context, parent, kind, attributes, maxlen, record_end_metrics, self._none)
        tracer.span_processor.on_start(span, parent_context=context)
        return span


def _span_context(trace_id: int, span_id: int, flags: TraceFlags, state: TraceState | None) -> SpanContext:
    """`SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=state)`: the same tuple
    with the same validity rule, without the constructor's keyword handling (a third of a span's start)."""
    valid = 0 < trace_id <= _TRACE_ID_MAX and 0 < span_id <= _SPAN_ID_MAX
    if state is None:
        state = _NO_STATE
    made: SpanContext = tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, valid))
    return made


def _new_span(
    tracer: Any,
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    kind: SpanKind,
    attributes: dict[str, Any],
    maxlen: int,
    record_end_metrics: Any,
    none: _NoItems,
) -> GatewaySpan:
    """What `_Span(...)` followed by `start()` builds, field by field (the pin test compares the two)."""
    limits = tracer._span_limits
    bounded = object.__new__(BoundedAttributes)
    bounded.__dict__ = {
        "_dict": attributes,
        "maxlen": maxlen,
        "dropped": 0,
        "max_value_len": None,
        "_lock": Lock(),
        "_immutable": False,
    }
    span = object.__new__(GatewaySpan)
    span.__dict__ = {
        "_name": name,
        "_context": context,
        "_kind": kind,
        "_instrumentation_info": tracer.instrumentation_info,
        "_instrumentation_scope": tracer._instrumentation_scope,
        "_parent": parent,
        "_start_time": time_ns(),
        "_end_time": None,
        "_attributes": bounded,
        "_events": none,
        "_links": none,
        "_resource": tracer.resource,
        "_status": _UNSET,
        "_sampler": tracer.sampler,
        "_trace_config": None,
        "_record_exception": True,
        "_set_status_on_exception": True,
        "_span_processor": tracer.span_processor,
        "_limits": limits,
        "_lock": Lock(),
        "_record_end_metrics": record_end_metrics,
    }
    return span
