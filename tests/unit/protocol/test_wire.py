"""The wire layer with plain calls: fixtures, the response_timeout grammar, codecs, headers."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from msgspec import UNSET, Raw

from gateway.protocol.wire import (
    Codec,
    PolledCommand,
    TunnelFailure,
    TunnelResponsePayload,
    allowed_response_headers,
    parse_response_timeout,
    server_info_header,
    strip_hop_by_hop,
)
from tests.support.openapi import contract_path, validate, validate_failure

FIXTURES = contract_path().parent / "fixtures"
codec = Codec()


def test_poll_fixture_decodes_both_command_types() -> None:
    body = (FIXTURES / "poll_command_envelope.json").read_bytes()
    validate("PolledCommandList", json.loads(body))
    commands = [codec.command(raw) for raw in codec.batch(body).commands]
    first, second = commands
    assert first.request_id == "cmd_fixture_jsonrpc"
    assert first.shard_token == "fixture:jsonrpc"
    assert first.channel == "harpoon"
    assert first.headers == {"x-test": ["alpha"]}
    assert first.response_timeout is None
    message = codec.message(first.jsonrpc)  # type: ignore[arg-type]
    assert message.method == "tools/list"
    assert bytes(message.id) == b'"rpc-1"'  # type: ignore[arg-type]
    assert json.loads(bytes(message.params)) == {"needle": "hay"}  # type: ignore[arg-type]
    assert second.command_type == "session_termination"
    assert second.jsonrpc is UNSET


def test_notify_fixture_decodes_and_round_trips() -> None:
    body = (FIXTURES / "jsonrpc_notify_response.json").read_bytes()
    payload = codec.payload(body)
    assert payload.resp_type == "jsonrpc_notify"
    assert not payload.is_terminal
    assert json.loads(codec.encode(payload)) == json.loads(body)


def test_unknown_fields_are_ignored_and_unknown_command_types_decode() -> None:
    raw = b'{"request_id":"r","shard_token":"s","command_type":"future_thing","created_at":"x","novel":{"a":1}}'
    command = codec.command(raw)
    assert command.command_type == "future_thing"
    assert command.channel == "main"


def test_command_without_type_is_jsonrpc() -> None:
    command = codec.command(b'{"request_id":"r","shard_token":"s","jsonrpc":{"jsonrpc":"2.0","method":"ping"}}')
    assert command.command_type == "jsonrpc"


def test_a_malformed_command_does_not_spoil_the_batch() -> None:
    batch = codec.batch(b'{"commands":[{"shard_token":"no id"},{"request_id":"ok","shard_token":"s"}]}')
    with pytest.raises(msgspec.ValidationError):
        codec.command(batch.commands[0])
    assert codec.command(batch.commands[1]).request_id == "ok"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("4500ms", 4.5),
        ("1m", 60.0),
        ("2h", 7200.0),
        ("250us", 0.00025),
        ("7ns", 7e-9),
        ("0s", 0.0),
        ("0ms", 0.0),
        ("9223372036s", 9223372036.0),
    ],
)
def test_response_timeout_valid(value: str, seconds: float) -> None:
    assert parse_response_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "4.5s",
        "-1s",
        "1m30s",
        " 1s",
        "1s ",
        "30",
        "1e3s",
        "30d",
        "s",
        "\u0661s",
        "9223372037s",
        "99999999999999h",
    ],
)
def test_response_timeout_fails_open(value: str | None) -> None:
    assert parse_response_timeout(value) is None


def test_payload_omits_unset_fields_and_keeps_the_type() -> None:
    payload = TunnelResponsePayload(request_id="r", resp_code=200, resp_type="notify_ack", channel="main")
    encoded = json.loads(codec.encode(payload))
    assert encoded == {"request_id": "r", "resp_code": 200, "resp_type": "notify_ack", "channel": "main"}
    validate("TunnelResponsePayload", encoded)


def test_failure_response_carries_versioned_provenance() -> None:
    failure = TunnelFailure(source="target_http", upstream_response_received=True, upstream_status=503)
    body = json.loads(codec.failure_response(Raw(b'"abc"'), "Service Unavailable", failure))
    assert body["id"] == "abc"
    assert body["error"]["code"] == -32603
    assert body["error"]["data"]["tunnel_failure"] == {
        "version": 1,
        "source": "target_http",
        "upstream_response_received": True,
        "upstream_status": 503,
    }
    validate_failure(body["error"]["data"]["tunnel_failure"])


def test_response_reencoded_under_another_id_keeps_the_payload() -> None:
    message = codec.message(b'{"jsonrpc":"2.0","id":17,"result":{"x":[1,2,{"y":"z"}]}}')
    assert json.loads(codec.response(Raw(b'"client-1"'), message)) == {
        "jsonrpc": "2.0",
        "id": "client-1",
        "result": {"x": [1, 2, {"y": "z"}]},
    }
    error = codec.message(b'{"jsonrpc":"2.0","id":3,"error":{"code":-32000,"message":"no","data":[1]}}')
    assert json.loads(codec.response(Raw(b"9"), error))["error"] == {"code": -32000, "message": "no", "data": [1]}


def test_message_classification() -> None:
    assert codec.message(b'{"jsonrpc":"2.0","id":1,"method":"x"}').is_request
    assert codec.message(b'{"jsonrpc":"2.0","method":"x"}').is_notification
    assert codec.message(b'{"jsonrpc":"2.0","id":1,"result":{}}').is_response
    assert codec.message(b'{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}').is_response


def test_server_info_header_shape_and_limits() -> None:
    value = server_info_header({"main": True, "docs": False})
    assert value == '{"version":1,"channels":[{"name":"docs"},{"name":"main","proc_affinity":true}]}'
    assert server_info_header({f"c{i}": False for i in range(33)}) is None
    assert server_info_header({"x" * 4000: True, "y" * 100: True}) is None


def test_hop_by_hop_headers_and_the_ones_connection_names_are_dropped() -> None:
    headers = {
        "Connection": ["keep-alive, X-Private"],
        "X-Private": ["secret"],
        "Keep-Alive": ["timeout=5"],
        "Transfer-Encoding": ["chunked"],
        "Mcp-Session-Id": ["abc"],
        "X-Multi": ["a", "b"],
    }
    assert strip_hop_by_hop(headers) == {"Mcp-Session-Id": ["abc"], "X-Multi": ["a", "b"]}


def test_response_header_allowlist_is_canonical_and_multi_valued() -> None:
    headers = {
        "content-type": ["application/json"],
        "mcp-session-id": ["s1"],
        "WWW-Authenticate": ['Bearer realm="a"', 'Basic realm="b"'],
        "Set-Cookie": ["x=1"],
        "Server": ["uvicorn"],
    }
    assert allowed_response_headers(headers) == {
        "Content-Type": ["application/json"],
        "Mcp-Session-Id": ["s1"],
        "WWW-Authenticate": ['Bearer realm="a"', 'Basic realm="b"'],
    }
    assert allowed_response_headers({"Connection": ["Mcp-Session-Id"], "Mcp-Session-Id": ["s"]}) == {}


def test_polled_command_structs_validate_against_the_contract() -> None:
    command = PolledCommand(
        request_id="r", shard_token="s", created_at="2026-01-01T00:00:00Z", jsonrpc=Raw(b'{"jsonrpc":"2.0"}')
    )
    validate("PolledCommandList", {"commands": [json.loads(codec.encode(command))]})


def test_fixture_paths_exist() -> None:
    assert Path(FIXTURES).is_dir()
