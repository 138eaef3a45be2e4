"""Client sessions of aggregated channels end to end: resume across a gateway restart, 404 for unknown, ended or
expired sessions, and upstream sessions renewed when a server forgot them.

The relay runs in the test (`recording_relay`) so the gateway process can be stopped and started again while the
client keeps its connection and its `Mcp-Session-Id`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from mcp import Client

from tests.support.harness import (
    Gateway,
    gateway,
    legacy_initialize,
    mux_http,
    mux_stdio,
    tool_text,
)
from tests.support.recording_relay import KEY, TUNNEL, RelayUnderTest

SECRET = "correct horse battery staple, rotated yearly"


def _routes(relay: RelayUnderTest, url: str, extra: str = "") -> str:
    return (
        f"control_plane: {{url: '{relay.url}', tunnel_id: {TUNNEL}, api_key: env:TUNNEL_KEY}}\n"
        f"servers:\n  h: {{http: {{url: '{url}'}}}}\n  s: {mux_stdio('--name', 's')}\n"
        "channels:\n  main: [h, s]\n"
        "sessions: {key: env:SESSION_KEY}\n" + extra
    )


ENV = {"TUNNEL_KEY": KEY, "SESSION_KEY": SECRET}


@contextlib.asynccontextmanager
async def _gateway(routes: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with gateway(routes, tmp_path, env=ENV) as gw:
        yield gw


async def test_session_resumes_across_a_gateway_restart(relay: RelayUnderTest, tmp_path: Path) -> None:
    async with (
        mux_http("--legacy", name="h") as url,
        contextlib.AsyncExitStack() as second,
        contextlib.AsyncExitStack() as first,
    ):
        routes = _routes(relay, url)
        await first.enter_async_context(_gateway(routes, tmp_path))
        async with Client(relay.mcp("main"), mode="legacy") as client:
            held = tool_text(await client.call_tool("h__session_header", {}))
            assert held
            assert tool_text(await client.call_tool("h__echo", {"text": "before"})) == "before"
            await first.aclose()  # the gateway process stops; the relay and the client stay
            await second.enter_async_context(_gateway(routes, tmp_path))
            # A new gateway process: no initialize from the client, and the same upstream session.
            assert tool_text(await client.call_tool("h__echo", {"text": "after"})) == "after"
            assert tool_text(await client.call_tool("h__session_header", {})) == held
        initializes = [body for _, body in relay.recorded.posts if b'"protocolVersion"' in body]
        assert len(initializes) == 1  # one answered initialize: the client's first


async def test_unknown_ended_and_foreign_sessions_get_404(relay: RelayUnderTest, tmp_path: Path) -> None:
    async with (
        mux_http("--legacy", name="h") as url,
        _gateway(_routes(relay, url), tmp_path),
        httpx2.AsyncClient() as http,
    ):
        headers = {"Accept": "application/json, text/event-stream"}
        init = await legacy_initialize(http, relay.mcp("main"))
        assert init.status_code == 200
        session = init.headers["mcp-session-id"]
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "h__echo", "arguments": {"text": "x"}},
        }
        ok = await http.post(relay.mcp("main"), json=call, headers={**headers, "Mcp-Session-Id": session})
        assert ok.status_code == 200
        assert ok.json()["result"]["content"][0]["text"] == "x"

        bogus = await http.post(relay.mcp("main"), json=call, headers={**headers, "Mcp-Session-Id": "g1.bogus"})
        assert bogus.status_code == 404
        assert bogus.json()["error"]["code"] == -32600

        ended = await http.delete(relay.mcp("main"), headers={"Mcp-Session-Id": session})
        assert ended.status_code == 200
        after = await http.post(relay.mcp("main"), json=call, headers={**headers, "Mcp-Session-Id": session})
        assert after.status_code == 404
        again = await http.delete(relay.mcp("main"), headers={"Mcp-Session-Id": session})
        assert again.status_code == 404


async def test_expired_upstream_session_is_renewed_transparently(relay: RelayUnderTest, tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as upstream:
        url = await upstream.enter_async_context(mux_http("--legacy", name="h"))
        port = urlsplit(url).port
        async with _gateway(_routes(relay, url), tmp_path), Client(relay.mcp("main"), mode="legacy") as client:
            first = tool_text(await client.call_tool("h__session_header", {}))
            await upstream.aclose()  # the server restarts on the same port: it forgot every session
            await upstream.enter_async_context(mux_http("--legacy", name="h", port=port))
            assert tool_text(await client.call_tool("h__echo", {"text": "still"})) == "still"
            renewed = tool_text(await client.call_tool("h__session_header", {}))
            assert renewed
            assert renewed != first
