"""`Payloads.inject_decoded`: the trace context spliced into a client's message without decoding and
re-encoding it gives what `inject_message` gives (the same members in the same order; for a compact body
the same bytes), and falls back to `inject_message` wherever splicing could differ."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.tracecontext import Payloads
from gateway.protocol.wire import Codec
from tests.support.fuzz_budget import FUZZ

CARRIER = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
WITH_STATE = {**CARRIER, "tracestate": "vendor=v1,other=x"}


def _pairs(data: bytes) -> Any:
    """The JSON with every object as its list of (name, value) pairs: order and duplicates count."""
    return json.loads(data, object_pairs_hook=list)


def _both(body: bytes, carrier: dict[str, str]) -> tuple[bytes, bytes, bool]:
    """(inject_decoded's result, inject_message's result, whether the splice was used)."""
    payloads = Payloads()
    message = Codec().message(body)
    spliced = payloads._splice(body, message.params, carrier) if message.method is not msgspec.UNSET else None
    return payloads.inject_decoded(body, message, carrier), payloads.inject_message(body, carrier), spliced is not None


COMPACT = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}',
    b'{"jsonrpc":"2.0","id":"a-1","method":"tools/list"}',
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
    b'{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///x"}}',
    b'{"jsonrpc":"2.0","id":3,"method":"ping","params":{}}',
    b'{"params":{"name":"first"},"jsonrpc":"2.0","id":4,"method":"tools/call"}',
    b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"n","arguments":{"nested":{"deep":[1,{"a":{}}]}}}}',
    b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"quote\\"s","arguments":{"t":"line\\nbreak"}}}',
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"caf\xc3\xa9","arguments":{"meta":"not _ meta"}}}',
    b'{"jsonrpc":"2.0","id":8,"method":"m","x":"\\"params\\""}',  # an escaped quote: not the member name
]


@pytest.mark.parametrize("body", COMPACT)
@pytest.mark.parametrize("carrier", [CARRIER, WITH_STATE])
def test_a_compact_message_gets_the_same_bytes_spliced(body: bytes, carrier: dict[str, str]) -> None:
    spliced, reencoded, used = _both(body, carrier)
    assert used, "these bodies are spliced, not re-encoded"
    assert spliced == reencoded
    assert json.loads(spliced)["params"]["_meta"] == carrier


SPACED = [
    b'{ "jsonrpc" : "2.0" , "id" : 1 , "method" : "tools/call" , "params" : { "name" : "echo" } }',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{ }}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}\n',
    b'{\n  "jsonrpc": "2.0",\n  "id": 1,\n  "method": "tools/list"\n}\r\n',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":1}   }}',
]


@pytest.mark.parametrize("body", SPACED)
def test_whitespace_is_kept_and_the_json_is_the_same(body: bytes) -> None:
    spliced, reencoded, used = _both(body, WITH_STATE)
    assert used
    assert _pairs(spliced) == _pairs(reencoded)


FALLBACKS = {
    "params already has _meta": b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"_meta":{"progressToken":7}}}',
    "_meta spelled with an escape": b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"\\u005fmeta":{"progressToken":7}}}',  # noqa: E501
    "an escape anywhere in params": b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"name":"caf\\u00e9"}}',
    "params twice": b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1},"params":{"b":2}}',
    "params text found twice": b'{"jsonrpc":"2.0","id":1,"method":"m","x":{"a":1},"params":{"a":1}}',
    "params text inside a string": b'{"jsonrpc":"2.0","id":"{}","method":"m","params":{}}',
    "no params, but the word in a string": b'{"jsonrpc":"2.0","id":"params","method":"m"}',
    "params an array": b'{"jsonrpc":"2.0","id":1,"method":"m","params":[1,2]}',
    "params null": b'{"jsonrpc":"2.0","id":1,"method":"m","params":null}',
    "params a string": b'{"jsonrpc":"2.0","id":1,"method":"m","params":"{}"}',
}


@pytest.mark.parametrize("body", list(FALLBACKS.values()), ids=list(FALLBACKS))
def test_what_splicing_could_get_wrong_is_re_encoded(body: bytes) -> None:
    spliced, reencoded, used = _both(body, CARRIER)
    assert not used, "the splice must refuse this body"
    assert spliced == reencoded


def test_the_client_meta_is_kept_through_the_fallback() -> None:
    body = FALLBACKS["_meta spelled with an escape"]
    out = json.loads(_both(body, CARRIER)[0])
    assert out["params"]["_meta"] == {"progressToken": 7, **CARRIER}


def test_a_response_is_never_touched() -> None:
    payloads = Payloads()
    body = b'{"jsonrpc":"2.0","id":1,"result":{"params":{}}}'
    assert payloads.inject_decoded(body, Codec().message(body), CARRIER) is body


# Property: any JSON-RPC request or notification, written compactly or with spaces, with keys and
# strings that tempt the splice (`params`, `_meta`, braces, escapes), gives the same JSON both ways.

_KEYS = st.sampled_from(["name", "arguments", "uri", "_meta", "params", "meta", "x", "\\u005fmeta", "{}", ""])
_STRINGS = st.sampled_from(["", "params", "_meta", "{}", '{"a":1}', "\\u0041", "é", "\\n", " "])
_SCALARS = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _STRINGS
_SPACE = st.sampled_from(["", " ", "\n", "\t", "  \r\n "])


def _object(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    member = st.tuples(_KEYS, values, _SPACE)
    return st.lists(member, max_size=4, unique_by=lambda m: m[0]).map(
        lambda members: "{" + ",".join(f'{s}"{k}"{s}:{s}{v}{s}' for k, v, s in members) + "}"
    )


_VALUES = st.recursive(
    _SCALARS.map(lambda v: f'"{v}"' if isinstance(v, str) else json.dumps(v)),
    lambda inner: _object(inner) | st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]"),
    max_leaves=8,
)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    members = [("jsonrpc", '"2.0"'), ("method", json.dumps(draw(st.sampled_from(["tools/call", "ping", "m"]))))]
    if draw(st.booleans()):
        members.append(("id", draw(st.sampled_from(["1", '"params"', '"{}"', '"a-1"']))))
    params = draw(st.none() | _object(_VALUES) | _VALUES)
    if params is not None:
        members.insert(draw(st.integers(0, len(members))), ("params", params))
    if draw(st.booleans()):
        members.append(("extra", draw(_VALUES)))
    space = draw(_SPACE)
    return ("{" + ",".join(f"{space}{json.dumps(k)}{space}:{space}{v}" for k, v in members) + space + "}").encode()


@FUZZ
@given(_messages(), st.sampled_from([CARRIER, WITH_STATE]))
def test_any_message_gets_the_same_json_either_way(body: bytes, carrier: dict[str, str]) -> None:
    try:
        json.loads(body)
    except ValueError:
        return  # a value the strategy wrote is not JSON (an escape it broke); the front door refuses those
    spliced, reencoded, _ = _both(body, carrier)
    assert _pairs(spliced) == _pairs(reencoded)
