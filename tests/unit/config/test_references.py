"""gateway/config/references.py: every secret setting of routing.yaml, named by its key, is on the one
list the log redactor and `gateway doctor` read, and no setting that is not secret is. A header or a
server's environment entry is a secret when it is a reference or its name says so (`TOKEN`, not `TZ`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import routing
from gateway.config.references import SecretRef, secret_references
from gateway.observe import logs

EVERY_KIND = b"""
control_plane:
  url: https://cp.example
  tunnel_id: tunnel_1
  workload_identity:
    identity_provider_id: env:IDP_ID
    service_account_id: sa_literal
    subject_token: file:subject.jwt
relay: {client_token: env:CLIENT_TOKEN}
servers:
  docs:
    http:
      url: https://docs.example/mcp
      headers: {Authorization: literal-docs-token, X-Api-Key: env:DOCS_KEY, X-Trace: plain, X-Ref: file:ref.txt}
      service_credential:
        client_credentials: {token_url: https://idp.example/token, client_id: gw, client_secret: env:CC_SECRET}
  clock:
    stdio: {command: clock, env: {TOKEN: literal-env-token-value, TZ: Europe/Paris, DB_URL: env:DB_URL}}
channels:
  main: [docs, clock]
telemetry:
  headers: {Authorization: env:OTLP_TOKEN, X-Scope: tenant-a}
ops: {listen: "0.0.0.0:9090", token: env:OPS_TOKEN}
sessions:
  key: env:SESSION_KEY
  previous_keys: [older-session-key-0123456789]
budgets:
  - name: daily
    scope: channel
    calls: 10
    per: day
    webhook: {url: https://hooks.example/a, headers: {Authorization: env:HOOK_TOKEN, X-Source: gateway}}
"""


def test_every_secret_setting_is_named_by_its_key() -> None:
    config = routing.parse(EVERY_KIND, "routing.yaml")
    assert secret_references(config) == [
        SecretRef("control_plane.workload_identity.identity_provider_id", "env:IDP_ID", secret=False),
        SecretRef("control_plane.workload_identity.subject_token", "file:subject.jwt"),
        SecretRef("relay.client_token", "env:CLIENT_TOKEN"),
        SecretRef("servers.docs.http.headers.Authorization", "literal-docs-token"),
        SecretRef("servers.docs.http.headers.X-Api-Key", "env:DOCS_KEY"),
        SecretRef("servers.docs.http.headers.X-Ref", "file:ref.txt"),
        SecretRef("servers.docs.http.service_credential.client_credentials.client_secret", "env:CC_SECRET"),
        SecretRef("servers.clock.stdio.env.TOKEN", "literal-env-token-value"),
        SecretRef("servers.clock.stdio.env.DB_URL", "env:DB_URL"),
        SecretRef("telemetry.headers.Authorization", "env:OTLP_TOKEN"),
        SecretRef("ops.token", "env:OPS_TOKEN"),
        SecretRef("sessions.key", "env:SESSION_KEY"),
        SecretRef("sessions.previous_keys[0]", "older-session-key-0123456789"),
        SecretRef("budgets[0].webhook.headers.Authorization", "env:HOOK_TOKEN"),
    ]


def test_the_log_redactor_learns_every_secret_value(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Values the redactor did not know before this list existed: the session keys and the budget
    webhook's header (both never logged by design; masked in case a peer's error quotes them)."""
    values = {
        "CLIENT_TOKEN": "client-token-value-1",
        "DOCS_KEY": "docs-key-value-22",
        "CC_SECRET": "cc-secret-value-333",
        "OTLP_TOKEN": "otlp-token-value-4444",
        "SESSION_KEY": "session-key-value-55555",
        "HOOK_TOKEN": "hook-token-value-666666",
        "OPS_TOKEN": "ops-token-value-88888888",
        "IDP_ID": "idp-id-not-a-secret",
        "DB_URL": "postgres://db-user:db-password-9@db/app",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "ref.txt").write_text("file-header-value-7777777")
    config = routing.parse(EVERY_KIND, str(tmp_path / "routing.yaml"))
    known = set(logs.config_secrets(config, tmp_path))
    assert {v for k, v in values.items() if k != "IDP_ID"} | {
        "literal-docs-token",
        "file-header-value-7777777",
        "older-session-key-0123456789",
        "literal-env-token-value",
    } <= known
    assert "idp-id-not-a-secret" not in known
    assert "tenant-a" not in known
    assert "Europe/Paris" not in known
