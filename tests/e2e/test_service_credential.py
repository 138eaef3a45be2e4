"""End to end, service credentials (issue 18, scope 4): the gateway swaps the user's token for its own.

Real parts on 127.0.0.1: an identity provider's token endpoint (tests/support/oauth_token_service.py:
RFC 6749 §4.4 client credentials and RFC 8693 token exchange, JWTs, JWKS, every request counted),
an MCP server built on the official SDK's resource-server auth that verifies those JWTs against the
server's own audience and reports who called (tests/support/servers/oauth_resource_server.py), and
the gateway with its embedded relay. Clients are the official SDK client and raw HTTP (to control
the `Authorization` header exactly). Four servers in routing.yaml point at the same MCP server:
`cc` (client credentials), `obo` (token exchange), `short` (token exchange for tokens that live
seconds) and `down` (token exchange at a port that refuses connections). Every test ends with the
sweep: no client secret and no token in anything the gateway printed (it logs at DEBUG).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client

from gateway.protocol.errors import SERVICE_CREDENTIAL_REFUSED
from tests.support.harness import PYTHON, SERVERS, Process, process, tool_text
from tests.support.oauth_token_service import CLIENT_CREDENTIALS, TOKEN_EXCHANGE, TokenService
from tests.support.otlp_receiver import FAST_EXPORT
from tests.support.sweep import Sweep
from tests.support.waiting import until

CLIENT_ID = "mcp-gateway"
SECRET = "svc-secret-Qk93-never-logged"
AUDIENCE = "api://notes"
SHORT_AUDIENCE = "api://notes-short"
PORT = r"PORT (\d+)"
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Stack:
    idp: TokenService
    server: str
    gateway: Process
    urls: dict[str, str]
    log: Path

    async def seen(self) -> dict[str, Any]:
        """The MCP server's count of requests and the hashes of the bearer tokens they carried."""
        async with httpx2.AsyncClient() as http:
            counts: dict[str, Any] = (await http.get(f"{self.server}/test/requests")).json()
        return counts

    async def call(self, channel: str, user: str | None = None, *, id: int = 1) -> httpx2.Response:
        """A raw `tools/call whoami` on a channel, with `Authorization: Bearer user` when given."""
        body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
        headers = HEADERS | ({"Authorization": f"Bearer {user}"} if user is not None else {})
        async with httpx2.AsyncClient(timeout=60) as http:
            return await http.post(self.urls[channel], json=body, headers=headers)

    async def whoami(self, channel: str, user: str | None = None) -> dict[str, Any]:
        answer = await self.call(channel, user)
        assert answer.status_code == 200, answer.text
        result = message(answer)["result"]
        assert not result.get("isError"), result
        seen: dict[str, Any] = json.loads(result["content"][0]["text"])
        return seen

    def sweep(self) -> None:
        """The secret and every token (users' and issued) appear nowhere in the gateway's output."""
        found = Sweep()
        found.add("gateway stdout", self.gateway.lines)
        found.add("gateway stderr", self.log.read_text().splitlines())
        assert found.searched() > 10
        secrets = {"client secret": SECRET} | {f"token {i}": t for i, t in enumerate(self.idp.issued)}
        assert found.leaks(secrets) == []


def message(answer: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC answer of a Streamable HTTP response, JSON or SSE."""
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        datas = [line[5:].strip() for line in answer.text.splitlines() if line.startswith("data:")]
        found: dict[str, Any] = next(json.loads(d) for d in reversed(datas) if d and '"id"' in d)
        return found
    decoded: dict[str, Any] = answer.json()
    return decoded


@contextlib.asynccontextmanager
async def service_stack(tmp_path: Path, *, telemetry: dict[str, Any] | None = None) -> AsyncIterator[Stack]:
    """The stack; `telemetry` is routing.yaml's `telemetry:` section (exporting fast) when given."""
    refused = socket.socket()  # bound, never listening: the `down` server's token endpoint refuses
    refused.bind(("127.0.0.1", 0))
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(refused.close)
        idp = await stack.enter_async_context(TokenService(client_id=CLIENT_ID, client_secret=SECRET))
        idp.lifetimes[SHORT_AUDIENCE] = 3
        server_proc = await stack.enter_async_context(
            process(
                PYTHON,
                SERVERS / "oauth_resource_server.py",
                *("--issuer", idp.issuer, "--jwks", f"{idp.issuer}/jwks"),
                *("--audience", AUDIENCE, "--audience", SHORT_AUDIENCE),
            )
        )
        server = f"http://127.0.0.1:{(await server_proc.wait_for(PORT))[1]}"
        client = {"client_id": CLIENT_ID, "client_secret": "env:NOTES_CLIENT_SECRET"}
        exchange = {"token_url": idp.token_url, **client}

        def entry(credential: dict[str, Any]) -> dict[str, Any]:
            return {"http": {"url": f"{server}/mcp", "service_credential": credential}}

        document = {
            "relay": {"listen": "127.0.0.1:0"},
            "servers": {
                "cc": entry({"client_credentials": {"token_url": idp.token_url, "audience": AUDIENCE, **client}}),
                "obo": entry({"token_exchange": {**exchange, "audience": AUDIENCE}}),
                "short": entry({"token_exchange": {**exchange, "audience": SHORT_AUDIENCE}, "refresh_before_s": 1}),
                "down": entry(
                    {"token_exchange": {**exchange, "token_url": f"http://127.0.0.1:{refused.getsockname()[1]}/t"}}
                ),
            },
            "channels": {name: [name] for name in ("cc", "obo", "short", "down")},
        }
        if telemetry is not None:
            document["telemetry"] = telemetry
        routes = tmp_path / "routing.yaml"
        routes.write_text(json.dumps(document))
        log = tmp_path / "gateway.err"
        errors = stack.enter_context(log.open("wb"))
        gateway = await stack.enter_async_context(
            process(
                PYTHON,
                *("-m", "gateway.cli", "--log-level", "DEBUG", "--routes", routes),
                env={"NOTES_CLIENT_SECRET": SECRET, **(FAST_EXPORT if telemetry is not None else {})},
                stderr=errors,
            )
        )
        await gateway.wait_for(r"^gateway: ready$")
        urls = {}
        for line in gateway.lines:
            if found := re.match(r"MCP endpoint \(channel (\S+)\): (\S+)", line):
                urls[found[1]] = found[2]
        yield Stack(idp, server, gateway, urls, log)
        assert idp.violations == []


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with service_stack(tmp_path) as running:
        yield running


async def test_client_credentials_one_service_token_for_every_caller_fetched_once(stack: Stack) -> None:
    """RFC 6749 §4.4 (client credentials, the client authenticated by HTTP Basic, §2.3.1): the server
    sees the gateway's service token, whoever calls; the user's token never reaches it; the token
    endpoint is asked once however many calls, concurrent ones included. The start-up lines say where
    each protected server's token comes from."""
    said = "\n".join(stack.gateway.lines)
    assert "server cc: up, requires authorization (the gateway sends its client-credentials token)" in said
    assert "server obo: up, requires authorization (the gateway exchanges each user's token" in said
    user = stack.idp.user_token("alice")
    first = await asyncio.gather(*(stack.whoami("cc", user if i % 2 else None) for i in range(8)))
    async with Client(stack.urls["cc"]) as client:  # the official SDK client, bringing no token at all
        assert {tool.name for tool in (await client.list_tools()).tools} == {"whoami", "echo"}
        via_sdk = json.loads(tool_text(await client.call_tool("whoami", {})))
    assert stack.idp.counted(CLIENT_CREDENTIALS) == 1
    (issued,) = stack.idp.granted(CLIENT_CREDENTIALS)
    assert issued.issued is not None
    for seen in [*first, via_sdk]:
        assert seen["subject"] == CLIENT_ID
        assert seen["audience"] == AUDIENCE
        assert seen["token_sha256"] == sha(issued.issued)
    tokens = (await stack.seen())["tokens"]
    assert sha(user) not in tokens
    assert set(tokens) == {sha(issued.issued)}
    stack.sweep()


async def test_on_behalf_of_each_user_gets_their_own_token_for_the_servers_audience(stack: Stack) -> None:
    """RFC 8693 §2.1 (the user's access token as `subject_token`, `audience` the server's) and §2.2.1:
    two users get two exchanged tokens, each with its own `sub` and the server's audience; each is
    exchanged once and reused (concurrent first calls share one exchange); the server never sees a
    user's own token."""
    alice, bob = stack.idp.user_token("alice"), stack.idp.user_token("bob")
    seen = await asyncio.gather(*(stack.whoami("obo", user) for user in [alice, bob] * 4))
    seen += [await stack.whoami("obo", alice), await stack.whoami("obo", bob)]
    by_subject = {(s["subject"], s["audience"], s["token_sha256"]) for s in seen}
    exchanged = {r.subject: r.issued for r in stack.idp.granted(TOKEN_EXCHANGE)}
    assert stack.idp.counted(TOKEN_EXCHANGE) == 2
    assert set(exchanged) == {"alice", "bob"}
    assert by_subject == {(name, AUDIENCE, sha(str(exchanged[name]))) for name in ("alice", "bob")}
    tokens = (await stack.seen())["tokens"]
    assert sha(alice) not in tokens
    assert sha(bob) not in tokens
    stack.sweep()


async def test_an_exchanged_token_is_exchanged_again_once_it_expires(stack: Stack) -> None:
    """RFC 8693 §2.2.1 `expires_in`: a token of a few seconds is refreshed ahead of its expiry and
    the new one is sent (polled for: the machine's speed decides when, not the test)."""
    alice = stack.idp.user_token("alice")
    first = await stack.whoami("short", alice)
    assert first["audience"] == SHORT_AUDIENCE

    async def refreshed() -> bool:
        now = await stack.whoami("short", alice)
        assert now["subject"] == "alice"
        return len(stack.idp.granted(TOKEN_EXCHANGE, "alice")) >= 2 and now["token_sha256"] != first["token_sha256"]

    await until(refreshed, within_s=60, every_s=0.2)
    tokens = [r.issued for r in stack.idp.granted(TOKEN_EXCHANGE, "alice")]
    assert sha(str(tokens[0])) == first["token_sha256"]
    assert (await stack.whoami("short", alice))["token_sha256"] in {sha(str(t)) for t in tokens[1:]}
    stack.sweep()


async def test_refused_missing_and_unreachable_never_reach_the_server(stack: Stack) -> None:
    """A refused exchange (RFC 6749 §5.2 `invalid_grant`) is a JSON-RPC error naming the code (403);
    no user token on an on-behalf-of server is a 401 with a Bearer challenge (RFC 6750 §3); an
    unreachable token endpoint is the tunnel's -32603 failure with `tunnel_failure` (502). None of
    them calls the server: its request count does not move. Nothing echoes a token."""
    stack.idp.refused_subjects.add("mallory")
    mallory, alice = stack.idp.user_token("mallory"), stack.idp.user_token("alice")
    before = (await stack.seen())["total"]

    refused = await stack.call("obo", mallory)
    assert refused.status_code == 403
    error = message(refused)["error"]
    assert error["code"] == SERVICE_CREDENTIAL_REFUSED
    assert "invalid_grant" in error["message"]
    assert error["data"] == {"error": "invalid_grant"}
    assert mallory not in refused.text

    missing = await stack.call("obo")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")

    down = await stack.call("down", alice)
    assert down.status_code == 502
    failure = message(down)["error"]
    assert failure["code"] == -32603
    assert failure["data"]["tunnel_failure"]["source"] == "connect"
    assert failure["data"]["tunnel_failure"]["upstream_response_received"] is False
    assert alice not in down.text

    assert (await stack.seen())["total"] == before
    assert [r.subject for r in stack.idp.requests] == ["mallory"]  # the missing token asked nothing
    stack.sweep()
