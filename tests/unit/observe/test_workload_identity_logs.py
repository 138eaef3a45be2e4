"""What the log redactor (gateway/observe/logs.py) knows of workload identity: JWTs are masked
anywhere, App Service's identity header is a registered secret, and no API key is expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import routing
from gateway.observe.logs import MASK, Redactor, config_secrets

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJzeXN0ZW06c2E6eCJ9.c2lnbmF0dXJlLXBhcnQtb2YtaXQ"


@pytest.mark.parametrize(
    "line",
    [
        f"subject token {JWT} refused",
        f'{{"error_description": "bad {JWT}"}}',
        f"token={JWT}&x=1",
    ],
)
def test_a_jwt_is_masked_anywhere(line: str) -> None:
    redacted = Redactor().redact(line)
    assert JWT not in redacted
    assert JWT.rsplit(".", 1)[1] not in redacted
    assert MASK in redacted


def test_words_that_merely_start_like_a_jwt_stay() -> None:
    assert Redactor().redact("eyJ is not a token. eyJx.y") == "eyJ is not a token. eyJx.y"


def config(provider: dict[str, object] | None) -> routing.RoutingConfig:
    identity: dict[str, object] = {"identity_provider_id": "idp", "service_account_id": "sa"}
    identity.update({"provider": provider} if provider else {"subject_token": "file:/t"})
    document = {
        "control_plane": {"url": "https://api.openai.com", "tunnel_id": "t", "workload_identity": identity},
        "servers": {"s": {"stdio": {"command": "x"}}},
        "channels": {"main": ["s"]},
    }
    return routing.parse(json.dumps(document).encode(), "r")


def test_app_services_identity_header_is_a_known_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "app-service-header-secret")
    monkeypatch.setenv("TUNNEL_API_KEY", "an-unused-api-key")
    azure = config({"azure_managed_identity": {"resource": "api://x"}})
    assert list(config_secrets(azure, tmp_path)) == ["app-service-header-secret"]
    assert list(config_secrets(config(None), tmp_path)) == [], "no API key is looked for under workload identity"
