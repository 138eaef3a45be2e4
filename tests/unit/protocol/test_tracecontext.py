"""gateway.protocol.tracecontext with plain calls: trace context into `params._meta` and headers, outcomes read
from answers."""

from __future__ import annotations

import json

from msgspec import UNSET, Raw

from gateway.protocol.tracecontext import Payloads, request_id_text, with_trace_headers


def test_trace_context_in_params_meta() -> None:
    payloads = Payloads()
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    injected = payloads.inject_params(Raw(b'{"name":"t","_meta":{"traceparent":"old","progressToken":7}}'), carrier)
    assert injected is not None
    assert json.loads(bytes(injected)) == {"name": "t", "_meta": {"progressToken": 7, **carrier}}
    fresh = payloads.inject_params(UNSET, carrier)
    assert fresh is not None
    assert json.loads(bytes(fresh)) == {"_meta": carrier}
    assert payloads.inject_params(Raw(b"[1,2]"), carrier) is None, "positional params get no _meta"
    body = b'{"jsonrpc":"2.0","id":"a-1","method":"tools/list"}'
    assert json.loads(payloads.inject_message(body, carrier)) == {
        "jsonrpc": "2.0",
        "id": "a-1",
        "method": "tools/list",
        "params": {"_meta": carrier},
    }
    response = b'{"jsonrpc":"2.0","id":1,"result":{}}'
    assert payloads.inject_message(response, carrier) is response
    assert payloads.params(Raw(b'{"_meta":{"traceparent":"x"},"name":"n"}')).meta.traceparent == "x"  # type: ignore[union-attr]
    assert payloads.params(Raw(b'{"_meta":5}')).name is None, "a bad _meta is ignored, not fatal"
    headers = with_trace_headers({"TraceParent": ["old"], "X": ["y"]}, carrier)
    assert headers == {"X": ["y"], "traceparent": [carrier["traceparent"]]}
    assert request_id_text(Raw(b'"abc"')) == "abc"
    assert request_id_text(Raw(b"42")) == "42"


def test_outcome_detection() -> None:
    payloads = Payloads()
    error = payloads.outcome(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad"}}', False)
    assert error.error is not None
    assert error.error.code == -32602
    tool_error = b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError": true}}'
    assert payloads.outcome(tool_error, True).tool_error
    assert not payloads.outcome(tool_error, False).tool_error, "isError means something only on tools/call"
    assert payloads.outcome(b'{"jsonrpc":"2.0","id":1,"result":{"text":"error"}}', True).error is None
