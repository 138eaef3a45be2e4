"""`gateway doctor` on servers that take a service credential (issue 19 part 2 with issue 18 scope 4).

Real parts on 127.0.0.1: an identity provider's token endpoint (tests/support/oauth_token_service.py)
and an MCP server on the official SDK's resource-server auth that accepts only JWTs of that issuer
for its audience (tests/support/servers/oauth_resource_server.py). The doctor obtains the
client-credentials token as the gateway's first call would, finishes the handshake with it and
counts the tools; a refused client secret is named with the keys to check; the token endpoint is a
destination of its own (dns, connect) and the secret never appears in the report.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.doctor_run import failing, one, report_of
from tests.support.gateway_process import gateway_env
from tests.support.harness import PYTHON, SERVERS, process
from tests.support.oauth_token_service import CLIENT_CREDENTIALS, TOKEN_EXCHANGE, TokenService

CLIENT_ID = "mcp-gateway"
SECRET = "doctor-svc-secret-Zx81-never-shown"
AUDIENCE = "api://notes"


@contextlib.asynccontextmanager
async def protected_server() -> AsyncIterator[tuple[TokenService, str]]:
    async with TokenService(client_id=CLIENT_ID, client_secret=SECRET) as idp:
        args = ("--issuer", idp.issuer, "--jwks", f"{idp.issuer}/jwks", "--audience", AUDIENCE)
        async with process(PYTHON, SERVERS / "oauth_resource_server.py", *args) as server:
            port = (await server.wait_for(r"PORT (\d+)"))[1]
            yield idp, f"http://127.0.0.1:{port}/mcp"


def document(idp: TokenService, url: str, grant: str) -> str:
    client = {"client_id": CLIENT_ID, "client_secret": "env:SVC_SECRET"}
    credential = {grant: {"token_url": idp.token_url, "audience": AUDIENCE, **client}}
    return json.dumps(
        {
            "servers": {"notes": {"http": {"url": url, "service_credential": credential}}},
            "channels": {"main": ["notes"]},
        }
    )


@pytest.mark.parametrize("secret", [SECRET, "a-wrong-client-secret"])
async def test_client_credentials_are_obtained_and_the_handshake_finished_with_them(
    secret: str, tmp_path: Path
) -> None:
    async with protected_server() as (idp, url):
        env = gateway_env(SVC_SECRET=secret)
        run, report = await report_of(document(idp, url, "client_credentials"), tmp_path, env=env)
    assert "servers.notes.token_endpoint" in one(report, "dns", "127.0.0.1").detail
    assert one(report, "connect", "servers.notes.token_endpoint").status == "ok"
    assert idp.counted(CLIENT_CREDENTIALS) >= 1
    if secret == SECRET:
        assert run.code == 0, run.stdout
        server = one(report, "server", "servers.notes")
        assert server.status == "ok"
        assert "tools" in server.detail
    else:
        assert run.code == 1
        refused = failing(report, "server", "servers.notes")
        assert "invalid_client" in refused.cause
        assert "servers.notes.http.service_credential.client_credentials.client_id" in refused.mitigation
    assert SECRET not in run.stdout + run.stderr
    assert secret not in run.stdout + run.stderr


async def test_an_on_behalf_of_server_is_up_and_its_exchange_left_to_the_first_call(tmp_path: Path) -> None:
    async with protected_server() as (idp, url):
        run, report = await report_of(
            document(idp, url, "token_exchange"), tmp_path, env=gateway_env(SVC_SECRET=SECRET)
        )
    assert run.code == 0, run.stdout
    server = one(report, "server", "servers.notes")
    assert "the gateway exchanges it at the first call" in server.detail
    assert idp.counted(TOKEN_EXCHANGE) == 0
