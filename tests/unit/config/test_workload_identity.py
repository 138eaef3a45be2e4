"""`control_plane.workload_identity` in routing.yaml (gateway/config/routing.py): its shape, its checks
(each error names the file and the key), activation from the OPENAI_IDENTITY_* variables, and the
egress settings the token endpoint inherits from the control plane."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import routing
from gateway.config.egress import Egress
from gateway.config.identity import WorkloadIdentitySpec, token_endpoint_egress, workload_identity_from_env
from gateway.protocol.errors import ConfigError
from gateway.tunnel.workload_identity import ExchangeSettings

KEY = "control_plane.workload_identity"


def document(**identity: Any) -> bytes:
    control_plane: dict[str, Any] = {"url": "https://api.openai.com", "tunnel_id": "tunnel_1"}
    if identity:
        control_plane["workload_identity"] = identity
    return json.dumps(
        {"control_plane": control_plane, "servers": {"s": {"stdio": {"command": "x"}}}, "channels": {"main": ["s"]}}
    ).encode()


def identity(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "identity_provider_id": "env:OPENAI_IDENTITY_PROVIDER_ID",
        "service_account_id": "env:OPENAI_SERVICE_ACCOUNT_ID",
        "subject_token": "file:/var/run/secrets/tokens/openai",
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def refused(data: bytes) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        routing.parse(data, "routing.yaml")
    return caught.value


def test_the_issue_example_loads_with_its_defaults() -> None:
    spec = routing.parse(document(**identity()), "routing.yaml").control_plane
    assert spec is not None
    assert spec.api_key is None
    wi = spec.workload_identity
    assert wi == WorkloadIdentitySpec(
        identity_provider_id="env:OPENAI_IDENTITY_PROVIDER_ID",
        service_account_id="env:OPENAI_SERVICE_ACCOUNT_ID",
        subject_token="file:/var/run/secrets/tokens/openai",
    )
    assert wi.token_url == "https://auth.openai.com/oauth/token"
    assert wi.subject_token_type == "jwt"
    assert wi.refresh_before_s == 1200


@pytest.mark.parametrize(
    "provider",
    [
        {"gcp_metadata": {"audience": "https://api.openai.com/v1"}},
        {"gcp_metadata": {"audience": "aud", "base_url": "http://127.0.0.1:8080"}},
        {"azure_managed_identity": {"resource": "api://openai-wif"}},
        {"azure_managed_identity": {"resource": "api://x", "client_id": "c1", "base_url": "http://127.0.0.1:1"}},
        {"aws_web_identity": {}},
        {"aws_web_identity": {"token_file": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}},
    ],
)
def test_each_provider_loads(provider: dict[str, Any]) -> None:
    spec = routing.parse(document(**identity(subject_token=None, provider=provider)), "r").control_plane
    assert spec is not None
    assert spec.workload_identity is not None
    assert spec.workload_identity.provider is not None
    assert spec.workload_identity.provider.chosen == list(provider)


@pytest.mark.parametrize(
    ("changes", "key", "expected"),
    [
        ({"subject_token": None}, KEY, "exactly one of `subject_token` or `provider`"),
        ({"provider": {"aws_web_identity": {}}}, KEY, "exactly one of `subject_token` or `provider`"),
        ({"subject_token": None, "provider": {}}, f"{KEY}.provider", "exactly one of `gcp_metadata`"),
        (
            {"subject_token": None, "provider": {"aws_web_identity": {}, "gcp_metadata": {"audience": "a"}}},
            f"{KEY}.provider",
            "(got 2)",
        ),
        ({"subject_token": None, "provider": {"gcp_metadata": {}}}, f"{KEY}.provider.gcp_metadata", "`audience`"),
        ({"subject_token": None, "provider": {"gcp_metadata": {"audience": ""}}}, "gcp_metadata.audience", "non-empty"),
        ({"subject_token": None, "provider": {"azure_managed_identity": {"resource": ""}}}, "resource", "non-empty"),
        (
            {"subject_token": None, "provider": {"gcp_metadata": {"audience": "a", "base_url": "ftp://x"}}},
            "gcp_metadata.base_url",
            "an absolute http(s) URL",
        ),
        ({"subject_token": None, "provider": {"vault": {}}}, f"{KEY}.provider", "unknown field `vault`"),
        ({"subject_token_type": "saml2"}, f"{KEY}.subject_token_type", "`jwt` or `id_token` (got 'saml2')"),
        ({"token_url": "auth.openai.com/oauth/token"}, f"{KEY}.token_url", "an absolute http(s) URL"),
        ({"refresh_before_s": -1}, f"{KEY}.refresh_before_s", "non-negative"),
        ({"identity_provider_id": ""}, f"{KEY}.identity_provider_id", "a non-empty id"),
        ({"service_account_id": None}, KEY, "`service_account_id`"),
        ({"subject_token": "file:"}, f"{KEY}.subject_token", "a reference"),
        ({"client_key": "k.pem"}, f"{KEY}.client_cert", "a certificate to go with `client_key`"),
        ({"audience": "x"}, KEY, "unknown field `audience`"),
    ],
)
def test_a_wrong_workload_identity_names_the_key(changes: dict[str, Any], key: str, expected: str) -> None:
    error = refused(document(**identity(**changes)))
    assert error.file == "routing.yaml"
    assert error.key.startswith(key) or key in error.key, error
    assert expected in error.expected, error


def test_api_key_and_workload_identity_together_are_refused() -> None:
    data = json.loads(document(**identity()))
    data["control_plane"]["api_key"] = "env:TUNNEL_API_KEY"
    error = refused(json.dumps(data).encode())
    assert (error.key, error.expected) == ("control_plane", "`api_key` or `workload_identity`, not both")


# --------------------------------------------------------------------------- the environment


def test_no_identity_variables_leave_it_off() -> None:
    assert workload_identity_from_env({"TUNNEL_API_KEY": "k"}, "r") is None
    assert workload_identity_from_env({"OPENAI_IDENTITY_PROVIDER_ID": ""}, "r") is None


def test_the_three_variables_turn_it_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {
        "OPENAI_IDENTITY_PROVIDER_ID": "idp_1",
        "OPENAI_SERVICE_ACCOUNT_ID": "sa_1",
        "OPENAI_IDENTITY_TOKEN_FILE": "token",
    }
    spec = workload_identity_from_env(environ, "r")
    assert spec == WorkloadIdentitySpec(
        identity_provider_id="env:OPENAI_IDENTITY_PROVIDER_ID",
        service_account_id="env:OPENAI_SERVICE_ACCOUNT_ID",
        subject_token=f"file:{tmp_path / 'token'}",
    )


def test_some_of_the_variables_name_the_missing_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        workload_identity_from_env({"OPENAI_IDENTITY_TOKEN_FILE": "/t"}, "routing.yaml")
    assert caught.value.key == "control_plane (environment)"
    assert "(OPENAI_IDENTITY_PROVIDER_ID, OPENAI_SERVICE_ACCOUNT_ID not set)" in caught.value.expected


def test_ids_resolve_from_their_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sa").write_text("sa_from_file\n")
    monkeypatch.setenv("WIF_TEST_IDP", "idp_from_env")
    spec = WorkloadIdentitySpec(
        identity_provider_id="env:WIF_TEST_IDP", service_account_id="file:sa", subject_token="x"
    )
    settings = ExchangeSettings.resolve(spec, file="r", base=tmp_path, key=KEY)
    assert (settings.identity_provider_id, settings.service_account_id) == ("idp_from_env", "sa_from_file")
    monkeypatch.delenv("WIF_TEST_IDP")
    with pytest.raises(ConfigError) as caught:
        ExchangeSettings.resolve(spec, file="r", base=tmp_path, key=KEY)
    assert caught.value.key == f"{KEY}.identity_provider_id"
    assert "WIF_TEST_IDP is not set" in caught.value.expected


# --------------------------------------------------------------------------- egress


def test_the_token_endpoint_inherits_the_control_planes_egress() -> None:
    control_plane = Egress(proxy="http://proxy:3128", ca_bundle="corp.pem", client_cert="c.pem", client_key="c.key")
    plain = WorkloadIdentitySpec(identity_provider_id="i", service_account_id="s", subject_token="t")
    assert token_endpoint_egress(control_plane, plain) == control_plane
    assert token_endpoint_egress(None, plain) == Egress()


def test_the_workload_identitys_own_egress_wins_setting_by_setting() -> None:
    control_plane = Egress(proxy="http://proxy:3128", ca_bundle="corp.pem", client_cert="c.pem", client_key="c.key")
    own = WorkloadIdentitySpec(
        identity_provider_id="i", service_account_id="s", subject_token="t", proxy="none", client_cert="own.pem"
    )
    assert token_endpoint_egress(control_plane, own) == Egress(
        proxy="none", ca_bundle="corp.pem", client_cert="own.pem", client_key=None
    )
