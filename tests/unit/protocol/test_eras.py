"""gateway.protocol.eras with plain calls: which era a client speaks, params and results bridged both ways,
the answers the gateway gives itself."""

from __future__ import annotations

import json

from msgspec import UNSET, Raw

from gateway.protocol.eras import Bridge
from gateway.protocol.mcp import Era
from gateway.protocol.wire import Codec

bridge = Bridge(Codec())


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
