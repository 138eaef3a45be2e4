"""gateway.observe.otel_spans: `SpanStarter` builds the span `Tracer.start_span` builds (same type, same
fields, same ids and flags for every kind of parent), the processors see it start and end, other
instrumentation parents on it, and anything off the fast path goes through the SDK. The first test pins
the SDK internals the fast path writes: it fails when the SDK's `Span` gains, loses or renames a field."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.observe.otel_spans import Decider, GatewaySpan, SpanStarter, _span_context, put, remote_context

ATTRIBUTES = {"mcp.method.name": "tools/call", "tunnel.poll.limit": 64, "ratio": 0.5, "flag": True}
_VARIES = {"_context", "_start_time", "_end_time", "_lock", "_attributes", "_events", "_links", "_status"}
"""Fields whose values differ between two spans (ids, times, locks, containers compared on their own)."""


class _Seen(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[tuple[SdkSpan, Context | None]] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        self.started.append((span, parent_context))

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span)


def _provider(**kwargs: Any) -> tuple[TracerProvider, _Seen]:
    provider = TracerProvider(**kwargs)
    seen = _Seen()
    provider.add_span_processor(seen)
    return provider, seen


def _compare(sdk: Any, ours: Any) -> None:
    assert isinstance(ours, GatewaySpan)
    assert isinstance(ours, SdkSpan)
    assert sorted(vars(ours)) == sorted(vars(sdk)), "the SDK's Span fields changed: update otel_spans._new_span"
    for name, value in vars(sdk).items():
        if name not in _VARIES:
            assert vars(ours)[name] == value, name
        assert isinstance(vars(ours)[name], type(value)), name
    for name in ("_attributes", "_events", "_links"):
        assert sorted(vars(vars(ours)[name])) == sorted(vars(vars(sdk)[name])), f"the SDK's {name} type changed"
    assert vars(ours._attributes) | {"_lock": None, "_dict": None} == vars(sdk._attributes) | {
        "_lock": None,
        "_dict": None,
    }
    assert dict(ours.attributes) == dict(sdk.attributes)
    assert ours.status.status_code == sdk.status.status_code
    assert ours.get_span_context().trace_flags == sdk.get_span_context().trace_flags
    assert ours.get_span_context().trace_state == sdk.get_span_context().trace_state
    assert ours.get_span_context().is_remote is False


def test_the_span_has_every_field_the_sdk_gives_its_span_started_and_ended(caplog: pytest.LogCaptureFixture) -> None:
    provider, seen = _provider()
    tracer = provider.get_tracer("scope", "1.0")
    sdk = tracer.start_span("tools/call echo", kind=SpanKind.SERVER, attributes=dict(ATTRIBUTES))
    ours = SpanStarter(tracer).start("tools/call echo", SpanKind.SERVER, dict(ATTRIBUTES))
    _compare(sdk, ours)
    assert [span for span, _ in seen.started] == [sdk, ours]
    sdk.end()
    ours.end()
    _compare(sdk, ours)
    assert ours.end_time is not None
    assert ours.end_time >= (ours.start_time or 0)
    assert seen.ended[1] is ours
    assert seen.ended[1].attributes == ATTRIBUTES
    with caplog.at_level(logging.WARNING, logger="opentelemetry.sdk.trace"):
        ours.end()  # a second end changes nothing and warns as the SDK's span does
    assert len(seen.ended) == 2
    assert "ended span" in caplog.text


def test_events_and_links_land_on_the_span_that_gets_them() -> None:
    provider, seen = _provider()
    starter = SpanStarter(provider.get_tracer("scope"))
    first = starter.start("first", SpanKind.INTERNAL, {})
    second = starter.start("second", SpanKind.INTERNAL, {})
    first.add_event("retry", {"gateway.retry.attempt": 1})
    first.add_link(SpanContext(0xABC, 0xDEF, is_remote=True), {"k": "v"})
    first.end()
    second.end()
    first.add_event("late")
    assert [(event.name, dict(event.attributes or {})) for event in first.events] == [  # type: ignore[attr-defined]
        ("retry", {"gateway.retry.attempt": 1})
    ]
    assert [link.context.span_id for link in first.links] == [0xDEF]  # type: ignore[attr-defined]
    assert second.events == ()  # type: ignore[attr-defined]
    assert second.links == ()  # type: ignore[attr-defined]
    assert seen.ended[1].dropped_events == seen.ended[1].dropped_links == 0


def test_the_sdks_span_adds_events_and_links_only_where_ours_takes_them_over() -> None:
    """GatewaySpan shares one empty list until `_add_event`/`_add_link`: no other SDK method may add to them
    (`__init__` and `_new_links` build the lists; `_new_span` replaces both)."""
    writers = set()
    for cls in SdkSpan.__mro__:
        for name, member in vars(cls).items():
            functions = [member] + [cell.cell_contents for cell in getattr(member, "__closure__", None) or ()]
            for function in functions:
                if inspect.isfunction(function):
                    source = inspect.getsource(function)
                    writes = (f"{field}.{verb}" for field in ("_events", "_links") for verb in ("append", "extend"))
                    if any(write in source for write in writes):
                        writers.add(f"{cls.__name__}.{name}")
    expected = {"Span.__init__", "Span._new_links", "Span._add_event", "Span._add_link"}
    assert writers == expected, "the SDK's Span adds events or links elsewhere now: see GatewaySpan._append"


def test_parents_ids_and_flags_are_the_sdks_for_every_parent() -> None:
    provider, _ = _provider()
    tracer = provider.get_tracer("scope")
    starter = SpanStarter(tracer)
    state = TraceState([("vendor", "v1")])
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=state)
    parents: list[Context | None] = [
        None,
        Context(),
        trace.set_span_in_context(NonRecordingSpan(remote)),
        trace.set_span_in_context(tracer.start_span("local parent")),
    ]
    for parent in parents:
        sdk = tracer.start_span("child", context=parent, kind=SpanKind.CLIENT, attributes={"a": "b"})
        ours = starter.start("child", SpanKind.CLIENT, {"a": "b"}, parent)
        _compare(sdk, ours)
        if parent is not None and trace.get_current_span(parent).get_span_context().is_valid:
            assert ours.get_span_context().trace_id == sdk.get_span_context().trace_id
            assert ours.parent == sdk.parent
        else:
            assert ours.parent is None
    # A parent that is not sampled: no span is recorded, the context says so, as the SDK does it.
    unsampled = trace.set_span_in_context(NonRecordingSpan(SpanContext(0xABC, 0xDEF, True, TraceFlags(0))))
    sdk = tracer.start_span("child", context=unsampled)
    ours = starter.start("child", SpanKind.INTERNAL, {}, unsampled)
    assert type(ours) is type(sdk) is NonRecordingSpan
    assert ours.get_span_context().trace_flags == sdk.get_span_context().trace_flags
    assert ours.get_span_context().trace_id == 0xABC


class _Ids(IdGenerator):
    """The trace id set before each start (the SDK's and ours draw one each for a root span)."""

    def __init__(self) -> None:
        self.trace_id = 1
        self.span_ids = iter(range(1, 1 << 20))

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return next(self.span_ids)


SAMPLERS: list[Sampler] = [
    ALWAYS_ON,
    ALWAYS_OFF,
    TraceIdRatioBased(0.5),
    DEFAULT_ON,
    DEFAULT_OFF,
    ParentBasedTraceIdRatio(0.25),
    ParentBased(TraceIdRatioBased(0.75)),
    ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON),  # delegates of its own: the SDK decides
    ParentBased(ParentBased(ALWAYS_OFF)),  # a root sampler the fast path does not know: the SDK decides
]
TRACE_IDS = [1, 0xFFFF_FFFF_FFFF_FFFF, 1 << 63, (1 << 62) - 1, 0xABCD << 64 | 0x3FFF_FFFF_FFFF_FFFF, 0x1234 << 80]
"""Trace ids whose low 64 bits fall on each side of the ratios' bounds (and high bits the rule ignores)."""


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: s.get_description())
def test_every_sdk_sampler_decides_as_the_sdk_does_for_every_parent(sampler: Sampler) -> None:
    """The fast path's sampling decision is the SDK's: for each of the SDK's own samplers, a root and
    every kind of parent (remote or local, sampled or not), and trace ids on both sides of a ratio's
    bound, the span is recorded exactly when the SDK's is, with the same flags, trace state and parent.
    `records` says "not recorded" only of spans the SDK does not record, and knows it for every parent."""
    ids = _Ids()
    provider, _ = _provider(sampler=sampler, id_generator=ids)
    tracer = provider.get_tracer("scope")
    starter = SpanStarter(tracer)
    state = TraceState([("vendor", "v1")])
    decided: set[bool] = set()
    for trace_id in TRACE_IDS:
        local_sampled = NonRecordingSpan(SpanContext(trace_id, 0xA1, False, TraceFlags(1), state))
        parents: list[Context | None] = [None, Context()] + [
            trace.set_span_in_context(NonRecordingSpan(SpanContext(trace_id, 0xB2, remote, TraceFlags(flags), state)))
            for remote in (True, False)
            for flags in (0, 1, 3)
        ]
        parents.append(trace.set_span_in_context(local_sampled))
        for parent in parents:
            ids.trace_id = trace_id
            sdk = tracer.start_span("child", context=parent, kind=SpanKind.CLIENT, attributes={"a": "b"})
            ids.trace_id = trace_id
            ours = starter.start("child", SpanKind.CLIENT, {"a": "b"}, parent)
            assert ours.is_recording() is sdk.is_recording()
            assert type(ours) is (GatewaySpan if sdk.is_recording() and Decider.of(sampler) else type(sdk))
            mine, theirs = ours.get_span_context(), sdk.get_span_context()
            assert (mine.trace_id, mine.trace_flags, mine.trace_state) == (
                theirs.trace_id,
                theirs.trace_flags,
                theirs.trace_state,
            )
            assert getattr(ours, "parent", None) == getattr(sdk, "parent", None)
            decided.add(sdk.is_recording())
            # Known in advance only where the rule has it: never "not recorded" for a span that is.
            if not starter.records(parent):
                assert not sdk.is_recording()
            parent_span = trace.get_current_span(parent).get_span_context()
            if Decider.of(sampler) is not None and parent_span.is_valid:
                assert starter.records(parent) is sdk.is_recording()
    if isinstance(sampler, TraceIdRatioBased | ParentBased) and sampler not in (DEFAULT_ON, DEFAULT_OFF):
        assert decided == {True, False}  # the trace ids fell on both sides of the bound


def test_the_fast_path_knows_the_sdks_samplers_and_only_those() -> None:
    for sampler in SAMPLERS[:7]:
        assert Decider.of(sampler) is not None, sampler.get_description()
    for sampler in SAMPLERS[7:]:
        assert Decider.of(sampler) is None, sampler.get_description()


def test_other_instrumentation_parents_on_our_span_and_ours_on_theirs() -> None:
    provider, _ = _provider()
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    ours = SpanStarter(provider.get_tracer("gateway"))
    other = provider.get_tracer("other.library")
    command = ours.start("command", SpanKind.SERVER, {"k": "v"})
    token = otel_context.attach(trace.set_span_in_context(command))
    try:
        theirs = other.start_span("db query")  # the current context: our span
        inner = ours.start("inner", SpanKind.INTERNAL, {})  # the current context too
        with other.start_as_current_span("library call") as library:
            nested = ours.start("nested", SpanKind.CLIENT, {})
            nested.end()
    finally:
        otel_context.detach(token)
    theirs.end()
    inner.end()
    command.end()
    assert theirs.parent == inner.parent == command.get_span_context()
    assert nested.parent == library.get_span_context()
    names = [span.name for span in exported.get_finished_spans()]
    assert names == ["nested", "library call", "db query", "inner", "command"]
    assert {span.context.trace_id for span in exported.get_finished_spans()} == {command.get_span_context().trace_id}


def test_off_the_fast_path_the_sdk_starts_the_span() -> None:
    limited, _ = _provider(span_limits=SpanLimits(max_span_attribute_length=3))
    span = SpanStarter(limited.get_tracer("s")).start("n", SpanKind.INTERNAL, {"k": "long value"})
    assert span.attributes == {"k": "lon"}  # type: ignore[attr-defined]
    assert not isinstance(span, GatewaySpan)
    for sampler in (ALWAYS_OFF, TraceIdRatioBased(0.0)):
        sampled, _ = _provider(sampler=sampler)
        assert not SpanStarter(sampled.get_tracer("s")).start("n", SpanKind.INTERNAL, {}).is_recording()
    default, _ = _provider()
    listed = SpanStarter(default.get_tracer("s")).start("n", SpanKind.INTERNAL, {"names": ["a", "b"]})
    assert listed.attributes == {"names": ("a", "b")}  # type: ignore[attr-defined]  # cleaned by the SDK
    noop = SpanStarter(trace.NoOpTracerProvider().get_tracer("s")).start("n", SpanKind.INTERNAL, {})
    assert not noop.is_recording()


def test_put_adds_clean_values_and_leaves_the_rest_to_the_sdk() -> None:
    provider, _ = _provider(span_limits=SpanLimits(max_span_attributes=3))
    span = SpanStarter(provider.get_tracer("s")).start("n", SpanKind.INTERNAL, {"a": "1"})
    put(span, {"b": 2, "c": True})
    assert span.attributes == {"a": "1", "b": 2, "c": True}  # type: ignore[attr-defined]
    put(span, {"d": ["x"]})  # over the limit and not a plain value: the SDK drops the oldest
    assert span.attributes == {"b": 2, "c": True, "d": ("x",)}  # type: ignore[attr-defined]
    assert span.dropped_attributes == 1  # type: ignore[attr-defined]
    span.end()
    put(span, {"e": "late"})
    assert "e" not in span.attributes  # type: ignore[attr-defined]
    plain = provider.get_tracer("s").start_span("sdk")
    put(plain, {"x": "y"})
    assert plain.attributes == {"x": "y"}  # type: ignore[attr-defined]


def test_remote_context_is_what_the_w3c_propagator_extracts() -> None:
    propagator = TraceContextTextMapPropagator()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    cases: list[tuple[str, str | None]] = [
        (parent, None),
        (parent, "vendor=v1,other=x"),
        (parent, "bad state with spaces"),
        (parent, "k=" + "v" * 600),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", None),
        ("  00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\t", None),
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future", None),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", None),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", None),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01", None),
        ("garbage", None),
        ("", None),
        (parent + "0" * 600, None),
    ]
    for traceparent, tracestate in cases:
        carrier = {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate is not None else {})}
        expected = trace.get_current_span(propagator.extract(carrier)).get_span_context()
        found = remote_context(traceparent, tracestate)
        if not expected.is_valid:
            assert found is None, traceparent
            continue
        assert found is not None, traceparent
        context = trace.get_current_span(found).get_span_context()
        assert context == expected, traceparent
        assert (context.trace_state, context.is_remote) == (expected.trace_state, True)


@pytest.mark.parametrize("state", [None, TraceState(), TraceState([("vendor", "v1")])])
@pytest.mark.parametrize(("trace_id", "span_id"), [(1, 1), (2**128 - 1, 2**64 - 1), (0, 5), (5, 0), (2**128, 5)])
def test_a_span_context_is_the_one_the_sdks_constructor_builds(
    state: TraceState | None, trace_id: int, span_id: int
) -> None:
    """`_span_context` skips `SpanContext`'s keyword handling only: the same tuple, the same validity, the
    parent's own trace state object (an empty one too), the default one for None."""
    flags = TraceFlags(TraceFlags.SAMPLED)
    made = _span_context(trace_id, span_id, flags, state)
    sdk = SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags, trace_state=state)
    assert type(made) is SpanContext
    assert tuple(made) == tuple(sdk)
    assert made.is_valid is sdk.is_valid
    assert made.trace_state is sdk.trace_state
