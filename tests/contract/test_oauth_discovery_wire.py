"""The `oauth_discovery` wire exchange and the 401 passthrough, as the control plane sees them.

The real gateway process polls the scripted control plane (tests/support/scripted_cp.py), which validates
every body the gateway posts against `openapi.json` plus the official client's extension (the
`ResponsePayloadType` enum plus `oauth_discovery_response`, a polled `oauth_discovery` command:
tests/support/openapi.py `validate_extended`; README, "Outside openapi.json"). The servers behind it are
the official MCP SDK's resource-server auth (tests/support/servers/oauth_resource_server.py) and its
authorization routes (tests/support/servers/oauth_authorization_server.py), each in its own process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.gateway_process import GatewayProcess, cli_args, run_gateway, stdio
from tests.support.harness import PYTHON, SERVERS, process
from tests.support.scripted_cp import ScriptedControlPlane

PORT = r"PORT (\d+)"
TOKEN = "tok-wire-alice-Q93kd"
"""The user's token the client forwards; it must reach the server and nowhere else."""
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "wire-test", "version": "1"},
}


@dataclass
class Setup:
    cp: ScriptedControlPlane
    gateway: GatewayProcess
    server: str
    """The protected server's base URL (private)."""
    issuer: str
    ops: str


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with contextlib.AsyncExitStack() as stack:
        auth = await stack.enter_async_context(process(PYTHON, SERVERS / "oauth_authorization_server.py"))
        issuer = f"http://127.0.0.1:{(await auth.wait_for(PORT))[1]}"
        server_proc = await stack.enter_async_context(
            process(PYTHON, SERVERS / "oauth_resource_server.py", "--static", f"{TOKEN}=alice", "--issuer", issuer)
        )
        server = f"http://127.0.0.1:{(await server_proc.wait_for(PORT))[1]}"
        cp = await stack.enter_async_context(ScriptedControlPlane())
        document = {
            "servers": {"notes": {"http": {"url": f"{server}/mcp"}}, "files": stdio()},
            "channels": {"notes": ["notes"], "files": ["files"]},
            "ops": {"listen": "127.0.0.1:0"},
            "logging": {"level": "DEBUG"},
        }
        gateway = await stack.enter_async_context(run_gateway(json.dumps(document), tmp_path, *cli_args(cp)))
        ops = (await gateway.wait_for(r"ops: listening on (\S+)"))[1]
        yield Setup(cp, gateway, server, issuer, ops)
        assert cp.violations == []
        assert cp.duplicates() == {}


async def test_oauth_discovery_is_answered_with_one_validated_frame(setup: Setup) -> None:
    """The official client's extension (README, "Outside openapi.json"): `oauth_discovery` on a
    channel whose server is HTTP is answered by exactly one terminal `oauth_discovery_response`
    holding the server's RFC 9728 document member for member and its authorization server's
    RFC 8414 document; the body validates against the contract plus that extension."""
    async with httpx2.AsyncClient() as http:
        direct = (await http.get(f"{setup.server}/.well-known/oauth-protected-resource/mcp")).json()
        as_direct = (await http.get(f"{setup.issuer}/.well-known/oauth-authorization-server")).json()
    request_id = setup.cp.enqueue(command_type="oauth_discovery", channel="notes", response_timeout="20s")
    payload = await setup.cp.answer(request_id)
    assert payload["resp_type"] == "oauth_discovery_response"
    assert payload["resp_code"] == 200
    assert payload["channel"] == "notes"
    answer = payload["resp_json"]
    assert {key: answer[key] for key in direct} == direct
    assert answer["tunnel_authorization_server_metadata"] == as_direct
    assert len(setup.cp.attempts(request_id)) == 1


@pytest.mark.parametrize(
    ("channel", "status", "code"),
    [("files", 400, "oauth_discovery_unsupported"), ("nowhere", 400, "unsupported_channel")],
)
async def test_a_channel_without_an_http_server_answers_a_clear_error(
    setup: Setup, channel: str, status: int, code: str
) -> None:
    """Issue 18, scope 1: a stdio channel has no OAuth metadata; it answers (never hangs) with an API
    error object, as the official client answers a channel it cannot discover."""
    request_id = setup.cp.enqueue(command_type="oauth_discovery", channel=channel, response_timeout="20s")
    payload = await setup.cp.answer(request_id)
    assert payload["resp_type"] == "oauth_discovery_response"
    assert payload["resp_code"] == status
    error = payload["resp_json"]["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    if channel == "files":
        assert "stdio" in error["message"]


async def test_an_expired_discovery_is_dropped_unanswered(setup: Setup) -> None:
    """Tunnel protocol, `response_timeout`: `0s` is already expired, so no response is posted."""
    expired = setup.cp.enqueue(command_type="oauth_discovery", channel="notes", response_timeout="0s")
    after = setup.cp.enqueue(command_type="oauth_discovery", channel="notes", response_timeout="20s")
    await setup.cp.answer(after)
    assert setup.cp.attempts(expired) == []


def whoami(request_id: str) -> dict[str, Any]:
    params = {"name": "whoami", "arguments": {}, "_meta": MODERN_META}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def modern_headers(**more: list[str]) -> dict[str, list[str]]:
    return {"MCP-Protocol-Version": ["2026-07-28"], "Mcp-Method": ["tools/call"], "Mcp-Name": ["whoami"], **more}


async def test_a_401_keeps_its_challenge_and_the_users_token_passes_unchanged(setup: Setup) -> None:
    """MCP authorization, "Authorization Server Location" / RFC 9728 §5.1: the server's 401 reaches the
    control plane with its `WWW-Authenticate` (in `resp_headers`, which the contract allows) so the
    client can discover; the JSON-RPC body is the contract's -32603 with `target_http` provenance.
    "Token Requirements": a request carrying the user's `Authorization` reaches the server with it
    as sent. Neither the token nor the challenge is written to the gateway's logs (DEBUG level)."""
    async with httpx2.AsyncClient() as http:
        direct = await http.post(f"{setup.server}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    challenge = direct.headers.get_list("WWW-Authenticate")
    anonymous = setup.cp.enqueue(whoami("w-1"), channel="notes", headers=modern_headers(), response_timeout="20s")
    payload = await setup.cp.answer(anonymous)
    assert payload["resp_code"] == 401
    assert payload["resp_headers"]["WWW-Authenticate"] == challenge
    failure = payload["resp_json"]["error"]["data"]["tunnel_failure"]
    assert (failure["source"], failure["upstream_status"]) == ("target_http", 401)

    authorized = setup.cp.enqueue(
        whoami("w-2"),
        channel="notes",
        headers=modern_headers(Authorization=[f"Bearer {TOKEN}"]),
        response_timeout="20s",
    )
    payload = await setup.cp.answer(authorized)
    assert payload["resp_code"] == 200
    seen = json.loads(payload["resp_json"]["result"]["content"][0]["text"])
    assert seen == {
        "subject": "alice",
        "client_id": "static",
        "scopes": [],
        "token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest(),
        "audience": None,  # the static test verifier's tokens name none
    }
    output = "\n".join([*setup.gateway.stdout, *setup.gateway.stderr])
    assert TOKEN not in output
    for value in challenge:
        assert value not in output
        assert "resource_metadata" not in output


async def test_a_server_that_wants_authorization_is_up_in_readyz_and_the_status_output(setup: Setup) -> None:
    """Issue 18, scope 1: a server answering the start-up probe 401 is up and requires authorization
    (said on stdout and in `/readyz`), not `NOT ready`; the gateway is ready."""
    await setup.gateway.wait_for(r"^server notes: up, requires authorization")
    assert not any(re.search(r"NOT ready|waiting: .*servers\.notes", line) for line in setup.gateway.stdout)
    async with httpx2.AsyncClient() as http:
        readyz = await http.get(f"{setup.ops}/readyz")
    assert readyz.status_code == 200
    body = readyz.json()
    assert body["checks"]["servers.notes"] == "up, requires authorization"
    assert "servers.notes" not in body["not_ready"]


async def test_the_gateway_answers_for_a_protected_server_only_whom_the_server_accepts(setup: Setup) -> None:
    """MCP authorization, "Token Handling": a protected server would refuse a request with a wrong
    token, so the gateway's own answers on its behalf (a handshake-era `initialize` or `ping` to a
    2026-07-28 server) are given only after the server accepted the caller's token: nothing learned
    from an authorized caller reaches anyone else."""
    initialize = {
        "jsonrpc": "2.0",
        "id": "i-1",
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    authorized = modern_headers(Authorization=[f"Bearer {TOKEN}"])
    learn = setup.cp.enqueue(whoami("w-0"), channel="notes", headers=authorized, response_timeout="20s")
    assert (await setup.cp.answer(learn))["resp_code"] == 200
    ping = {"jsonrpc": "2.0", "id": "p-1", "method": "ping"}
    outcomes = {}
    for name, headers in (("none", {}), ("wrong", {"Authorization": ["Bearer wrong"]})):
        for method, message in (("initialize", initialize), ("ping", ping)):
            request_id = setup.cp.enqueue(message, channel="notes", headers=headers, response_timeout="20s")
            payload = await setup.cp.answer(request_id)
            outcomes[name, method] = payload["resp_code"]
            assert "serverInfo" not in json.dumps(payload)
    assert set(outcomes.values()) == {401}
    accepted = setup.cp.enqueue(
        initialize, channel="notes", headers={"Authorization": [f"Bearer {TOKEN}"]}, response_timeout="20s"
    )
    payload = await setup.cp.answer(accepted)
    assert payload["resp_code"] == 200
    assert payload["resp_json"]["result"]["serverInfo"]["name"] == "oauth-protected-server"
