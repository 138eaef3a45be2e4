"""`Recorder`: records into one SDK histogram with the aggregations for an attribute set found once and
remembered, so a repeated set skips the SDK's per-record cleaning, copying, sorting and hashing. The
SDK keeps owning the data (collection, views, readers, export); this only shortens the path into it.

`Histogram.record` builds a `Measurement` (which re-cleans every attribute value), copies the attributes
for each view, and `_hash_attributes` sorts them to find the aggregation (about 8 µs a record with five
attributes). For cumulative readers without exemplars, the aggregation an attribute set lands in never
changes, so this asks the SDK once (a normal `record`), keeps the aggregations it created, and feeds
later records of the same set to them. Anything else (delta temporality, exemplars on, a disabled
meter, overflowed cardinality, readers added or removed, values other than str and int) takes the SDK's own `record`.
`tests/unit/observe/test_otel_records.py` pins the SDK internals this relies on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from time import time_ns
from types import MappingProxyType
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter
from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
from opentelemetry.sdk.metrics._internal.instrument import _Histogram
from opentelemetry.sdk.metrics._internal.measurement import Measurement
from opentelemetry.sdk.metrics._internal.measurement_consumer import SynchronousMeasurementConsumer

_KEPT: Final = 2000
"""Attribute sets remembered per histogram (the SDK's default cardinality limit); then it starts over."""
_NO_ATTRIBUTES: Final[Mapping[str, Any]] = MappingProxyType({})
_NO_CONTEXT: Final = Context()
"""The context a fast measurement carries: read only for exemplars, which the fast path requires off."""


class _CleanMeasurement(Measurement):
    """A `Measurement` whose attributes were checked by `Recorder` (str and int), so not cleaned again: its
    fields are set in one step (`_measurement`), not through the frozen dataclass's five `__setattr__`s."""


MEASUREMENT_FIELDS: Final = ("value", "time_unix_nano", "instrument", "context", "attributes")
"""`Measurement`'s fields, as `_measurement` sets them (the pin test compares them with the SDK's)."""


def _measurement(amount: float, histogram: Histogram, attributes: Mapping[str, Any]) -> Measurement:
    measurement = object.__new__(_CleanMeasurement)
    fields = {
        "value": amount,
        "time_unix_nano": time_ns(),
        "instrument": histogram,
        "context": _NO_CONTEXT,
        "attributes": attributes,
    }
    object.__setattr__(measurement, "__dict__", fields)
    return measurement


class Recorder:
    """`record(amount, attributes)` for one histogram: the SDK's result, the aggregations of a
    repeated attribute set looked up in a dict keyed by the attributes' items."""

    __slots__ = ("_consumer", "_histogram", "_kept")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._kept: dict[tuple[tuple[str, Any], ...], tuple[object, list[Any], tuple[type, ...] | None]] = {}
        consumer = getattr(histogram, "_measurement_consumer", None)
        fast = (
            isinstance(histogram, _Histogram)
            and type(consumer) is SynchronousMeasurementConsumer
            and type(consumer._sdk_config.exemplar_filter) is AlwaysOffExemplarFilter
        )
        self._consumer = consumer if fast else None

    @property
    def histogram(self) -> Histogram:
        return self._histogram

    def record(self, amount: float, attributes: Mapping[str, Any] = _NO_ATTRIBUTES) -> None:
        consumer = self._consumer
        if consumer is None:
            self._histogram.record(amount, attributes)
            return
        key = tuple(attributes.items())
        kept = self._kept.get(key)
        storages = consumer._reader_storages
        if (
            kept is None
            or kept[0] is not storages
            or (kept[2] is not None and kept[2] != tuple(map(type, attributes.values())))
            or not self._histogram._is_enabled()  # type: ignore[attr-defined]
            or not math.isfinite(amount)
            or amount < 0
        ):
            self._histogram.record(amount, attributes)
            if kept is None or kept[0] is not storages:
                self._remember(key, attributes, storages)
            return
        measurement = _measurement(amount, self._histogram, attributes)
        for aggregation in kept[1]:
            aggregation.aggregate(measurement, False)

    def _remember(self, key: tuple[tuple[str, Any], ...], attributes: Mapping[str, Any], storages: Any) -> None:
        """Find the aggregations the SDK just recorded `attributes` into; remember them if it is safe."""
        # The key is the items, and 1, 1.0 and True are equal: a set with a value that is not a str is
        # remembered with its value types, which a record must then match.
        types = tuple(map(type, attributes.values()))
        if not all(kind is str or kind is int for kind in types):
            return
        aggregations = []
        for storage in storages.values():
            matches = storage._instrument_view_instrument_matches.get(self._histogram)
            if matches is None:
                return
            for match in matches:
                if match._reset_on_collect:
                    return  # delta: collection replaces the aggregations
                kept_keys = match._view._attribute_keys
                selected = {k: v for k, v in attributes.items() if kept_keys is None or k in kept_keys}
                aggregation = match._attributes_aggregation.get(_hash_attributes(selected))
                if aggregation is None:
                    return  # overflowed into the cardinality limit's bucket
                aggregations.append(aggregation)
        if len(self._kept) >= _KEPT:
            self._kept.clear()
        self._kept[key] = (storages, aggregations, None if all(kind is str for kind in types) else types)
