"""gateway.observe.otel_records: a `Recorder` collects exactly what `Histogram.record` collects (counts,
sums, buckets, min, max, attribute sets) for every reader setup, and takes its short path only where that
is safe. The short-path test pins the SDK internals it relies on: it fails when they move."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, AlwaysOnExemplarFilter, Histogram, MeterProvider
from opentelemetry.sdk.metrics._internal.measurement import Measurement
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View

from gateway.observe.otel_records import MEASUREMENT_FIELDS, Recorder, _measurement

BUCKETS = (0.01, 0.1, 1.0)
SETS: list[dict[str, Any]] = [
    {"mcp.method.name": "tools/call", "gen_ai.tool.name": "echo", "network.transport": "tcp"},
    {"mcp.method.name": "tools/call", "gen_ai.tool.name": "add", "network.transport": "tcp"},
    {"mcp.method.name": "tools/call", "network.transport": "tcp", "gen_ai.tool.name": "echo"},  # same set, reordered
    {"mcp.method.name": "initialize", "server.port": 8080},
    {},
]
VALUES = (0.005, 0.05, 0.5, 5.0, 0.0, 0.1)


def _points(reader: InMemoryMetricReader) -> list[tuple[Any, ...]]:
    data = reader.get_metrics_data()
    assert data is not None
    out = []
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:  # type: ignore[union-attr]
                    out.append(
                        (
                            metric.name,
                            tuple(sorted((point.attributes or {}).items())),
                            point.count,  # type: ignore[union-attr]
                            point.sum,  # type: ignore[union-attr]
                            tuple(point.bucket_counts),  # type: ignore[union-attr]
                            point.min,  # type: ignore[union-attr]
                            point.max,  # type: ignore[union-attr]
                        )
                    )
    return sorted(out)


def _histogram(provider: MeterProvider) -> Histogram:
    histogram = provider.get_meter("m").create_histogram(
        "mcp.server.operation.duration", unit="s", explicit_bucket_boundaries_advisory=BUCKETS
    )
    assert isinstance(histogram, Histogram)
    return histogram


def _both(
    readers: int = 1, sets: Sequence[Mapping[str, Any]] = SETS, **kwargs: Any
) -> tuple[list[InMemoryMetricReader], list[InMemoryMetricReader], Recorder]:
    """Two providers fed the same records, one through `Recorder`, one through the SDK's `record`."""
    temporality = kwargs.pop("temporality", None)
    made: list[list[InMemoryMetricReader]] = []
    recorder = None
    for fast in (True, False):
        preferred = {Histogram: temporality} if temporality is not None else None
        group = [InMemoryMetricReader(preferred_temporality=preferred) for _ in range(readers)]
        options = {"exemplar_filter": AlwaysOffExemplarFilter(), **kwargs}  # as otel_sdk builds it
        histogram = _histogram(MeterProvider(metric_readers=group, **options))
        if fast:
            recorder = Recorder(histogram)
        for _ in range(3):
            for attributes in sets:
                for value in VALUES:
                    if recorder is not None and fast:
                        recorder.record(value, dict(attributes))
                    else:
                        histogram.record(value, dict(attributes))
        made.append(group)
    assert recorder is not None
    return made[0], made[1], recorder


def test_the_short_path_is_taken_and_collects_what_the_sdk_collects() -> None:
    fast, sdk, recorder = _both(readers=2)
    assert [_points(reader) for reader in fast] == [_points(reader) for reader in sdk]
    assert len(_points(fast[0])) == 4  # the reordered set is the same series
    # The SDK internals the short path reads are where it expects them: every set is remembered.
    assert len(recorder._kept) == len(SETS)
    assert all(len(aggregations) == 2 for _, aggregations, _ in recorder._kept.values())
    for attributes in SETS:  # and it keeps agreeing past collections
        recorder.record(0.2, dict(attributes))
        recorder.histogram.record(0.2, dict(attributes))
    assert _points(fast[0]) == _points(fast[1])


def test_a_short_path_measurement_has_the_sdks_measurement_fields() -> None:
    assert tuple(Measurement.__dataclass_fields__) == MEASUREMENT_FIELDS, "the SDK's Measurement changed"
    histogram = _histogram(MeterProvider())
    made = _measurement(0.5, histogram, {"a": "b"})
    assert isinstance(made, Measurement)
    assert (made.value, made.instrument, made.attributes) == (0.5, histogram, {"a": "b"})


def test_delta_readers_views_and_late_readers_collect_what_the_sdk_collects() -> None:
    fast, sdk, recorder = _both(temporality=AggregationTemporality.DELTA)
    assert _points(fast[0]) == _points(sdk[0])
    assert not recorder._kept  # delta collection replaces the aggregations: never remembered
    keys = View(instrument_name="*", attribute_keys={"mcp.method.name"})
    fast, sdk, recorder = _both(views=[keys])
    assert _points(fast[0]) == _points(sdk[0])
    assert {point[1] for point in _points(fast[0])} == {
        (),
        (("mcp.method.name", "initialize"),),
        (("mcp.method.name", "tools/call"),),
    }
    late = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[late], exemplar_filter=AlwaysOffExemplarFilter())
    recorder = Recorder(_histogram(provider))
    recorder.record(0.5, {"a": "b"})
    recorder.record(0.5, {"a": "b"})
    assert _points(late)[0][2] == 2


def test_values_other_than_str_and_int_and_exemplars_take_the_sdks_path() -> None:
    flags = [{"flag": True}, {"flag": 1}, {"flag": 1.0}]
    fast, sdk, recorder = _both(sets=flags)
    assert _points(fast[0]) == _points(sdk[0])
    assert len(recorder._kept) == 1  # the int set, with its types: True and 1.0 are equal to 1 but not it
    fast, sdk, recorder = _both(exemplar_filter=AlwaysOnExemplarFilter())
    assert _points(fast[0]) == _points(sdk[0])
    assert not recorder._kept
    recorder.record(-1.0, {"a": "b"})  # refused by the SDK, as `record` refuses it
    recorder.record(float("nan"), {"a": "b"})
    assert _points(fast[0]) == _points(sdk[0])
