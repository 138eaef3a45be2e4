"""The OTLP/HTTP span exporter (the SDK's, with a cheaper encoding of the same request) and the SDK's batch
span processor without a system call per span. Sends only through the SDK's client; builds no provider
and changes no span.

The SDK's encoder builds one protobuf object per span, attribute and value on the
BatchSpanProcessor's thread, which holds the GIL the event loop needs (about 33 µs
a span here). This one appends bytes and reuses what it has seen (a few µs).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

import requests
import requests.utils
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.observe.otel_transport import KeepAliveTransport, keeps_alive

_logger = logging.getLogger(__name__)

_KIND_FIELDS: Final = (b"\x30\x01", b"\x30\x02", b"\x30\x03", b"\x30\x04", b"\x30\x05")
"""Span.kind (field 6, varint) by `SpanKind` value: INTERNAL (0) is 1 on the wire, SERVER 2, and so on."""
_FLAGS_LOCAL: Final = b"\x85\x01" + struct.pack("<I", 0x100)
_FLAGS_REMOTE: Final = b"\x85\x01" + struct.pack("<I", 0x300)
"""Span.flags (field 16, fixed32): the parent's is-remote bit is known (0x100), and set (0x200)."""
_KEPT_VALUES: Final = 4096
"""Encoded key/value pairs remembered; past that the memory starts over (ids never repeat)."""
_pack_q = struct.Struct("<Q").pack
_pack_times = struct.Struct("<BQBQ").pack
"""Span.start_time_unix_nano (field 7) and end_time_unix_nano (field 8), fixed64 each, with their keys."""
_REMEMBERED: Final = frozenset({str, int})
"""Value types whose (key, value) encodings are remembered; bool and float are equal to ints as dict keys."""
_NOTHING: Final = object()
_SEPARATORS: Final = {tag: bytes((tag,)) for tag in range(0x80)}
_pack_d = struct.Struct("<d").pack


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (`tag` is the already-shifted key byte(s) as an int < 128)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _text(tag: int, value: str) -> bytes:
    return _field(tag, value.encode())


def _any_value(value: Any) -> bytes:
    """An AnyValue message body, as the SDK's `_encode_value` maps Python values."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _text(0x0A, value)
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_d(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join(_field(0x0A, _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(0x32, b"".join(_field(0x0A, _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"invalid type {type(value).__name__} of an attribute value")


def _key_value(key: str, value: Any) -> bytes:
    return _text(0x0A, key) + _field(0x12, _any_value(value))


class SpanEncoder:
    """ExportTraceServiceRequest bytes for a batch of finished spans (one per exporter; one thread uses it)."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[str, Any], bytes] = {}
        self._heads: dict[tuple[str, Any], bytes] = {}
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        grouped: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]] = {}
        last_resource: Any = _NOTHING
        last_scope: Any = _NOTHING
        encoded: list[bytes] = []
        span = self.span
        for one in spans:
            fields = one.__dict__
            resource = fields["_resource"]
            scope = fields["_instrumentation_scope"] or None
            if resource is not last_resource or scope is not last_scope:  # batches come in long runs of one scope
                last_resource, last_scope = resource, scope
                scopes = grouped.setdefault(id(resource), (resource, {}))[1]
                encoded = scopes.setdefault(id(scope), (scope, []))[1]
            body = span(one)
            encoded.append(b"\x12" + _varint(len(body)) + body)
        out = []
        for resource, scopes in grouped.values():
            parts = [self._resource(resource)]
            for scope, bodies in scopes.values():
                parts.append(_field(0x12, self._scope(scope) + b"".join(bodies)))
            out.append(_field(0x0A, b"".join(parts)))
        return b"".join(out)

    def span(self, span: ReadableSpan) -> bytes:
        """One Span message body. Reads the ended span's fields directly (its properties copy events and
        links into tuples and wrap the attributes in a proxy); `ReadableSpan` keeps them as `_name` etc."""
        fields: dict[str, Any] = span.__dict__
        context = fields["_context"]
        parent = fields["_parent"]
        head = (fields["_name"], fields["_kind"])
        named = self._heads.get(head)
        if named is None:
            if len(self._heads) >= _KEPT_VALUES:
                self._heads.clear()
            name = head[0].encode()
            named = self._heads[head] = b"\x2a" + _varint(len(name)) + name + _KIND_FIELDS[head[1]._value_]
        out = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
        trace_state = context.trace_state
        if getattr(trace_state, "_dict", trace_state):  # TraceState's own __len__ is a Python call
            out.append(_text(0x1A, ",".join(f"{key}={value}" for key, value in trace_state.items())))
        if parent is not None:
            out += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        out += (named, _pack_times(0x39, fields["_start_time"] or 0, 0x41, fields["_end_time"] or 0))
        attributes = fields["_attributes"]
        if getattr(attributes, "_dict", attributes):  # BoundedAttributes' own __len__ is a Python call
            out.append(self.attributes(0x4A, attributes))
        dropped = getattr(attributes, "dropped", 0)
        if dropped:
            out.append(b"\x50" + _varint(dropped))
        events = fields["_events"]
        links = fields["_links"]
        if getattr(events, "_dq", events) or getattr(events, "dropped", 0):  # BoundedList's __len__ is a Python call
            self._events(out, events)
        if getattr(links, "_dq", links) or getattr(links, "dropped", 0):
            self._links(out, links)
        status = fields["_status"]
        code = status._status_code._value_  # not `.status_code.value`: properties, a Python call per read
        description = status._description
        if description or code:
            body = b""
            if description:
                body += _text(0x12, description)
            if code:
                body += b"\x18" + _varint(code)
            out.append(b"\x7a" + _varint(len(body)) + body)
        else:
            out.append(b"\x7a\x00")
        out.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
        return b"".join(out)

    def _events(self, out: list[bytes], events: Sequence[Any]) -> None:
        """Span.events (field 11) and dropped_events_count (field 12)."""
        for event in events:
            body = b"\x09" + _pack_q(event.timestamp) + _text(0x12, event.name)
            if event.attributes:
                body += self.attributes(0x1A, event.attributes)
            if event.dropped_attributes:
                body += b"\x20" + _varint(event.dropped_attributes)
            out.append(_field(0x5A, body))
        dropped = getattr(events, "dropped", 0)
        if dropped:
            out.append(b"\x60" + _varint(dropped))

    def _links(self, out: list[bytes], links: Sequence[Any]) -> None:
        """Span.links (field 13) and dropped_links_count (field 14)."""
        for link in links:
            body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big")
            body += b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
            if link.attributes:
                body += self.attributes(0x22, link.attributes)
            if link.dropped_attributes:
                body += b"\x28" + _varint(link.dropped_attributes)
            body += b"\x35" + (_FLAGS_REMOTE if link.context.is_remote else _FLAGS_LOCAL)[2:]
            out.append(_field(0x6A, body))
        dropped = getattr(links, "dropped", 0)
        if dropped:
            out.append(b"\x70" + _varint(dropped))

    def attributes(self, tag: int, attributes: Mapping[str, Any]) -> bytes:
        """Repeated KeyValue under `tag`. Each (key, value) pair's encoding is remembered: when every value
        is a str or an int, the span's own (key, value) item tuples find theirs in one pass in C."""
        pairs = self._pairs
        # The SDK's BoundedAttributes is a MutableMapping whose items() goes through the ABC's
        # __iter__/__getitem__; its plain dict (when there is one) gives the same pairs faster.
        plain = getattr(attributes, "_dict", None)
        if type(plain) is not dict:
            plain = dict(attributes.items())
        separator = _SEPARATORS[tag]
        # 1, 1.0 and True are equal keys: only when no bool or float is among the values may a pair be
        # looked up by its item tuple.
        if _REMEMBERED.issuperset(map(type, plain.values())):
            found = list(map(pairs.get, plain.items()))
            if None not in found:
                return separator + separator.join(found)  # type: ignore[arg-type]
        out = []
        for key, value in plain.items():
            remembered = type(value) in _REMEMBERED
            encoded = pairs.get((key, value)) if remembered else None
            if encoded is None:
                try:
                    encoded = _varint_prefixed(_key_value(key, value))
                except TypeError as exc:
                    _logger.warning("attribute %s not exported: %s", key, exc)
                    continue
                if remembered:
                    if len(pairs) >= _KEPT_VALUES:
                        pairs.clear()
                    pairs[key, value] = encoded
            out.append(encoded)
        return separator + separator.join(out) if out else b""

    def _resource(self, resource: Resource) -> bytes:
        """ResourceSpans.resource (field 1), encoded once per resource."""
        kept = self._resources.get(id(resource))
        if kept is None or kept[0] is not resource:
            kept = self._resources[id(resource)] = (resource, _field(0x0A, self.attributes(0x0A, resource.attributes)))
        encoded = kept[1]
        if resource.schema_url:
            encoded += _text(0x1A, resource.schema_url)
        return encoded

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        """ScopeSpans.scope (field 1) and schema_url (field 3), encoded once per scope."""
        kept = self._scopes.get(id(scope))
        if kept is None or kept[0] is not scope:
            body = b""
            schema = b""
            if scope is not None:
                body = _text(0x0A, scope.name)
                if scope.version:
                    body += _text(0x12, scope.version)
                if scope.attributes:
                    body += self.attributes(0x1A, scope.attributes)
                if scope.schema_url:
                    schema = _text(0x1A, scope.schema_url)
            kept = self._scopes[id(scope)] = (scope, _field(0x0A, body) + schema)
        return kept[1]


def _varint_prefixed(payload: bytes) -> bytes:
    return _varint(len(payload)) + payload


class FastOTLPSpanExporter(OTLPSpanExporter):
    """`OTLPSpanExporter` (endpoint, headers, TLS, compression, retries, size limit: all the SDK's)
    whose batches are encoded by `SpanEncoder` and sent, to a plain-HTTP endpoint `requests` would reach
    directly, over one kept `http.client` connection (`otel_transport.KeepAliveTransport`); to any other,
    through a `requests` session whose environment settings are read once (`_settle_environment`)
    rather than on every POST."""

    def __init__(self, **kwargs: Any) -> None:
        given = kwargs.get("session")
        session = given if given is not None else requests.Session()
        kwargs["session"] = session
        super().__init__(**kwargs)
        _settle_environment(session, self._endpoint)
        if given is None and kwargs.get("_transport") is None and keeps_alive(self._endpoint):
            client: Any = self._client  # the SDK's _OTLPHTTPClient: retries and deadlines stay its own
            client._transport = KeepAliveTransport(self._endpoint, client._transport, session)
        self._encoder = SpanEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return super().export(spans)
        try:
            data = self._encoder.encode(spans)
        except Exception:  # an unexpected span: the SDK's own encoder decides
            _logger.exception("fast span encoding failed; using the SDK's encoder")
            return super().export(spans)
        if 0 < self._max_request_size < len(data):
            return super().export(spans)  # the SDK drops and reports it
        with self._metrics.export_operation(len(spans)) as outcome:
            result = self._client.export(data)
            if not result.success:
                outcome.error = result.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


def _settle_environment(session: requests.Session, url: str) -> None:
    """What `requests` reads from the environment for each request to `url` (proxies and `no_proxy`, a
    `.netrc` login, `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` for https), read now and kept on the session, which
    then stops reading it: per POST that was a `stat` of ~/.netrc and of the CA bundle (a profile showed
    them on the export thread). The environment of a running exporter does not change."""
    if not session.trust_env:
        return
    session.proxies.update(requests.utils.get_environ_proxies(url))
    if session.auth is None:
        session.auth = requests.utils.get_netrc_auth(url)
    if session.verify is True and url.lower().startswith("https:"):
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
    if not url.lower().startswith("https:") and isinstance(session.verify, str):
        session.verify = True  # plain HTTP: no certificate is checked, so no CA path to stat per request
    session.trust_env = False


class GatewayBatchSpanProcessor(BatchSpanProcessor):
    """`BatchSpanProcessor` (queue, batch size, schedule, worker thread, export: all the SDK's) whose
    `on_end` queues a span without `BatchProcessor.emit`'s `os.getpid()` per span, a system call (several
    µs on this machine's VM). The process id is compared once, here; after a fork (the SDK re-initialises
    its processor in the child) and in every unusual case (shut down, queue full) the SDK's own `emit` runs.
    `tests/unit/observe/test_otel_export.py` pins `emit`'s source: a changed SDK fails it loudly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pid = os.getpid()

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if not (context and context.trace_flags.sampled):
            return
        batch: Any = self._batch_processor
        queue = batch._queue
        if batch._shutdown or batch._pid != self._pid or len(queue) >= batch._max_queue_size:
            batch.emit(span)
            return
        queue.appendleft(span)
        if len(queue) >= batch._max_export_batch_size and not batch._worker_awaken.is_set():
            batch._worker_awaken.set()
