"""The YAML in deploy/, checked without a container engine or a cluster: every file loads, and every routing.yaml
and relay.yaml passes the project's own loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import routing as routing_config
from gateway.config.base import split_listen
from gateway.relay.config import load_relay_config
from tests.support.deploy_files import DEPLOY, K8S, OPS_PORT, rel

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
ROUTING_FILES = [
    DEPLOY / "compose" / "routing.yaml",
    K8S / "base" / "routing.yaml",
    K8S / "sidecar" / "routing.yaml",
    K8S / "overlays" / "segment-example" / "routing.yaml",
    K8S / "overlays" / "self-hosted" / "routing.yaml",
    DEPLOY / "systemd" / "routing.example.yaml",
]
RELAY_FILES = [DEPLOY / "compose" / "relay.yaml", K8S / "relay" / "relay.yaml"]
WORKLOAD_IDENTITY_RELAY_FILES = {K8S / "relay" / "relay.yaml"}
"""Relays whose gateways have no key: every tunnel is polled with workload identity."""
WORKLOAD_IDENTITY_FILES = {
    K8S / "base" / "routing.yaml",
    K8S / "sidecar" / "routing.yaml",
    K8S / "overlays" / "segment-example" / "routing.yaml",
    K8S / "overlays" / "self-hosted" / "routing.yaml",
}
"""Gateways in Kubernetes (polling OpenAI's service or the self-hosted relay): no API key, a projected
service-account token."""


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_file_loads(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents, f"{rel(path)} is empty"
    assert all(isinstance(doc, dict) for doc in documents), f"{rel(path)}: every document must be a mapping"


@pytest.mark.parametrize("path", ROUTING_FILES, ids=rel)
def test_routing_file_is_valid(path: Path) -> None:
    routes = routing_config.load(path)
    assert routes.control_plane is not None, "deployed gateways name their control plane"
    identity = routes.control_plane.workload_identity
    if path in WORKLOAD_IDENTITY_FILES:
        assert routes.control_plane.api_key is None, "no API key under workload identity"
        assert identity is not None, "gateways in Kubernetes use workload identity"
        assert identity.subject_token is not None
        assert identity.subject_token.startswith("file:/"), "the subject token is the projected token file"
    else:
        api_key = routes.control_plane.api_key
        assert api_key is not None, "the key comes from a secret file"
        assert api_key.startswith("file:/"), "the key comes from a secret file"
    assert routes.gateway.drain_timeout_s == 20
    assert routes.ops is not None, "an ops listener serves the probes"
    host, port = split_listen(routes.ops.listen)
    assert port == OPS_PORT
    expected_host = "127.0.0.1" if "systemd" in path.parts else "0.0.0.0"
    assert host == expected_host, "containers listen on all interfaces of their own namespace, hosts on loopback"


@pytest.mark.parametrize("path", RELAY_FILES, ids=rel)
def test_relay_file_is_valid(path: Path) -> None:
    relay = load_relay_config(path)
    assert relay.listen == "0.0.0.0:8780"
    if path in WORKLOAD_IDENTITY_RELAY_FILES:
        assert relay.identity is not None
        assert all(tunnel.gateway_key is None for tunnel in relay.tunnels.values()), "no static gateway key"
    issuers = relay.identity.issuers if relay.identity is not None else []
    mapped = {tunnel_id for issuer in issuers for tunnels in issuer.subjects.values() for tunnel_id in tunnels}
    for tunnel_id, tunnel in relay.tunnels.items():
        if tunnel.gateway_key is None:
            assert tunnel_id in mapped, "a tunnel without a gateway key is polled with workload identity"
        else:
            assert tunnel.gateway_key.startswith("file:/")
        assert all(token.startswith("file:/") for token in tunnel.client_tokens)
    if relay.identity is not None:
        assert all(key.startswith("file:/") for key in relay.identity.signing_keys), "signing keys come from files"
        for issuer in relay.identity.issuers:
            assert issuer.jwks_token is None or issuer.jwks_token.startswith("file:/"), "a rotated token file"


def test_every_routing_and_relay_file_is_checked() -> None:
    named = {p for p in YAML_FILES if p.name.startswith(("routing", "relay"))}
    assert named == set(ROUTING_FILES) | set(RELAY_FILES)
