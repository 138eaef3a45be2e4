"""Capabilities: what the gateway declares for its own sessions, and what each client declared.

The gateway initializes a handshake-era server itself (stdio, aggregated channels, its own HTTP
session) and declares the client capabilities it can carry to clients (elicitation, sampling,
roots: gateway.channels.mrtr). Per request it checks what the calling client declared: a server request the
client cannot answer is refused with -32021 instead of being passed on. Shown end to end with
`@modelcontextprotocol/server-everything` (Node 22 in `.tools/`, as tests/e2e/test_conformance.py
uses it) and the official SDK client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp_types import ElicitRequestParams, ElicitResult
from msgspec import Raw

from gateway.channels.mrtr import missing_capability
from gateway.protocol.wire import JsonRpcMessage
from tests.support.conformance_tools import everything_stdio_routes, require_tools
from tests.support.harness import MODERN, gateway, legacy_initialize, modern_call, stdio_server

WAIT = 60.0
TOOL = "trigger-elicitation-request"


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    """The relay's MCP URL of a channel serving server-everything over stdio."""
    require_tools()
    async with gateway(everything_stdio_routes(), tmp_path) as gw:
        yield gw.urls["main"]


@pytest.mark.conformance
async def test_mrtr_bridge_carries_server_everythings_elicitation(url: str) -> None:
    """MCP 2025-11-25 basic/lifecycle ("Capability Negotiation") and client/elicitation
    ("Capabilities"): the gateway's `initialize` declares elicitation, so server-everything offers
    its elicitation tool; MCP 2026-07-28 basic/patterns/mrtr: its `elicitation/create` during the
    call reaches a 2026-07-28 SDK client as `input_required`, and the client's answer goes back."""
    asked: list[str] = []

    async def on_elicit(context: object, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})

    async with Client(url, mode=MODERN, elicitation_callback=on_elicit) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert TOOL in tools
        result = await client.call_tool(TOOL, {})
    assert asked == ["Please provide inputs for the following fields:"]
    assert not result.is_error
    assert "Ada Lovelace" in json.dumps(result.model_dump(mode="json"))


def _call(id: int, capabilities: dict[str, Any], tool: str = TOOL) -> tuple[dict[str, Any], dict[str, str]]:
    meta = {"io.modelcontextprotocol/clientCapabilities": capabilities}
    return modern_call(id, tool, {}, **meta)


@pytest.mark.conformance
async def test_a_client_without_elicitation_gets_32021(url: str) -> None:
    """MCP 2026-07-28 MissingRequiredClientCapabilityError (schema: -32021, `data.requiredCapabilities`,
    HTTP 400 Bad Request): a 2026-07-28 client that did not declare elicitation is refused when the
    server asks for it, instead of being sent an `elicitation/create` it cannot answer; the server's
    call is abandoned and the process goes on serving (the same request with the capability works)."""
    async with httpx2.AsyncClient(timeout=WAIT) as http:
        body, headers = _call(1, {})
        answer = await http.post(url, json=body, headers=headers)
        while answer.status_code == 503:  # the gateway has not polled yet
            answer = await http.post(url, json=body, headers=headers)
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == -32021
        assert error["data"] == {"requiredCapabilities": {"elicitation": {"form": {}}}}
        assert answer.json()["id"] == 1

        body, headers = _call(2, {"elicitation": {}})
        asked = await http.post(url, json=body, headers=headers)
        assert asked.status_code == 200, asked.text
        events = [json.loads(line[5:]) for line in asked.text.splitlines() if line.startswith("data:")]
        result = (events[-1] if events else asked.json())["result"]
        assert result["resultType"] == "input_required"
        (request,) = result["inputRequests"].values()
        assert request["method"] == "elicitation/create"


@pytest.mark.conformance
async def test_a_handshake_era_client_without_elicitation_gets_32021(url: str) -> None:
    """MCP 2025-11-25 client/elicitation ("Capabilities": servers request elicitation only from
    clients that declared it): the gateway's session declared it for every client, so a
    handshake-era client whose `initialize` did not is refused per request with -32021."""
    async with httpx2.AsyncClient(timeout=WAIT) as http:
        answer = await legacy_initialize(http, url)
        while answer.status_code == 503:  # the gateway has not polled yet
            answer = await legacy_initialize(http, url)
        accept = {"Accept": "application/json, text/event-stream"}
        session = {**accept, "Mcp-Session-Id": answer.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": TOOL, "arguments": {}}}
        refused = await http.post(url, json=call, headers=session)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == -32021
        assert refused.json()["error"]["data"]["requiredCapabilities"] == {"elicitation": {"form": {}}}


async def test_aggregated_channels_refuse_undeclared_server_requests_too(tmp_path: Path) -> None:
    """MCP 2026-07-28 MissingRequiredClientCapabilityError on an aggregated channel: a handshake-era
    stdio server behind it (the gateway's own session) asks for elicitation during a call; a
    2026-07-28 client and a handshake-era client that did not declare it are both refused with -32021."""
    routes = (
        "relay: {listen: '127.0.0.1:0'}\n"
        f"servers:\n  s1: {stdio_server()}\n  s2: {stdio_server('--legacy')}\n"
        "channels:\n  all: {servers: [s1, s2]}\n"
    )
    async with gateway(routes, tmp_path) as gw, httpx2.AsyncClient(timeout=WAIT) as http:
        url = gw.urls["all"]
        body, headers = _call(1, {}, "s2__ask_name")
        modern = await http.post(url, json=body, headers=headers)
        while modern.status_code == 503:  # the gateway has not polled yet
            modern = await http.post(url, json=body, headers=headers)
        assert modern.status_code == 400, modern.text
        assert modern.json()["error"]["code"] == -32021

        init = await legacy_initialize(http, url)
        session = {
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": init.headers["mcp-session-id"],
            "MCP-Protocol-Version": "2025-11-25",
        }
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "s2__ask_name", "arguments": {}}}
        legacy = await http.post(url, json=call, headers=session)
        assert legacy.status_code == 400, legacy.text
        assert legacy.json()["error"]["data"] == {"requiredCapabilities": {"elicitation": {"form": {}}}}


def _request(method: str, params: dict[str, Any]) -> JsonRpcMessage:
    return JsonRpcMessage(jsonrpc="2.0", id=Raw(b"1"), method=method, params=Raw(json.dumps(params).encode()))


@pytest.mark.parametrize(
    ("method", "params", "declared", "required"),
    [
        ("elicitation/create", {"message": "m"}, {}, {"elicitation": {"form": {}}}),
        ("elicitation/create", {"message": "m"}, {"elicitation": {}}, None),
        ("elicitation/create", {"mode": "form"}, {"elicitation": {"url": {}}}, {"elicitation": {"form": {}}}),
        ("elicitation/create", {"mode": "url", "url": "https://x"}, {"elicitation": {}}, {"elicitation": {"url": {}}}),
        ("elicitation/create", {"mode": "url", "url": "https://x"}, {"elicitation": {"url": {}}}, None),
        ("sampling/createMessage", {"messages": []}, {"roots": {}}, {"sampling": {}}),
        ("sampling/createMessage", {"messages": []}, {"sampling": {}}, None),
        ("sampling/createMessage", {"messages": [], "tools": []}, {"sampling": {}}, {"sampling": {"tools": {}}}),
        ("roots/list", {}, {"sampling": {}}, {"roots": {}}),
        ("roots/list", {}, {"roots": {"listChanged": True}}, None),
    ],
)
def test_what_each_server_request_requires(
    method: str, params: dict[str, Any], declared: dict[str, Any], required: dict[str, Any] | None
) -> None:
    """MCP 2026-07-28 client/elicitation ("Capabilities": an empty `elicitation` object means form
    mode), client/sampling (`sampling.tools` for tool use) and client/roots: what a server's
    request needs of the client's declared capabilities (`requiredCapabilities` when it is missing)."""
    missing = missing_capability(_request(method, params), Raw(json.dumps(declared).encode()))
    assert (None if missing is None else json.loads(bytes(missing[1]))) == required
