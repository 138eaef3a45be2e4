"""Property-based fuzzing of the sans-IO core with hypothesis (settings and budgets: tests/support/fuzz_budget.py).

Targets and the property each must keep, whatever the input:
- wire: a poll body and each command decode or raise `msgspec.DecodeError`, nothing else; a
  command with a usable envelope decodes on its own, whatever its neighbours or its other fields
  hold (depth ~1,000+, lone surrogate escapes, wrong types);
- `response_timeout`: the v1 grammar exactly, anything else "no deadline"; sub-ms deadlines expired;
- era bridging: any `params` / `_meta` / result shape is translated or refused with -32602;
- routing.yaml: any document loads or raises `ConfigError` naming the file, a key and what was expected;
- SSE and stdio framing: any split of a byte stream gives what the whole stream gives.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec import UNSET, Raw

from gateway.config import routing as routing_config
from gateway.protocol import jsonscan
from gateway.protocol.eras import EMPTY_OBJECT, META, PROTOCOL_VERSION_KEY, RESERVED_PREFIX, Bridge
from gateway.protocol.errors import ConfigError, InvalidRequestParams
from gateway.protocol.sse import SseError, SseParser
from gateway.protocol.wire import Codec, PolledCommand, expired, parse_response_timeout
from gateway.upstream.framing import LineDecoder
from tests.support.fuzz_budget import FUZZ, FuzzReport, timeout_s

pytestmark = pytest.mark.timeout(timeout_s(240))


CODEC = Codec()
BRIDGE = Bridge(CODEC)

# --------------------------------------------------------------------------- strategies

LONE_SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\udbff\u0041"])
TEXT = st.text(max_size=12) | LONE_SURROGATES
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | TEXT
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)
"""Any JSON value, lone surrogates included (RFC 8259's grammar allows them; msgspec refuses them)."""


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def deep(draw: st.DrawFn, inner: st.SearchStrategy[bytes], low: int = 900, high: int = 3000) -> bytes:
    """A value nested `low`..`high` levels in arrays or objects."""
    depth = draw(st.integers(low, high))
    value = draw(inner)
    if draw(st.booleans()):
        return b"[" * depth + value + b"]" * depth
    return b'{"k":' * depth + value + b"}" * depth


RAW_VALUES = (
    VALUES.map(encode)
    | deep(VALUES.map(encode))
    | st.sampled_from([b"1e400", b"-0", b"123456789012345678901234567890"])
)
"""Raw JSON text of any value, deep or not (always grammatical JSON)."""
GOOD_STRINGS = st.text(st.characters(codec="utf-8"), max_size=20).map(encode)
JSONRPC = st.builds(
    lambda id, method, params: (
        encode({"jsonrpc": "2.0", "id": id, "method": method})[:-1] + b',"params":' + params + b"}"
    ),
    st.integers(0, 10**6) | st.text(max_size=8),
    st.sampled_from(["ping", "tools/list", "tools/call", "initialize", "x/y"]),
    RAW_VALUES,
)


@st.composite
def commands(draw: st.DrawFn) -> tuple[bytes, dict[str, Any] | None]:
    """(raw command, its expected envelope when it has a usable one, else None)."""
    usable = draw(st.booleans())
    fields: dict[str, bytes] = {}
    expected: dict[str, Any] | None = None
    if usable:
        request_id, shard = draw(GOOD_STRINGS), draw(GOOD_STRINGS)
        fields["request_id"], fields["shard_token"] = request_id, shard
        expected = {"request_id": json.loads(request_id), "shard_token": json.loads(shard)}
        if draw(st.booleans()):
            fields["channel"] = draw(GOOD_STRINGS)
            expected["channel"] = json.loads(fields["channel"])
    else:
        for name in draw(st.sets(st.sampled_from(["request_id", "shard_token", "channel", "command_type"]))):
            fields[name] = draw(RAW_VALUES)
    for name in draw(st.sets(st.sampled_from(["response_timeout", "headers", "created_at", "extra", "jsonrpc"]))):
        fields[name] = draw(RAW_VALUES | JSONRPC)
    order = draw(st.permutations(sorted(fields)))
    body = b"{" + b",".join(b'"%s":%s' % (name.encode(), fields[name]) for name in order) + b"}"
    if not usable and set(fields) >= {"request_id", "shard_token"}:
        try:  # the junk happened to be a usable envelope after all: say so
            json_fields = {
                k: json.loads(fields[k])
                for k in ("request_id", "shard_token", "channel", "command_type")
                if k in fields
            }
        except (ValueError, RecursionError):
            json_fields = {}
        if all(isinstance(v, str) and not _has_surrogate(v) for v in json_fields.values()) and json_fields:
            expected = {k: v for k, v in json_fields.items() if k != "command_type"}
    return body, expected


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


# --------------------------------------------------------------------------- wire


@FUZZ
@given(st.lists(commands(), min_size=1, max_size=8))
def test_each_command_decodes_on_its_own(
    fuzz_report: FuzzReport, batch: list[tuple[bytes, dict[str, Any] | None]]
) -> None:
    body = b'{"commands":[' + b",".join(raw for raw, _ in batch) + b"]}"
    commands = CODEC.batch(body).commands
    assert len(commands) == len(batch)
    for raw, (_, expected) in zip(commands, batch, strict=True):
        try:
            command: PolledCommand | None = CODEC.command(raw)
        except msgspec.DecodeError:
            command = None
        if expected is None:
            assert command is None or command.request_id, "a command without a usable envelope was accepted"
            fuzz_report.add("wire", "unanswerable commands")
            continue
        assert command is not None, f"a command with a usable envelope was dropped: {bytes(raw)[:200]!r}"
        assert {k: getattr(command, k) for k in expected} == expected
        assert command.response_timeout is None or isinstance(command.response_timeout, str)
        if command.jsonrpc is not UNSET:
            msgspec.json.decode(command.jsonrpc, type=Raw)  # what is forwarded is JSON msgspec reads
        fuzz_report.add("wire", "answerable commands")


@FUZZ
@given(st.binary(max_size=300) | RAW_VALUES | st.builds(lambda v: b'{"commands":' + v + b"}", RAW_VALUES))
def test_any_poll_body_decodes_or_is_refused(fuzz_report: FuzzReport, body: bytes) -> None:
    fuzz_report.add("wire", "poll bodies")
    try:
        raws = CODEC.batch(body).commands
    except msgspec.DecodeError:
        return
    for raw in raws:
        with contextlib.suppress(msgspec.DecodeError):
            CODEC.command(raw)


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, without recursion (a scalar is 0)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, list | dict):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


@FUZZ
@given(VALUES.filter(lambda v: not _surrogates_in(v)), st.integers(0, 400), st.integers(1, 200))
def test_nesting_depth_is_measured_exactly(fuzz_report: FuzzReport, value: Any, wrap: int, limit: int) -> None:
    """The depth bound on client messages: strings full of brackets do not count, every level does."""
    text = b'{"s":"[[{{\\"}}","v":' * wrap + encode(value) + b"}" * wrap
    depth = wrap + _depth(value)
    assert jsonscan.nesting_exceeds(text, limit) == (depth > limit)
    fuzz_report.add("jsonscan", "depths measured")


# --------------------------------------------------------------------------- response_timeout

UNITS = {"ns": 1, "us": 1_000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


@FUZZ
@given(st.integers(0, 10**20), st.sampled_from(sorted(UNITS)))
def test_the_timeout_grammar(digits: int, unit: str) -> None:
    nanos = digits * UNITS[unit]
    expected = nanos / 1e9 if nanos <= 2**63 - 1 else None
    assert parse_response_timeout(f"{digits}{unit}") == expected
    assert parse_response_timeout(f"{digits:03d}{unit}") == expected  # leading zeros are digits too
    if expected is not None and nanos < 10**6:
        assert expired(100.0 + expected, 100.0), "a sub-millisecond deadline did not count as passed"


@FUZZ
@given(VALUES | st.text(alphabet="0123456789nsumh .+-e\t", max_size=8))
def test_anything_else_is_no_deadline(fuzz_report: FuzzReport, value: Any) -> None:
    fuzz_report.add("response_timeout", "values")
    grammatical = isinstance(value, str) and re.fullmatch(r"[0-9]+(ns|us|ms|s|m|h)", value) is not None
    parsed = parse_response_timeout(value)
    if not grammatical:
        assert parsed is None
    else:
        assert parsed is None or parsed >= 0.0


# --------------------------------------------------------------------------- era bridging

PARAMS = VALUES.filter(lambda v: not _surrogates_in(v)).map(encode) | deep(st.just(b"1"), 10, 400)


def _surrogates_in(value: Any) -> bool:
    return "\\ud" in json.dumps(value)


@FUZZ
@given(PARAMS, st.none() | PARAMS)
def test_any_params_are_bridged_or_refused_with_32602(
    fuzz_report: FuzzReport, params: bytes, meta: bytes | None
) -> None:
    """MCP 2025-11-25 basic/index ("Requests": params is an object) and the 2026-07-28 `_meta` envelope."""
    if meta is not None and params.startswith(b"{"):
        params = b'{"_meta":' + meta + b"," + params[1:] if params != b"{}" else b'{"_meta":' + meta + b"}"
    raw = Raw(params)
    refused: InvalidRequestParams | None = None
    try:
        modern = BRIDGE.modern_params(raw, EMPTY_OBJECT, BRIDGE.client_info)
    except InvalidRequestParams as exc:
        refused = exc
    if refused is not None:
        assert refused.code == -32602
        fuzz_report.add("eras", "params refused -32602")
    else:
        assert PROTOCOL_VERSION_KEY in msgspec.json.decode(modern)[META]
        fuzz_report.add("eras", "params bridged")
    legacy = BRIDGE.legacy_params(raw)
    if legacy is not raw and legacy is not UNSET:
        stripped = msgspec.json.decode(legacy).get(META, {})
        assert not any(key.startswith(RESERVED_PREFIX) for key in stripped)
    BRIDGE.client_era(raw, {})
    BRIDGE.modern_result("tools/list", raw, EMPTY_OBJECT)
    BRIDGE.legacy_result(raw)
    BRIDGE.target_name("tools/call", raw)
    BRIDGE.requested_version(raw)
    BRIDGE.client_capabilities(raw)


# --------------------------------------------------------------------------- routing.yaml

KEYS = st.sampled_from(
    [
        "servers",
        "channels",
        "gateway",
        "relay",
        "control_plane",
        "telemetry",
        "ops",
        "limits",
        "logging",
        "routes",
        "stdio",
        "http",
        "url",
        "command",
        "args",
        "proxy",
        "max_inflight",
        "listen",
        "session",
        "x",
    ]
)
YAML_TEXT = st.text(alphabet=st.sampled_from(list("abc:-[]{}&*!|>#'\"\n\t ,?%@`0123456789.~")), max_size=80)
DOCUMENT = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS | TEXT, inner, max_size=4), max_leaves=16
)


@st.composite
def routing_documents(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(YAML_TEXT).encode("utf-8", "surrogatepass")
    if choice == 1:
        return draw(st.binary(max_size=120))
    base: dict[str, Any] = {
        "servers": {"a": {"stdio": {"command": "x"}}, "b": {"http": {"url": "http://127.0.0.1:1/mcp"}}},
        "channels": {"main": ["a"], "web": ["b"]},
    }
    if choice == 4:  # a valid document with one valid setting changed
        base["gateway"] = {"max_inflight": draw(st.integers(-2, 10**6)), "polls_in_flight": draw(st.integers(0, 20))}
        return json.dumps(base).encode()
    path = draw(st.lists(KEYS | st.sampled_from(["a", "b", "main", "web"]), min_size=1, max_size=4))
    node: Any = base
    for key in path[:-1]:
        if not isinstance(node, dict):
            break
        node = node.setdefault(key, {})
    if isinstance(node, dict):
        node[path[-1]] = draw(DOCUMENT)
    text = json.dumps(base, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(routing_documents())
def test_any_routing_document_loads_or_names_file_key_and_expectation(fuzz_report: FuzzReport, data: bytes) -> None:
    refused: ConfigError | None = None
    try:
        routing_config.parse(data, "routing.yaml")
    except ConfigError as exc:
        refused = exc
    if refused is None:
        fuzz_report.add("routing.yaml", "loaded")
    else:
        assert (refused.file, bool(refused.key), bool(refused.expected)) == ("routing.yaml", True, True)
        fuzz_report.add("routing.yaml", "refused")


# --------------------------------------------------------------------------- SSE and stdio framing

SSE_LINES = st.lists(
    st.sampled_from(
        [
            b"data: ",
            b"data:",
            b"event: x",
            b"id: 7",
            b"id: \x00",
            b"retry: 10",
            b"retry: x",
            b": c",
            b"",
            b"\xef\xbb\xbf",
        ]
    ).flatmap(lambda head: st.binary(max_size=12).map(lambda tail: head + tail))
    | st.just(b""),
    max_size=20,
)


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    return st.lists(st.integers(0, len(data)), max_size=8).map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True)]
    )


@st.composite
def streams(draw: st.DrawFn, lines: st.SearchStrategy[list[bytes]], ends: list[bytes]) -> tuple[bytes, list[bytes]]:
    stream = b"".join(line + draw(st.sampled_from(ends)) for line in draw(lines))
    return stream, draw(splits(stream))


@FUZZ
@given(streams(SSE_LINES, [b"\n", b"\r\n", b"\r"]))
def test_sse_split_anywhere_parses_like_whole(fuzz_report: FuzzReport, case: tuple[bytes, list[bytes]]) -> None:
    """WHATWG HTML §9.2.6: a stream's events do not depend on how its bytes were chunked."""
    stream, chunks = case
    whole = SseParser()
    expected = whole.feed(stream)
    parser = SseParser()
    got = [event for chunk in chunks for event in parser.feed(chunk)]
    assert got == expected
    assert parser.pending == whole.pending
    bounded = SseParser(max_event_bytes=16)
    try:
        for chunk in chunks:
            bounded.feed(chunk)
    except SseError:
        pass
    fuzz_report.add("sse", "events", len(expected))
    fuzz_report.add("sse", "streams")


FRAMES = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")) | st.just(b"x" * 70), max_size=12)


@FUZZ
@given(streams(FRAMES, [b"\n", b"\r\n"]), st.integers(8, 64))
def test_stdio_lines_split_anywhere_frame_like_whole(
    fuzz_report: FuzzReport, case: tuple[bytes, list[bytes]], limit: int
) -> None:
    stream, chunks = case
    expected = list(LineDecoder(limit).feed(stream))
    decoder = LineDecoder(limit)
    assert [item for chunk in chunks for item in decoder.feed(chunk)] == expected
    assert all(isinstance(item, bytes) and len(item) <= limit for item in expected if not hasattr(item, "length"))
    fuzz_report.add("stdio framing", "lines", len(expected))
