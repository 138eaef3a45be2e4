"""What a server process the gateway starts inherits (gateway/upstream/environment.py): the gateway's
environment without its own control-plane credentials, then the server's configured `env`."""

from __future__ import annotations

from gateway.upstream.environment import GATEWAY_CREDENTIAL_VARIABLES, child_environment

PARENT = {
    "PATH": "/usr/bin",
    "HOME": "/home/gw",
    "TUNNEL_API_KEY": "tk-secret",
    "OPENAI_IDENTITY_PROVIDER_ID": "idp_1",
    "OPENAI_SERVICE_ACCOUNT_ID": "sa_1",
    "OPENAI_IDENTITY_TOKEN_FILE": "/var/run/secrets/tokens/openai",
    "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks/token",
}


def test_inherited_environment_keeps_everything_but_the_gateways_credentials() -> None:
    env = child_environment(True, {}, PARENT)
    assert env == {k: v for k, v in PARENT.items() if k not in GATEWAY_CREDENTIAL_VARIABLES}
    assert "TUNNEL_API_KEY" not in env
    assert not [k for k in env if k.startswith("OPENAI_IDENTITY") or k == "OPENAI_SERVICE_ACCOUNT_ID"]
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == PARENT["AWS_WEB_IDENTITY_TOKEN_FILE"], "a server's own AWS identity"


def test_configured_variables_are_set_as_given_even_a_withheld_name() -> None:
    env = child_environment(True, {"MARKER": "v2", "TUNNEL_API_KEY": "the server's own"}, PARENT)
    assert env["MARKER"] == "v2"
    assert env["TUNNEL_API_KEY"] == "the server's own"


def test_without_inherit_env_only_the_configured_variables() -> None:
    assert child_environment(False, {"MARKER": "v2"}, PARENT) == {"MARKER": "v2"}
