"""End to end, OAuth: an official-SDK client, given only the relay URL, authorizes and calls a private server.

Real parts, each its own process on 127.0.0.1 (ready when it prints a line, never a sleep):
- an authorization server built on the official MCP SDK's authorization routes, authorization code
  with PKCE and dynamic client registration, whose test user is approved at once
  (tests/support/servers/oauth_authorization_server.py; JWT access tokens, JWKS);
- an MCP server built on the SDK's resource-server auth that verifies those tokens
  (tests/support/servers/oauth_resource_server.py; its own metadata names its private URL);
- `gateway relay` and the gateway, polling it.
The client is the SDK's `OAuthClientProvider` on its `streamable_http_client`: it gets the 401, finds
the relay's metadata (RFC 9728; the discovery runs through the tunnel as an `oauth_discovery`
command), the authorization server's (RFC 8414), registers (RFC 7591), signs in (RFC 7636 PKCE),
and calls tools; the server sees that user's token. Once in the handshake era and once in 2026-07-28
(MCP authorization, 2025-11-25 and 2026-07-28, "Authorization Flow Steps").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

from gateway.observe.telemetry import RELAY_SERVICE
from tests.support.harness import PYTHON, SERVERS, Process, process
from tests.support.otlp_receiver import otlp_receiver

TUNNEL = "tunnel_oauth_e2e"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "300"}
GATEWAY_KEY = "e2e-gateway-key-Mx02"
PORT = r"PORT (\d+)"
REDIRECT = "http://127.0.0.1:9/callback"
"""Where the authorization server sends the browser back; the test reads the redirect, nothing listens."""


@dataclass
class Stack:
    relay: str
    issuer: str
    server: str
    gateway: Process
    relay_process: Process
    ops: str | None = None

    def url(self, channel: str) -> str:
        return f"{self.relay}/v1/mcp/{TUNNEL}/{channel}"


@contextlib.asynccontextmanager
async def oauth_stack(tmp_path: Path, *, receiver: str | None = None, user_auth: bool = False) -> AsyncIterator[Stack]:
    """The authorization server, the relay, the protected server and the gateway, started in that
    order (each needs the one before's address); their logs go to `gateway.err` and `relay.err` in
    `tmp_path`. With `receiver` (an OTLP URL) the gateway and the relay log at DEBUG (the relay's
    access log too), export telemetry there, and the gateway serves `/metrics`: a run to sweep. With
    `user_auth` the relay checks users' tokens at the edge (scope `notes` required)."""
    env = {"E2E_GATEWAY_KEY": GATEWAY_KEY}
    sweep = receiver is not None
    if sweep:
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": str(receiver), **FAST_EXPORT}
    verbose = ["--log-level", "DEBUG"] if sweep else []
    async with contextlib.AsyncExitStack() as stack:
        errors = {name: stack.enter_context((tmp_path / f"{name}.err").open("wb")) for name in ("gateway", "relay")}
        auth = await stack.enter_async_context(process(PYTHON, SERVERS / "oauth_authorization_server.py"))
        issuer = f"http://127.0.0.1:{(await auth.wait_for(PORT))[1]}"
        relay_file = tmp_path / "relay.yaml"
        edge = f", user_auth: {{issuer: '{issuer}', jwks_uri: '{issuer}/jwks', required_scopes: [notes]}}"
        relay_file.write_text(
            f"listen: 127.0.0.1:0\naccess_log: {str(sweep).lower()}\n"
            f"tunnels:\n  {TUNNEL}: {{gateway_key: 'env:E2E_GATEWAY_KEY'{edge if user_auth else ''}}}\n"
        )
        relay_proc = await stack.enter_async_context(
            process(
                PYTHON, "-m", "gateway.cli", *verbose, "relay", "--config", relay_file, env=env, stderr=errors["relay"]
            )
        )
        relay = (await relay_proc.wait_for(r"^relay: ready (\S+)$"))[1]
        audience = f"{relay}/v1/mcp/{TUNNEL}/notes"
        server_proc = await stack.enter_async_context(
            process(
                PYTHON,
                SERVERS / "oauth_resource_server.py",
                "--issuer",
                issuer,
                "--jwks",
                f"{issuer}/jwks",
                "--audience",
                audience,
                "--scope",
                "notes",
            )
        )
        server = f"http://127.0.0.1:{(await server_proc.wait_for(PORT))[1]}"
        document: dict[str, object] = {
            "control_plane": {"url": relay, "tunnel_id": TUNNEL, "api_key": "env:E2E_GATEWAY_KEY"},
            "servers": {"notes": {"http": {"url": f"{server}/mcp"}}},
            "channels": {"notes": ["notes"]},
        }
        if sweep:
            document["telemetry"] = {"endpoint": receiver, "capture_arguments": True, "service_name": "oauth-sweep"}
            document["ops"] = {"listen": "127.0.0.1:0"}
        routes = tmp_path / "routing.yaml"
        routes.write_text(json.dumps(document))
        gateway = await stack.enter_async_context(
            process(PYTHON, "-m", "gateway.cli", *verbose, "--routes", routes, env=env, stderr=errors["gateway"])
        )
        await gateway.wait_for(r"^gateway: ready$")
        ops = (await gateway.wait_for(r"^ops: listening on (\S+)"))[1] if sweep else None
        yield Stack(relay, issuer, server, gateway, relay_proc, ops)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with oauth_stack(tmp_path) as running:
        yield running


class Memory:
    """The SDK's `TokenStorage`, in memory (the test reads the token the server must see)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Browser:
    """The user's browser: opens the authorization URL, where the test user is approved at once, and
    hands the redirect's code back to the client (`redirect_handler`, `callback_handler`)."""

    def __init__(self) -> None:
        self.visits: list[str] = []
        self._result: AuthorizationCodeResult | None = None

    async def open(self, url: str) -> None:
        self.visits.append(url)
        async with httpx2.AsyncClient() as http:
            answer = await http.get(url, follow_redirects=False)
        assert answer.status_code in (302, 303, 307), answer.text
        location = urlsplit(answer.headers["Location"])
        assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
        query = parse_qs(location.query)
        self._result = AuthorizationCodeResult(
            code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0]
        )

    async def callback(self) -> AuthorizationCodeResult:
        assert self._result is not None
        return self._result


@dataclass
class Session:
    """What one authorized client run left behind."""

    storage: Memory
    browser: Browser
    provider: OAuthClientProvider
    whoami: dict[str, str]
    echoed: str
    tools: set[str]


async def authorized_session(url: str, mode: str) -> Session:
    """The SDK client, given only `url`: the whole OAuth flow, then `tools/list` and two calls."""
    storage, browser = Memory(), Browser()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="e2e-client",
            redirect_uris=[AnyUrl(REDIRECT)],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=browser.open,
        callback_handler=browser.callback,
    )
    async with (
        httpx2.AsyncClient(auth=provider, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,  # type: ignore[arg-type]
    ):
        tools = await client.list_tools()
        result = await client.call_tool("whoami", {})
        echoed = await client.call_tool("echo", {"text": "through the tunnel"})
    return Session(
        storage,
        browser,
        provider,
        json.loads(result.content[0].text),  # type: ignore[union-attr]
        echoed.content[0].text,  # type: ignore[union-attr]
        {tool.name for tool in tools.tools},
    )


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_an_sdk_client_authorizes_through_the_tunnel_and_calls_as_its_user(stack: Stack, mode: str) -> None:
    """MCP authorization (2025-11-25, kept in 2026-07-28): 401 + `WWW-Authenticate` with
    `resource_metadata` (RFC 9728 §5.1) pointing at the relay; protected resource metadata at the relay
    whose `resource` is the URL the client called (RFC 9728 §3.3), fetched from the private server
    through the tunnel; the authorization server's metadata (RFC 8414 §3); dynamic registration
    (RFC 7591); authorization code with PKCE (RFC 7636) and `resource` (RFC 8707); every MCP
    request then carries `Authorization: Bearer`, which reaches the server unchanged."""
    url = stack.url("notes")
    run = await authorized_session(url, mode)
    storage, browser, provider, seen = run.storage, run.browser, run.provider, run.whoami
    assert run.tools == {"whoami", "echo"}
    assert storage.tokens is not None
    assert seen["subject"] == "alice"
    assert seen["token_sha256"] == hashlib.sha256(storage.tokens.access_token.encode()).hexdigest()
    assert run.echoed == "through the tunnel"
    assert len(browser.visits) == 1
    assert browser.visits[0].startswith(f"{stack.issuer}/authorize?")
    metadata = provider.context.protected_resource_metadata
    assert metadata is not None
    assert str(metadata.resource) == url  # the relay's, not the private server's
    assert [str(server).rstrip("/") for server in metadata.authorization_servers] == [stack.issuer]
    async with httpx2.AsyncClient() as raw:
        counts = (await raw.get(f"{stack.server}/test/requests")).json()
    assert counts["authorized"] >= 3  # the calls reached the server with the user's token


WRONG_TOKEN = "sweep-wrong-user-token-Ke72Lp"
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
ACCEPT = {"Accept": "application/json, text/event-stream"}


async def test_user_tokens_and_challenges_stay_out_of_logs_spans_and_metrics(tmp_path: Path) -> None:
    """design.md, Non-negotiables, and issue 18 scope 1: the user's `Authorization` and the server's
    `WWW-Authenticate` never reach logs, spans, metrics or error text (the secret sweep of
    tests/e2e/test_secret_sweep.py, for OAuth): both eras authorize and call, a missing and a wrong
    token are refused; the gateway and the relay log at DEBUG (the relay's access log too) and
    export traces and metrics to a real OTLP receiver; every line, export and `/metrics` is searched."""
    async with otlp_receiver() as receiver:
        async with oauth_stack(tmp_path, receiver=receiver.url) as stack:
            runs = [await authorized_session(stack.url("notes"), mode) for mode in ("legacy", "2026-07-28")]
            challenges: list[str] = []
            async with httpx2.AsyncClient() as http:
                for headers in ({}, {"Authorization": f"Bearer {WRONG_TOKEN}"}):
                    refused = await http.post(stack.url("notes"), json=PING, headers={**ACCEPT, **headers})
                    assert refused.status_code == 401
                    challenges += refused.headers.get_list("WWW-Authenticate")
                    direct = await http.post(f"{stack.server}/mcp", json=PING, headers={**ACCEPT, **headers})
                    challenges += direct.headers.get_list("WWW-Authenticate")
                assert stack.ops is not None
                metrics = (await http.get(f"{stack.ops}/metrics")).text
            await receiver.wait_for(lambda r: {span.service for span in r.spans} >= {"oauth-sweep", RELAY_SERVICE})
        outputs = {
            "gateway stderr": (tmp_path / "gateway.err").read_text(errors="replace"),
            "relay stderr": (tmp_path / "relay.err").read_text(errors="replace"),
            "gateway stdout": "\n".join(stack.gateway.lines),
            "relay stdout": "\n".join(stack.relay_process.lines),
            "/metrics": metrics,
            "OTLP exports": "\n".join(body.decode(errors="replace") for body in receiver.raw),
        }
    secrets = {"wrong token": WRONG_TOKEN}
    for i, run in enumerate(runs):
        assert run.storage.tokens is not None
        secrets[f"access token {i}"] = run.storage.tokens.access_token
        secrets[f"refresh token {i}"] = run.storage.tokens.refresh_token or "-"
    secrets |= {f"challenge {i}": value for i, value in enumerate(challenges)}
    assert len(challenges) == 4
    leaks = [
        f"{name} in {where}" for where, text in outputs.items() for name, value in secrets.items() if value in text
    ]
    leaks += [f"resource_metadata in {where}" for where, text in outputs.items() if "resource_metadata" in text]
    assert leaks == []
    assert "DEBUG" in outputs["gateway stderr"]
    assert sum(len(text) for text in outputs.values()) > 10_000, "the sweep searched too little to mean anything"
