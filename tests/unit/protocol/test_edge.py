"""gateway.protocol.edge with plain calls: the 2026-07-28 request ladder and the framing of a 2026-07-28
client's answer.

The end-to-end checks of the same rules, through the relay, are in tests/e2e/test_conformance_edge.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.protocol.edge import Edge, decode_header_value
from gateway.protocol.errors import CommandError, HeaderMismatch, InvalidRequestParams, UnsupportedProtocolVersion
from gateway.protocol.mcp import Reply
from gateway.protocol.wire import Codec, Headers

CODEC = Codec()
EDGE = Edge(CODEC)
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
HEADERS: Headers = {"MCP-Protocol-Version": ["2026-07-28"], "Mcp-Method": ["tools/call"], "Mcp-Name": ["echo"]}


def _check(params: dict[str, Any] | None, headers: Headers, method: str = "tools/call") -> bool:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    return EDGE.check(CODEC.message(json.dumps(body).encode()), headers)


def test_a_well_formed_2026_request_passes_and_handshake_era_ones_are_not_checked() -> None:
    """streamable-http 2026-07-28 "Server Validation"; 2025-11-25 requests carry none of it."""
    assert _check({"name": "echo", "_meta": ENVELOPE}, HEADERS) is True
    assert _check({"name": "echo"}, {"MCP-Protocol-Version": ["2025-11-25"], "Mcp-Method": ["other"]}) is False
    assert _check({"name": "echo"}, {}) is False
    notification = CODEC.message(b'{"jsonrpc":"2.0","method":"notifications/cancelled"}')
    assert EDGE.check(notification, {"MCP-Protocol-Version": ["2026-07-28"]}) is False


@pytest.mark.parametrize(
    ("params", "headers", "error"),
    [
        # basic/index "_meta": the envelope first (-32602) ...
        ({"name": "echo"}, HEADERS, InvalidRequestParams),
        (
            {"name": "echo", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
            HEADERS,
            InvalidRequestParams,
        ),
        (
            {"name": "echo", "_meta": {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": 5}},
            HEADERS,
            InvalidRequestParams,
        ),
        # ... then the headers against the body (-32020) ...
        ({"name": "echo", "_meta": ENVELOPE}, {**HEADERS, "Mcp-Method": ["tools/list"]}, HeaderMismatch),
        ({"name": "echo", "_meta": ENVELOPE}, {**HEADERS, "Mcp-Name": ["other"]}, HeaderMismatch),
        ({"name": "echo", "_meta": ENVELOPE}, {**HEADERS, "mcp-name": ["echo"]}, HeaderMismatch),  # twice
        ({"name": "echo", "_meta": ENVELOPE}, {"Mcp-Method": ["tools/call"], "Mcp-Name": ["echo"]}, HeaderMismatch),
        ({"name": "caf\u00e9", "_meta": ENVELOPE}, {**HEADERS, "Mcp-Name": ["caf\u00e9"]}, HeaderMismatch),
        # ... then the version (-32022): a client that disagrees with itself is told so first.
        (
            {"name": "echo", "_meta": {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}},
            HEADERS,
            HeaderMismatch,
        ),
    ],
)
def test_the_ladder_names_the_first_rule_broken(
    params: dict[str, Any], headers: Headers, error: type[CommandError]
) -> None:
    """basic/index "_meta", streamable-http "Server Validation", basic/versioning: one error per request."""
    with pytest.raises(error):
        _check(params, headers)


def test_an_unsupported_version_lists_the_supported_ones() -> None:
    """basic/versioning 2026-07-28 "Protocol Version Negotiation"."""
    meta = {**ENVELOPE, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    with pytest.raises(UnsupportedProtocolVersion) as raised:
        _check({"name": "echo", "_meta": meta}, {**HEADERS, "MCP-Protocol-Version": ["2099-01-01"]})
    assert (raised.value.code, raised.value.status) == (-32022, 400)
    data = json.loads(bytes(raised.value.data))  # type: ignore[arg-type]
    assert data["requested"] == "2099-01-01"
    assert data["supported"][0] == "2026-07-28"


@pytest.mark.parametrize(
    ("sent", "decoded"),
    [
        ("echo", "echo"),
        ("=?base64?aMOpbGxv?=", "h\u00e9llo"),
        ("=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=", "=?base64?literal?="),
        ("=?base64?!!?=", None),  # not base64
        ("=?base64?ZWNobx==?=", None),  # not canonical ("echo" with trailing bits set)
        ("=?base64?/w==?=", None),  # not UTF-8
        ("caf\u00e9", None),  # a plain value with a character a header may not carry
    ],
)
def test_header_values_decode_as_value_encoding_says(sent: str, decoded: str | None) -> None:
    """streamable-http 2026-07-28 "Value Encoding"."""
    assert decode_header_value(sent) == decoded


def test_a_2026_answer_carries_the_status_and_code_2026_defines() -> None:
    """basic/index 2026-07-28 "Error Codes" (-32002 is not emitted; -32602 replaces it) and streamable-http
    "Protocol Version Header" (404 with -32601 for an unknown method)."""
    missing = b'{"jsonrpc":"2.0","id":3,"error":{"code":-32002,"message":"Resource not found","data":{"uri":"a:b"}}}'
    recoded = EDGE.answer(Reply(200, missing))
    assert recoded.status == 200
    assert json.loads(recoded.body) == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"code": -32602, "message": "Resource not found", "data": {"uri": "a:b"}},
    }
    unknown = EDGE.answer(Reply(200, b'{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"nope"}}'))
    assert (unknown.status, json.loads(unknown.body)["id"]) == (404, "x")
    result = Reply(200, b'{"jsonrpc":"2.0","id":1,"result":{"error":{"code":-32601}}}')
    assert EDGE.answer(result) is result
