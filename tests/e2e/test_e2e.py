"""End to end: official-SDK client -> relay -> poll channel -> gateway -> official-SDK server.

Every test runs the real gateway process (embedded relay on 127.0.0.1:0) and
real servers, and drives it with `mcp.Client` over Streamable HTTP, in every
pairing of client era and server era, over stdio and HTTP upstreams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitRequestParams, ElicitResult

from tests.support.harness import (
    Gateway,
    gateway,
    http_server,
    legacy_initialize,
    one_server_routes,
    stdio_server,
    tool_text,
)

CLIENT_MODES = {"legacy": "legacy", "modern": "auto"}
"""`auto` sends `server/discover` through the tunnel; the gateway answers it for every server."""
SERVER_ERAS = {"legacy": ("--legacy",), "modern": ()}


@contextlib.asynccontextmanager
async def _path(transport: str, server_era: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    flags = SERVER_ERAS[server_era]
    if transport == "stdio":
        async with gateway(one_server_routes(stdio_server(*flags)), tmp_path) as gw:
            yield gw
    else:
        async with (
            http_server(*flags) as url,
            gateway(one_server_routes(f"{{http: {{url: '{url}'}}}}"), tmp_path) as gw,
        ):
            yield gw


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("server_era", ["legacy", "modern"])
@pytest.mark.parametrize("client_era", ["legacy", "modern"])
async def test_every_era_pairing(transport: str, server_era: str, client_era: str, tmp_path: Path) -> None:
    mode = CLIENT_MODES[client_era]
    async with _path(transport, server_era, tmp_path) as gw, Client(gw.urls["main"], mode=mode) as client:
        expected = "2026-07-28" if client_era == "modern" else None
        if expected:
            assert client.protocol_version == expected
        else:
            assert client.protocol_version.startswith("20")
            assert client.protocol_version != "2026-07-28"
        assert client.server_info is not None
        assert client.server_info.name == "sdk-test"

        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"echo", "add", "slow_progress"} <= names

        assert tool_text(await client.call_tool("echo", {"text": "över the tunnel"})) == "över the tunnel"
        assert tool_text(await client.call_tool("add", {"a": 2, "b": 40})) == "42"

        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        done = await client.call_tool("slow_progress", {"steps": 3, "delay_ms": 10}, progress_callback=on_progress)
        assert tool_text(done) == "done 3 steps"
        assert progress == [1, 2, 3]


async def test_pinned_modern_client_needs_no_discover(tmp_path: Path) -> None:
    async with _path("stdio", "legacy", tmp_path) as gw, Client(gw.urls["main"], mode="2026-07-28") as client:
        assert tool_text(await client.call_tool("echo", {"text": "pinned"})) == "pinned"


async def test_two_clients_share_one_stdio_server_with_interleaved_calls(tmp_path: Path) -> None:
    async with (
        _path("stdio", "modern", tmp_path) as gw,
        Client(gw.urls["main"], mode="legacy") as first,
        Client(gw.urls["main"], mode="2026-07-28") as second,
    ):
        pid_one = tool_text(await first.call_tool("whoami", {}))
        pid_two = tool_text(await second.call_tool("whoami", {}))
        assert pid_one == pid_two  # one process serves both

        async def call(client: Client, who: str, i: int) -> None:
            text = f"{who}-{i}"
            assert tool_text(await client.call_tool("echo", {"text": text})) == text

        await asyncio.gather(
            *(call(first, "a", i) for i in range(50)),
            *(call(second, "b", i) for i in range(50)),
        )


async def test_stdio_server_killed_mid_call_then_restarted(tmp_path: Path) -> None:
    async with _path("stdio", "modern", tmp_path) as gw, Client(gw.urls["main"], mode="2026-07-28") as client:
        before = tool_text(await client.call_tool("whoami", {}))
        with pytest.raises(MCPError) as failure:
            await client.call_tool("crash", {})
        assert failure.value.error.code == -32603
        assert failure.value.error.data["tunnel_failure"]["source"] == "transport_closed"
        after = tool_text(await client.call_tool("whoami", {}))  # waits for the restarted process
        assert after != before


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_session_delete(transport: str, tmp_path: Path) -> None:
    async with _path(transport, "legacy", tmp_path) as gw, httpx2.AsyncClient() as http:
        init = await legacy_initialize(http, gw.urls["main"])
        assert init.status_code == 200
        session = init.headers["mcp-session-id"]
        ended = await http.delete(gw.urls["main"], headers={"Mcp-Session-Id": session})
        # HTTP servers close their own session; on stdio the gateway ends the session it issued.
        assert ended.status_code == 200


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_server_to_client_request_reaches_the_client_and_its_answer_the_server(
    transport: str, tmp_path: Path
) -> None:
    asked: list[str] = []

    async def on_elicit(context: object, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"name": "Ada"})

    async with (
        _path(transport, "legacy", tmp_path) as gw,
        Client(gw.urls["main"], mode="legacy", elicitation_callback=on_elicit) as client,
    ):
        assert tool_text(await client.call_tool("ask_name", {})) == "hello Ada"
    assert asked == ["What is your name?"]
