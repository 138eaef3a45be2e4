"""deploy/k8s without a cluster: every manifest, and every kustomization rendered (by `_kustomize` below and, where
`kubectl` is installed, by `kubectl kustomize`, which must agree), validates against the Kubernetes JSON schemas in
strict mode (kubernetes-validate); security, probes, grace period and the references between objects and files
hold."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from tests.support.deploy_files import K8S, OPS_PORT, load_yaml, rel, run_command

K8S_VERSION = "1.30.0"
"""Kubernetes schemas the manifests must satisfy (native sidecars need 1.29+)."""
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))
MIN_PROJECTED_TOKEN_S = 600
"""The shortest `expirationSeconds` Kubernetes accepts for a projected service-account token."""
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
    kustomization = load_yaml(directory / "kustomization.yaml")
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unsupported, f"{rel(directory)}: the test renderer does not implement {sorted(unsupported)}"
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
            assert not existing, f"{rel(directory)}: ConfigMap {generator['name']} generated twice"
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
            assert len(existing) == 1, f"{rel(directory)}: `{behavior}` needs ConfigMap {generator['name']} from a base"
            existing[0]["data"] = data if behavior == "replace" else {**existing[0]["data"], **data}
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, "the test renderer applies strategic-merge patch files only"
        for patch in _manifests(directory / patch_entry["path"]):
            targets = [
                r
                for r in resources
                if r["kind"] == patch["kind"] and r["metadata"]["name"] == patch["metadata"]["name"]
            ]
            assert len(targets) == 1, f"{rel(directory)}: patch target {patch['kind']}/{patch['metadata']['name']}"
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
    return {d / p["path"] for d in KUSTOMIZATIONS for p in (load_yaml(d / "kustomization.yaml").get("patches") or [])}


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


@pytest.mark.parametrize("path", _k8s_manifest_files(), ids=rel)
def test_k8s_manifest_validates_against_the_schema(path: Path) -> None:
    for resource in _manifests(path):
        _validate_k8s(resource, rel(path))


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=rel)
def test_k8s_rendered_kustomization_validates(directory: Path) -> None:
    rendered = _kustomize(directory)
    keys = [_key(r) for r in rendered]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"
    for resource in rendered:
        _validate_k8s(resource, f"kustomize {rel(directory)}")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=rel)
def test_k8s_kubectl_kustomize_agrees_with_the_test_renderer(directory: Path) -> None:
    result = run_command("kubectl", "kustomize", directory)
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


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=rel)
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


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=rel)
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
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"], "group-readable credential"
        if "workload_identity" in routing["control_plane"]:
            _check_projected_token(rendered, pod, routing["control_plane"])
        else:
            # The API key file named in routing.yaml is the mounted Secret's key.
            key_path = Path(routing["control_plane"]["api_key"].removeprefix("file:"))
            mount = next(m for m in main["volumeMounts"] if m["mountPath"] == str(key_path.parent))
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert set(volume) == {"name", "secret"}
            assert volume["secret"]["defaultMode"] == 0o440
            example = _secret_example(volume["secret"]["secretName"])
            assert key_path.name in example["stringData"]
            assert [i["path"] for i in volume["secret"].get("items", [])] in ([], [key_path.name])
        # Nothing in a kustomization carries a key itself.
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


def _check_projected_token(rendered: list[dict[str, Any]], pod: dict[str, Any], control_plane: dict[str, Any]) -> None:
    """Workload identity: the subject token file named in routing.yaml is a service-account token the
    kubelet projects for the control plane's audience; no Secret reaches the pod, and the Kubernetes
    API token is not mounted."""
    main = pod["containers"][0]
    token_path = Path(control_plane["workload_identity"]["subject_token"].removeprefix("file:"))
    mount = next(m for m in main["volumeMounts"] if m["mountPath"] == str(token_path.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert set(volume) == {"name", "projected"}
    assert volume["projected"]["defaultMode"] == 0o440
    sources = volume["projected"]["sources"]
    assert [set(source) for source in sources] == [{"serviceAccountToken"}]
    token = sources[0]["serviceAccountToken"]
    assert token["path"] == token_path.name
    if urlsplit(control_plane["url"]).hostname == "api.openai.com":
        assert token["audience"] == "https://api.openai.com/v1", "the audience OpenAI's Kubernetes guide uses"
    assert token["expirationSeconds"] >= MIN_PROJECTED_TOKEN_S
    assert not [v for v in pod["volumes"] if "secret" in v], "no API key Secret under workload identity"
    assert pod["automountServiceAccountToken"] is False
    accounts = [
        r for r in rendered if r["kind"] == "ServiceAccount" and r["metadata"]["name"] == pod["serviceAccountName"]
    ]
    assert len(accounts) == 1, "the identity the token is projected for is part of the rendering"
    assert accounts[0]["automountServiceAccountToken"] is False


def test_k8s_gateways_polling_openai_carry_no_api_key() -> None:
    """Every kustomization that runs a gateway against OpenAI's service gives it workload identity."""
    checked = 0
    for directory in KUSTOMIZATIONS:
        rendered = _kustomize(directory)
        for deployment in _deployments(rendered):
            pod = deployment["spec"]["template"]["spec"]
            if pod["containers"][0]["name"] != "gateway":
                continue
            routing = yaml.safe_load(_routing_from_config_map(rendered, pod, "/etc/gateway")["routing.yaml"])
            if urlsplit(routing["control_plane"]["url"]).hostname == "api.openai.com":
                assert "api_key" not in routing["control_plane"], rel(directory)
                assert "workload_identity" in routing["control_plane"], rel(directory)
                checked += 1
    assert checked >= 3


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
