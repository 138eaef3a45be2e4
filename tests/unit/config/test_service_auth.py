"""routing.yaml's `servers.X.http.service_credential` (gateway/config/service_auth.py): the two grants,
and a broken entry named by file, key and what was expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import routing
from gateway.config.references import SecretRef, secret_references
from gateway.observe import logs
from gateway.protocol.errors import ConfigError

HEAD = """
servers:
  notes:
    http:
      url: http://127.0.0.1:8800/mcp
"""
TAIL = """
channels:
  main: [notes]
"""


def parse(credential: str) -> routing.RoutingConfig:
    block = textwrap.indent(textwrap.dedent(credential).strip("\n"), "        ")
    return routing.parse(f"{HEAD}      service_credential:\n{block}\n{TAIL}".encode(), "routing.yaml")


def test_client_credentials() -> None:
    config = parse("""
  client_credentials:
    token_url: https://idp.example/oauth2/token
    client_id: mcp-gateway
    client_secret: env:NOTES_CLIENT_SECRET
    scope: notes.read
""")
    http = config.servers["notes"].http
    assert http is not None
    assert http.service_credential is not None
    spec = http.service_credential
    assert spec.client_credentials is not None
    assert spec.token_exchange is None
    assert spec.refresh_before_s == 60.0
    assert secret_references(config) == [
        SecretRef("servers.notes.http.service_credential.client_credentials.client_secret", "env:NOTES_CLIENT_SECRET")
    ]


def test_token_exchange_without_a_client_secret() -> None:
    config = parse("""
  token_exchange:
    token_url: https://idp.example/oauth2/token
    audience: api://notes
  refresh_before_s: 10
""")
    http = config.servers["notes"].http
    assert http is not None
    assert http.service_credential is not None
    assert http.service_credential.grant.audience == "api://notes"
    assert secret_references(config) == []


@pytest.mark.parametrize(
    ("credential", "key", "expected"),
    [
        ("refresh_before_s: 5", "service_credential", "exactly one of `client_credentials` or `token_exchange`"),
        (
            "client_credentials: {token_url: 'https://i/t', client_id: c, client_secret: 'env:S'}\n"
            "token_exchange: {token_url: 'https://i/t'}",
            "service_credential",
            "exactly one of",
        ),
        ("token_exchange: {token_url: 'idp/token'}", "service_credential.token_exchange.token_url", "absolute http(s)"),
        (
            "client_credentials: {token_url: 'https://i/t', client_id: c}",
            "service_credential.client_credentials",
            "missing required field `client_secret`",
        ),
        (
            "client_credentials: {token_url: 'https://i/t', client_id: c, client_secret: 'env:'}",
            "service_credential.client_credentials.client_secret",
            "a secret reference",
        ),
        (
            "token_exchange: {token_url: 'https://i/t', client_secret: 'env:S'}",
            "service_credential.token_exchange.client_id",
            "a client id to go with `client_secret`",
        ),
        (
            "token_exchange: {token_url: 'https://i/t', subject: x}",
            "service_credential.token_exchange",
            "unknown field",
        ),
        (
            "token_exchange: {token_url: 'https://i/t'}\nrefresh_before_s: -1",
            "service_credential.refresh_before_s",
            "non-negative number of seconds",
        ),
    ],
)
def test_a_broken_entry_names_the_key_and_what_was_expected(credential: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(credential)
    assert caught.value.file == "routing.yaml"
    assert caught.value.key == f"servers.notes.http.{key}"
    assert expected in caught.value.expected


def test_a_stdio_server_has_no_such_option() -> None:
    document = b"""
servers:
  tool:
    stdio:
      command: echo
      service_credential: {token_exchange: {token_url: 'https://i/t'}}
channels:
  main: [tool]
"""
    with pytest.raises(ConfigError) as caught:
        routing.parse(document, "routing.yaml")
    assert caught.value.key == "servers.tool.stdio"
    assert "unknown field `service_credential`" in caught.value.expected


def test_the_client_secret_is_registered_with_the_log_redactor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NOTES_CLIENT_SECRET", "notes-secret-value-77")
    (tmp_path / "exchange-secret").write_text("exchange-secret-value-88\n")
    config = parse("""
  client_credentials: {token_url: 'https://i/t', client_id: c, client_secret: 'env:NOTES_CLIENT_SECRET'}
""")
    assert "notes-secret-value-77" in set(logs.config_secrets(config, tmp_path))
    config = parse("""
  token_exchange: {token_url: 'https://i/t', client_id: c, client_secret: 'file:exchange-secret'}
""")
    assert "exchange-secret-value-88" in set(logs.config_secrets(config, tmp_path))


def test_a_token_exchange_server_is_refused_in_a_channel_with_other_servers() -> None:
    """An aggregated channel's lists are fetched once, without a user's token, so an on-behalf-of
    server's tools would be missing: the file is refused, naming the channel and the server. Alone
    in its channel (or beside it, client credentials in an aggregated one) it loads."""
    servers = b"""
servers:
  notes:
    http:
      url: https://notes.internal/mcp
      service_credential: {token_exchange: {token_url: 'https://login.example.com/t'}}
  reports:
    http:
      url: https://reports.internal/mcp
      service_credential:
        client_credentials: {token_url: 'https://login.example.com/t', client_id: c, client_secret: 'env:S'}
  local: {stdio: {command: echo}}
"""
    with pytest.raises(ConfigError) as caught:
        routing.parse(servers + b"channels:\n  main: [local, notes]\n", "routing.yaml")
    assert caught.value.key == "channels.main"
    assert "`notes` in a channel of its own" in caught.value.expected
    loaded = routing.parse(servers + b"channels:\n  notes: [notes]\n  main: [local, reports]\n", "routing.yaml")
    assert set(loaded.channels) == {"notes", "main"}
