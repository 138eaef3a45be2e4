"""Sans-IO pieces with plain calls: stdio framing, id tables, era bridging, routing.yaml."""

from __future__ import annotations

import json

import pytest
from msgspec import UNSET, Raw

from gateway.config import routing as config
from gateway.protocol.eras import Bridge
from gateway.protocol.errors import ConfigError
from gateway.protocol.mcp import Era
from gateway.protocol.wire import Codec
from gateway.upstream.framing import IdTable, LineDecoder, Oversized

bridge = Bridge(Codec())
STREAM = b'{"a":1}\n{"b":"\xc3\xa9"}\r\n\n   \n{"c":[1,2,3]}\n'
LINES = [b'{"a":1}', b'{"b":"\xc3\xa9"}', b'{"c":[1,2,3]}']


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_line_decoder_handles_every_split_point(cut: int) -> None:
    decoder = LineDecoder(limit=1024)
    out = list(decoder.feed(STREAM[:cut])) + list(decoder.feed(STREAM[cut:]))
    assert out == LINES


def test_line_decoder_byte_at_a_time() -> None:
    decoder = LineDecoder(limit=1024)
    out = [line for i in range(len(STREAM)) for line in decoder.feed(STREAM[i : i + 1])]
    assert out == LINES


def test_oversized_line_is_skipped_and_reported_once() -> None:
    decoder = LineDecoder(limit=10)
    out = list(decoder.feed(b"x" * 8)) + list(decoder.feed(b"y" * 8)) + list(decoder.feed(b'zz\n{"ok":1}\n'))
    assert out == [Oversized(18, b"x" * 8 + b"y" * 8 + b"zz"), b'{"ok":1}']  # the line's first bytes, however split


@pytest.mark.parametrize("cut", [1, 20, 40, 200])
@pytest.mark.parametrize(
    ("line", "id"),
    [
        (b'{"jsonrpc":"2.0","id":17,"result":{"content":"%s"}}', 17),
        (b'{ "id" : 5 , "jsonrpc" : "2.0" , "error" : {"message":"%s"}}', 5),
        (b'{"jsonrpc":"2.0","id":"srv-1","result":{"content":"%s"}}', None),  # not an id the gateway issued
        (b'{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":"%s"}', None),  # a request
        (b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"%s"}}', None),
        (b'{"result":{"content":"%s"},"id":9,"jsonrpc":"2.0"}', None),  # the id comes too late to be seen
    ],
)
def test_an_oversized_response_shows_the_id_it_answers(line: bytes, id: int | None, cut: int) -> None:
    """A stdio server's answer too large to relay still fails the call it answers (tests/test_upstream_contract.py)."""
    data = line % (b"x" * 1000) + b"\n"
    decoder = LineDecoder(limit=100)
    out = list(decoder.feed(data[:cut])) + list(decoder.feed(data[cut:]))
    assert len(out) == 1
    assert isinstance(out[0], Oversized)
    assert out[0].length == len(data) - 1
    assert out[0].head == data[:128]
    assert out[0].response_id == id


def test_id_table_never_reuses_ids_and_maps_tokens() -> None:
    table: IdTable[str] = IdTable()
    first = table.issue("a")
    token = table.issue_token("a", b'"client-token"')
    table.retire(first, token)
    second = table.issue("b")
    assert second > first
    assert table.owner(first) is None
    assert table.token_owner(token) is None
    assert table.owner(second) == "b"
    assert table.clear() == ["b"]
    assert len(table) == 0


def test_client_era_from_header_or_envelope() -> None:
    modern = bridge.discover_params()
    assert bridge.client_era(modern, {}) is Era.MODERN
    assert bridge.client_era(UNSET, {"mcp-protocol-version": ["2026-07-28"]}) is Era.MODERN
    assert bridge.client_era(Raw(b'{"_meta":{"progressToken":1}}'), {}) is Era.LEGACY
    # The key inside an argument value is not an envelope.
    tricky = Raw(b'{"arguments":{"text":"io.modelcontextprotocol/protocolVersion"}}')
    assert bridge.client_era(tricky, {}) is Era.LEGACY


def test_legacy_params_strip_only_reserved_meta() -> None:
    params = Raw(
        b'{"name":"t","_meta":{"progressToken":5,"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
        b'"io.modelcontextprotocol/clientCapabilities":{}}}'
    )
    stripped = bridge.legacy_params(params)
    assert json.loads(bytes(stripped)) == {"name": "t", "_meta": {"progressToken": 5}}  # type: ignore[arg-type]
    only_envelope = bridge.legacy_params(bridge.discover_params())
    assert json.loads(bytes(only_envelope)) == {}  # type: ignore[arg-type]


def test_modern_params_add_the_envelope() -> None:
    params = bridge.modern_params(Raw(b'{"cursor":"c"}'), Raw(b'{"sampling":{}}'), bridge.client_info)
    meta = json.loads(bytes(params))["_meta"]
    assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert meta["io.modelcontextprotocol/clientCapabilities"] == {"sampling": {}}
    assert meta["io.modelcontextprotocol/clientInfo"]["name"] == "mcp-tunnel-gateway"


def test_results_translate_both_ways() -> None:
    legacy = Raw(b'{"tools":[],"nextCursor":"n"}')
    modern = json.loads(bytes(bridge.modern_result("tools/list", legacy, Raw(b'{"name":"s","version":"1"}'))))
    assert modern["resultType"] == "complete"
    assert modern["ttlMs"] == 0
    assert modern["cacheScope"] == "private"
    assert modern["_meta"]["io.modelcontextprotocol/serverInfo"] == {"name": "s", "version": "1"}
    call = json.loads(bytes(bridge.modern_result("tools/call", Raw(b'{"content":[]}'), Raw(b"{}"))))
    assert "ttlMs" not in call
    back = json.loads(bytes(bridge.legacy_result(Raw(json.dumps(modern).encode()))))
    assert back == {"tools": [], "nextCursor": "n"}


def test_local_answers() -> None:
    info = bridge.info_from_initialize(
        Raw(b'{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"s","version":"2"}}')
    )
    assert info.era is Era.LEGACY
    init = json.loads(bytes(bridge.initialize_result(info, "2025-03-26")))
    assert init == {
        "protocolVersion": "2025-03-26",
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "s", "version": "2"},
    }
    discover = json.loads(bytes(bridge.discover_result(info)))
    assert discover["supportedVersions"] == ["2026-07-28"]
    assert discover["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "s"
    assert bridge.requested_version(Raw(b'{"protocolVersion":"1999-01-01"}')) == "2025-11-25"
    assert bridge.requested_version(Raw(b'{"protocolVersion":"2024-11-05"}')) == "2024-11-05"


def test_discover_result_without_modern_versions_is_not_modern() -> None:
    assert bridge.info_from_discover(Raw(b'{"supportedVersions":["2025-11-25"]}')) is None
    assert bridge.info_from_discover(Raw(b'"garbage"')) is None


GOOD = """
servers:
  clock: {stdio: {command: python3, args: [-m, x]}}
  docs: {http: {url: 'http://127.0.0.1:8080/mcp', headers: {Authorization: 'env:DOCS_TOKEN'}}}
channels:
  main: [clock]
  docs: [docs]
"""


def test_good_routing_file_loads() -> None:
    routes = config.parse(GOOD.encode(), "routing.yaml")
    assert routes.control_plane is None
    assert routes.servers["clock"].transport == "stdio"
    assert routes.servers["docs"].http is not None
    assert routes.relay.listen == "127.0.0.1:8780"


@pytest.mark.parametrize(
    ("document", "key", "expected"),
    [
        ("servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\nbogus: 1\n", "(top level)", "unknown field"),
        ("servers: {a: {stdio: {command: x, argz: []}}}\nchannels: {main: [a]}\n", "servers.a.stdio", "argz"),
        ("servers: {a: {http: {url: 'ftp://x'}}}\nchannels: {main: [a]}\n", "servers.a.http.url", "http(s) URL"),
        (
            "servers: {a: {stdio: {command: x}, http: {url: 'http://h'}}}\nchannels: {main: [a]}\n",
            "servers.a",
            "exactly one",
        ),
        ("servers: {a: {stdio: {command: x}}}\nchannels: {main: [a, a]}\n", "channels.main", "each server named once"),
        ("servers: {a: {stdio: {command: x}}}\nchannels: {}\n", "channels", "at least one"),
        (
            "servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\nrelay: {listen: nope}\n",
            "relay.listen",
            "HOST:PORT",
        ),
        (
            "servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\ngateway: {max_inflight: 0}\n",
            "gateway.max_inflight",
            "at least 1",
        ),
        (
            "servers: {a: {stdio: {command: x}, request_timeout_s: 0}}\nchannels: {main: [a]}\n",
            "servers.a.request_timeout_s",
            "a positive number of seconds",
        ),
    ],
)
def test_bad_routing_files_name_the_key(document: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        config.parse(document.encode(), "conf/routing.yaml")
    assert error.value.file == "conf/routing.yaml"
    assert error.value.key == key
    assert expected in str(error.value)
    assert str(error.value).startswith("conf/routing.yaml: ")
