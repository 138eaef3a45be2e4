"""What a relay reload may change (`gateway.relay.reload.restart_keys`): a pure comparison of the start
configuration and the new one. Credentials, the set of tunnels, per-tunnel settings, allowlists,
timeouts and identity's keys apply; the listener, the backend, the console's on/off and new key sources
are named as taking effect on restart."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.relay import decode_relay_config
from gateway.relay.config import RelayConfig
from gateway.relay.reload import rejection, restart_keys

BASE = {
    "listen": "127.0.0.1:0",
    "tunnels": {
        "t1": {"gateway_key": "key-a", "client_tokens": ["tok-a"]},
        "t2": {"gateway_key": "key-2"},
    },
}
USER_AUTH = {"issuer": "https://idp.example", "jwks_uri": "https://idp.example/jwks"}
ISSUER = {"issuer": "https://k8s.example", "audience": "relay", "subjects": {"sa": ["t1"]}, "jwks_file": "/j.json"}
IDENTITY = {"issuers": [ISSUER], "signing_keys": ["file:/old.pem"]}


def config(**changes: Any) -> RelayConfig:
    return decode_relay_config(json.dumps({**BASE, **changes}))


def tunnels(**t1: Any) -> dict[str, Any]:
    return {"t1": {**BASE["tunnels"]["t1"], **t1}, "t2": BASE["tunnels"]["t2"]}  # type: ignore[index]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"tunnels": tunnels(gateway_key="key-b")},
        {"tunnels": tunnels(client_tokens=["tok-b", "tok-c"])},
        {"tunnels": tunnels(client_tokens=[])},
        {"tunnels": tunnels(client_rate="5/s", client_burst=3)},
        {"tunnels": tunnels(client_token_header="X-Relay-Token", name="Renamed", description="new")},
        {"allowed_hosts": ["relay.example"], "allowed_origins": ["https://app.example"]},
        {"response_timeout_s": 5, "poll_max_wait_ms": 1000, "public_url": "https://mcp.example"},
        {"ops": {"token": "console-token"}},  # loopback listener: the console stays served
        {"tunnels": {**BASE["tunnels"], "t3": {"gateway_key": "k3"}}},  # type: ignore[dict-item]
        {"tunnels": {"t1": BASE["tunnels"]["t1"]}},  # type: ignore[index]
        {"tunnels": {"t3": {"gateway_key": "k3"}}},  # every tunnel replaced
    ],
    ids=lambda changes: ",".join(changes) or "nothing",
)
def test_what_applies_at_run_time(changes: dict[str, Any]) -> None:
    assert restart_keys(config(), config(**changes)) == []


@pytest.mark.parametrize(
    ("changes", "keys"),
    [
        ({"listen": "127.0.0.1:9"}, ["listen"]),
        ({"listen": "127.0.0.1:9", "backend": {"kind": "redis"}}, ["listen", "backend"]),
        (
            {"queue_max": 5, "max_body_bytes": 2048, "read_timeout_s": 3},
            ["queue_max", "max_body_bytes", "read_timeout_s"],
        ),
        ({"client_seen_grace_s": 1, "session_ttl_s": 1}, ["client_seen_grace_s", "session_ttl_s"]),
        ({"access_log": True, "oauth_discovery": {"cache_ttl_s": 1}}, ["access_log", "oauth_discovery"]),
        ({"tunnels": tunnels(user_auth=USER_AUTH, client_token_header="X-T")}, ["tunnels.t1.user_auth.jwks_uri"]),
        ({"identity": IDENTITY}, ["identity"]),
    ],
    ids=lambda value: ",".join(value) if isinstance(value, list) else None,
)
def test_what_takes_effect_on_restart(changes: dict[str, Any], keys: list[str]) -> None:
    assert restart_keys(config(), config(**changes)) == keys


def test_the_console_turned_on_or_off_needs_a_restart() -> None:
    """On a non-loopback listener the console is served only with `ops.token`: adding or removing it
    turns the console on or off (routes are mounted at start), and removing it must not leave an open console."""
    public = {"listen": "0.0.0.0:8780"}
    assert restart_keys(config(**public), config(**public, ops={"token": "t"})) == ["ops.token"]
    assert restart_keys(config(**public, ops={"token": "t"}), config(**public)) == ["ops.token"]
    assert restart_keys(config(**public, ops={"token": "t"}), config(**public, ops={"token": "u"})) == []


def test_user_auth_applies_while_its_key_set_is_one_the_relay_fetches() -> None:
    started = config(tunnels=tunnels(user_auth=USER_AUTH, client_token_header="X-T"))
    scopes = {**USER_AUTH, "required_scopes": ["mcp"], "audience": ["https://mcp.example/v1/mcp/t1"]}
    assert restart_keys(started, config(tunnels=tunnels(user_auth=scopes, client_token_header="X-T"))) == []
    assert restart_keys(started, config(tunnels=tunnels())) == []  # switched off
    schedule = {**USER_AUTH, "jwks_cache_s": 60}  # the key set's schedule is fixed at start: named as such
    assert restart_keys(started, config(tunnels=tunnels(user_auth=schedule, client_token_header="X-T"))) == [
        "tunnels.t1.user_auth.jwks_cache_s"
    ]
    proxied = {**USER_AUTH, "jwks_proxy": "none"}  # another way to fetch the same keys: another key set
    assert restart_keys(started, config(tunnels=tunnels(user_auth=proxied, client_token_header="X-T"))) == [
        "tunnels.t1.user_auth.jwks_proxy"
    ]


def test_a_tunnel_added_with_user_auth_applies_only_with_a_key_set_the_relay_fetches() -> None:
    """The key sets are fetched from start to stop: a new tunnel may share one, not bring its own."""
    fetching = tunnels(user_auth=USER_AUTH, client_token_header="X-T")
    started = config(tunnels=fetching)
    added = {"gateway_key": "k3", "user_auth": USER_AUTH, "client_token_header": "X-T"}
    assert restart_keys(started, config(tunnels={**fetching, "t3": added})) == []
    other = {**added, "user_auth": {**USER_AUTH, "jwks_uri": "https://idp.example/other-jwks"}}
    assert restart_keys(started, config(tunnels={**fetching, "t3": other})) == ["tunnels.t3.user_auth.jwks_uri"]
    assert restart_keys(config(), config(tunnels={**tunnels(), "t3": added})) == ["tunnels.t3.user_auth.jwks_uri"]


def test_identity_applies_but_its_key_sources_do_not() -> None:
    started = config(identity=IDENTITY)
    rotated = {**IDENTITY, "signing_keys": ["file:/new.pem", "file:/old.pem"], "token_ttl_s": 60}
    assert restart_keys(started, config(identity=rotated)) == []
    subjects = {**IDENTITY, "issuers": [{**ISSUER, "subjects": {"sa": ["t1", "t2"]}, "audience": "relay2"}]}
    assert restart_keys(started, config(identity=subjects)) == []
    assert restart_keys(started, config(identity={**IDENTITY, "trusted_proxies": ["10.0.0.0/8"]})) == []
    moved = {**IDENTITY, "issuers": [{**ISSUER, "jwks_file": "/other.json"}]}
    assert restart_keys(started, config(identity=moved)) == ["identity.issuers"]
    another = {**IDENTITY, "issuers": [ISSUER, {**ISSUER, "issuer": "https://other.example"}]}
    assert restart_keys(started, config(identity=another)) == ["identity.issuers"]
    assert restart_keys(started, config()) == ["identity"]


def test_the_rejection_names_every_key() -> None:
    assert rejection(["listen", "backend"]) == "listen, backend take effect on restart"
    assert rejection(["backend"]) == "backend takes effect on restart"
