"""What a server process the gateway starts inherits (gateway/upstream/environment.py): the gateway's
environment without its own control-plane credentials and without any variable routing.yaml reads a
secret from, then the server's configured `env` (references resolved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import routing
from gateway.protocol.errors import ConfigError
from gateway.upstream.environment import GATEWAY_CREDENTIAL_VARIABLES, ChildEnvironment

PARENT = {
    "PATH": "/usr/bin",
    "HOME": "/home/gw",
    "TUNNEL_API_KEY": "tk-secret",
    "OPENAI_IDENTITY_PROVIDER_ID": "idp_1",
    "OPENAI_SERVICE_ACCOUNT_ID": "sa_1",
    "OPENAI_IDENTITY_TOKEN_FILE": "/var/run/secrets/tokens/openai",
    "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks/token",
    "MY_CP_KEY": "cp-key-secret",
    "DOCS_TOKEN": "docs-token-secret",
    "GH_TOKEN": "gh-token-secret",
}

ROUTES = b"""
control_plane: {url: https://cp.example, tunnel_id: t1, api_key: env:MY_CP_KEY}
servers:
  docs:
    http: {url: https://docs.example/mcp, headers: {Authorization: env:DOCS_TOKEN}}
  git:
    stdio: {command: git-mcp, env: {GH_TOKEN: env:GH_TOKEN, MODE: env-like-but-literal}}
  clock:
    stdio: {command: clock, inherit_env: false, env: {TZ: UTC}}
  plain:
    stdio: {command: plain}
channels:
  main: [docs, git, clock, plain]
"""


def environment(server: str, config: routing.RoutingConfig, tmp_path: Path) -> ChildEnvironment:
    spec = config.servers[server].stdio
    assert spec is not None
    return ChildEnvironment.for_program(spec, config, file="routing.yaml", key=f"servers.{server}.stdio", base=tmp_path)


def test_inherited_environment_keeps_everything_but_the_gateways_credentials() -> None:
    env = ChildEnvironment().build(PARENT)
    assert env == {k: v for k, v in PARENT.items() if k not in GATEWAY_CREDENTIAL_VARIABLES}
    assert "TUNNEL_API_KEY" not in env
    assert not [k for k in env if k.startswith("OPENAI_IDENTITY") or k == "OPENAI_SERVICE_ACCOUNT_ID"]
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == PARENT["AWS_WEB_IDENTITY_TOKEN_FILE"], "a server's own AWS identity"


def test_configured_variables_are_set_as_given_even_a_withheld_name() -> None:
    env = ChildEnvironment(True, {"MARKER": "v2", "TUNNEL_API_KEY": "the server's own"}).build(PARENT)
    assert env["MARKER"] == "v2"
    assert env["TUNNEL_API_KEY"] == "the server's own"


def test_without_inherit_env_only_the_configured_variables() -> None:
    assert ChildEnvironment(False, {"MARKER": "v2"}).build(PARENT) == {"MARKER": "v2"}


def test_variables_the_file_reads_secrets_from_are_withheld_unless_a_server_names_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The control-plane key from `env:MY_CP_KEY` and another server's header from `env:DOCS_TOKEN`
    reach no server; `git` is handed GH_TOKEN because its own `env:` entry names it, and `plain`, which
    names nothing, does not inherit it."""
    for name in ("MY_CP_KEY", "DOCS_TOKEN", "GH_TOKEN"):
        monkeypatch.setenv(name, PARENT[name])
    config = routing.parse(ROUTES, "routing.yaml")
    git = environment("git", config, tmp_path).build(PARENT)
    assert "MY_CP_KEY" not in git
    assert "DOCS_TOKEN" not in git
    assert git["GH_TOKEN"] == "gh-token-secret"
    assert git["MODE"] == "env-like-but-literal"
    assert git["PATH"] == "/usr/bin"
    assert environment("clock", config, tmp_path).build(PARENT) == {"TZ": "UTC"}
    plain = environment("plain", config, tmp_path).build(PARENT)
    assert "GH_TOKEN" not in plain  # read for `git` only
    assert plain["PATH"] == "/usr/bin"


def test_an_unresolvable_reference_in_env_is_named_by_its_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GH_TOKEN", raising=False)
    config = routing.parse(ROUTES, "routing.yaml")
    with pytest.raises(ConfigError) as caught:
        environment("git", config, tmp_path)
    assert "servers.git.stdio.env.GH_TOKEN" in str(caught.value)
    assert "gh-token-secret" not in str(caught.value)
