"""Gateway and `gateway relay` with workload identity only: no API key, no gateway key (issue 17).

The gateway exchanges a Kubernetes-style projected token (a JWT signed with a key made here, its
issuer's JWKS on loopback) at the relay's `POST /oauth/token` (RFC 8693) and polls with the access
token it gets. The relay maps the token's subject to tunnel A only: calls on A are served end to end
through the official MCP SDK client, a token bound to A never polls B, and an exchange asking for B
is refused with the RFC 6749 error named in the gateway's start-up output.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from mcp import Client

from tests.support.gateway_process import gateway_env, run_gateway, stdio
from tests.support.harness import tool_text
from tests.support.identity import (
    ISSUER,
    SUBJECT,
    IssuerKey,
    RelayProcess,
    claims,
    identity_yaml,
    jwks_server,
    relay_process,
    write_signing_key,
)

TUNNEL_A = "tunnel_a"
TUNNEL_B = "tunnel_b"
OTHER = "system:serviceaccount:segment-b:gateway"


@contextlib.asynccontextmanager
async def relay_with_identity(tmp_path: Path, key: IssuerKey) -> AsyncIterator[RelayProcess]:
    """A relay whose two tunnels take access tokens only: SUBJECT may use A, OTHER may use B."""
    async with jwks_server([key]) as jwks:
        config = (
            "listen: '127.0.0.1:0'\n"
            "response_timeout_s: 30\n"
            f"tunnels:\n  {TUNNEL_A}: {{name: A}}\n  {TUNNEL_B}: {{name: B}}\n"
            + identity_yaml(
                jwks.url, [write_signing_key(tmp_path / "relay-key.pem")], {SUBJECT: [TUNNEL_A], OTHER: [TUNNEL_B]}
            )
        )
        async with relay_process(config, tmp_path / "relay") as relay:
            yield relay


def routing(relay: RelayProcess, token_file: Path, *, tunnel: str, service_account: str) -> str:
    """A gateway polling `tunnel` with workload identity against the relay's token endpoint."""
    return json.dumps(
        {
            "control_plane": {
                "url": relay.url,
                "tunnel_id": tunnel,
                "workload_identity": {
                    "token_url": f"{relay.url}/oauth/token",
                    "identity_provider_id": ISSUER,
                    "service_account_id": service_account,
                    "subject_token": f"file:{token_file}",
                },
            },
            "servers": {"local": stdio()},
            "channels": {"main": ["local"]},
            "ops": {"listen": "127.0.0.1:0"},
        }
    )


def no_keys() -> dict[str, str]:
    """The environment with no API key and none of the OPENAI_IDENTITY_* variables."""
    env = gateway_env()
    for name in (
        "TUNNEL_API_KEY",
        "OPENAI_IDENTITY_PROVIDER_ID",
        "OPENAI_SERVICE_ACCOUNT_ID",
        "OPENAI_IDENTITY_TOKEN_FILE",
    ):
        env.pop(name, None)
    return env


async def test_a_gateway_with_only_workload_identity_serves_its_tunnel_and_no_other(tmp_path: Path) -> None:
    key = IssuerKey.ec()
    token_file = tmp_path / "token"
    token_file.write_text(key.sign(claims()))
    async with relay_with_identity(tmp_path, key) as relay:
        gateway_a = routing(relay, token_file, tunnel=TUNNEL_A, service_account=TUNNEL_A)
        async with run_gateway(gateway_a, tmp_path, env=no_keys()) as gw:
            async with Client(f"{relay.url}/v1/mcp/{TUNNEL_A}/main") as client:
                tools = {tool.name for tool in (await client.list_tools()).tools}
                assert "echo" in tools
                assert tool_text(await client.call_tool("echo", {"text": "through A"})) == "through A"
            assert not [line for line in gw.stderr if "Bearer " in line]

        # A token the relay bound to tunnel A, used to poll tunnel B: the tunnel API refuses it (401).
        (tmp_path / "b").mkdir()
        crossing = routing(relay, token_file, tunnel=TUNNEL_B, service_account=TUNNEL_A)
        async with run_gateway(crossing, tmp_path / "b", env=no_keys(), ready=r"^waiting: |NOT ready") as gw:
            await gw.wait_for(r"HTTP 401", stream="stderr")
            await refused_by_the_relay(relay, TUNNEL_B)

        # Asking the relay for tunnel B with a subject that may use only A: the exchange is refused.
        (tmp_path / "c").mkdir()
        asking = routing(relay, token_file, tunnel=TUNNEL_B, service_account=TUNNEL_B)
        async with run_gateway(asking, tmp_path / "c", env=no_keys(), ready=r"^waiting: credentials") as gw:
            line = await gw.wait_for(r"^waiting: credentials \((.*)\)")
            assert "token exchange refused: unauthorized_client (identity provider " in line[1], line[0]
            assert key.sign(claims())[:40] not in "\n".join(gw.stdout + gw.stderr)


async def refused_by_the_relay(relay: RelayProcess, tunnel: str) -> None:
    """A call on `tunnel` finds no gateway serving it (nobody could poll): the relay says so, not a result."""
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x"}},
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{relay.url}/v1/mcp/{tunnel}/main", json=message, headers={"Accept": "application/json, text/event-stream"}
        ) as resp,
    ):
        assert resp.status >= 400, await resp.text()


pytestmark = pytest.mark.asyncio
