"""Aggregated channels end to end: six official-SDK servers (stdio and Streamable HTTP, both eras,
colliding tool names) behind one channel of the real gateway, driven by `mcp.Client` of both eras.

Proves the merged lists (with every upstream page fetched and the gateway's own pagination), both
prefix modes and renames, calls reaching the owner, list_changed propagation, a crashing server not
disturbing the others, and a server that is down leaving the lists and rejoining them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.subscriptions import ResourceUpdated, ToolsListChanged
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import ElicitRequestParams, ElicitResult

from tests.support.harness import MUX, PYTHON, Gateway, Process, gateway, mux_stdio, process, tool_text
from tests.support.waiting import until

CLIENT_MODES = ("legacy", "auto")
BASE_TOOLS = {"echo", "add", "whoami", "about", "register_tool", "session_header", "crash", "greet"}


@dataclass
class HttpServer:
    name: str
    args: tuple[str, ...]
    url: str = ""
    port: int = 0
    proc: Process | None = None
    _stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        argv = [PYTHON, MUX, "--http", "--port", str(self.port), "--name", self.name, *self.args]
        self.proc = await self._stack.enter_async_context(process(*argv))
        match = await self.proc.wait_for(r"READY (\S+)")
        self.url = match[1]
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None


@contextlib.asynccontextmanager
async def http_servers(*specs: tuple[str, tuple[str, ...]]) -> AsyncIterator[dict[str, HttpServer]]:
    servers = {name: HttpServer(name, args) for name, args in specs}
    try:
        await asyncio.gather(*(server.start() for server in servers.values()))
        yield servers
    finally:
        await asyncio.gather(*(server.stop() for server in servers.values()))


@contextlib.asynccontextmanager
async def six(tmp_path: Path, channels: str, extra: str = "") -> AsyncIterator[tuple[Gateway, dict[str, HttpServer]]]:
    """s1 (stdio, dual-era), s2 (stdio, handshake-era, pages of 4), s3 (stdio, dual-era, 30 extra tools),
    h1 (HTTP, dual-era), h2 (HTTP, handshake-era), h3 (HTTP, dual-era, pages of 5)."""
    async with http_servers(("h1", ()), ("h2", ("--legacy",)), ("h3", ("--page-size", "5"))) as http:
        routes = (
            "relay: {listen: '127.0.0.1:0'}\n"
            "servers:\n"
            f"  s1: {mux_stdio('--name', 's1')}\n"
            f"  s2: {mux_stdio('--name', 's2', '--legacy', '--page-size', '4')}\n"
            f"  s3: {mux_stdio('--name', 's3', '--tools', '30')}\n"
            + "".join(f"  {n}: {{http: {{url: '{s.url}'}}, startup_timeout_s: 5}}\n" for n, s in http.items())
            + f"channels:\n{channels}{extra}"
        )
        async with gateway(routes, tmp_path) as gw:
            yield gw, http


SERVER_NAMES = ("s1", "s2", "s3", "h1", "h2", "h3")
ALL = "  all: {servers: [s1, s2, s3, h1, h2, h3], page_size: 25, server_info: {name: acme-tools, version: '9.9'}}\n"


async def all_tools(client: Client) -> list[str]:
    names: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await client.list_tools(cursor=cursor, cache_mode="bypass")
        names += [tool.name for tool in page.tools]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return names
        assert pages < 50


@pytest.mark.parametrize("mode", CLIENT_MODES)
async def test_six_servers_one_channel(mode: str, tmp_path: Path) -> None:
    async with six(tmp_path, ALL) as (gw, _), Client(gw.urls["all"], mode=mode) as client:
        assert client.server_info is not None
        assert (client.server_info.name, client.server_info.version) == ("acme-tools", "9.9")
        capabilities = client.server_capabilities
        assert capabilities.tools is not None
        assert capabilities.tools.list_changed
        assert capabilities.prompts is not None
        assert capabilities.resources is not None

        # Merged: every server's tools, namespaced (`always`, the default), every upstream page fetched.
        names = await all_tools(client)
        assert len(names) == len(set(names))
        for server in SERVER_NAMES:
            for tool in ("echo", "add", "whoami", f"about_{server}", "register_tool"):
                assert f"{server}__{tool}" in names
        assert {f"s3__t{i:03d}" for i in range(30)} <= set(names)
        assert not [n for n in names if "__" not in n]

        # The gateway's own pages: 25 at a time, with a cursor that only it understands.
        first = await client.list_tools(cache_mode="bypass")
        assert len(first.tools) == 25
        assert first.next_cursor is not None
        with pytest.raises(MCPError) as bad:
            await client.list_tools(cursor="not-a-cursor", cache_mode="bypass")
        assert bad.value.error.code == -32602

        # Calls go to the owner, under the name the owner knows.
        for server in SERVER_NAMES:
            assert tool_text(await client.call_tool(f"{server}__about_{server}", {})) == server
            assert tool_text(await client.call_tool(f"{server}__echo", {"text": f"to {server}"})) == f"to {server}"
        assert tool_text(await client.call_tool("s3__t007", {})) == "7"
        pids = {tool_text(await client.call_tool(f"{s}__whoami", {})) for s in ("s1", "s2", "s3", "h1")}
        assert len(pids) == 4
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("nobody__echo", {"text": "x"})
        assert unknown.value.error.code == -32602

        # Prompts and resources merge too; a URI every server lists belongs to the first.
        prompts = {prompt.name for prompt in (await client.list_prompts()).prompts}
        assert {f"{server}__greet" for server in SERVER_NAMES} <= prompts
        got = await client.get_prompt("h2__greet", {"who": "Ada"})
        assert "Ada" in got.messages[0].content.text  # type: ignore[union-attr]
        resources = (await client.list_resources()).resources
        assert [str(r.uri) for r in resources] == ["test://info"]
        read = await client.read_resource("test://info")
        assert json.loads(read.contents[0].text)["name"] == "s1"  # type: ignore[union-attr]

        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        done = await client.call_tool("h3__slow_progress", {"steps": 3, "delay_ms": 5}, progress_callback=on_progress)
        assert tool_text(done) == "done 3 steps"
        assert progress == [1, 2, 3]
        if mode == "legacy":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await client.send_ping()  # answered by the gateway
                await client.set_logging_level("warning")  # to every handshake-era server


async def test_conditional_prefix_separator_and_renames(tmp_path: Path) -> None:
    channels = (
        "  all: {servers: [s1, s2, s3, h1, h2, h3], prefix: conditional, separator: '.',\n"
        "        rename: {s1: {echo: shout}, h2: {about_h2: who_is_h2}}}\n"
    )
    async with six(tmp_path, channels) as (gw, _), Client(gw.urls["all"], mode="auto") as client:
        names = set(await all_tools(client))
        assert "shout" in names
        assert "s1.echo" not in names
        assert {"s2.echo", "s3.echo", "h1.echo", "h2.echo", "h3.echo"} <= names  # colliding: prefixed
        assert {"about_s1", "about_s3", "who_is_h2", "t000"} <= names  # unique: as the server names it
        assert "about_h2" not in names
        assert tool_text(await client.call_tool("shout", {"text": "loud"})) == "loud"
        assert tool_text(await client.call_tool("who_is_h2", {})) == "h2"
        assert tool_text(await client.call_tool("about_s3", {})) == "s3"
        assert tool_text(await client.call_tool("h1.echo", {"text": "dot"})) == "dot"
        assert tool_text(await client.call_tool("t029", {})) == "29"


async def test_list_changed_reaches_clients_and_refreshes_the_merged_list(tmp_path: Path) -> None:
    heard: list[str] = []

    async def on_message(message: Any) -> None:
        method = getattr(getattr(message, "root", message), "method", None)
        if isinstance(method, str):
            heard.append(method)

    async with (
        six(tmp_path, ALL) as (gw, _),
        Client(gw.urls["all"], mode="legacy", message_handler=on_message) as legacy,
        Client(gw.urls["all"], mode="auto") as modern,
    ):
        assert "s2__fresh" not in await all_tools(legacy)
        # A handshake-era stdio server announces the change on its pipe.
        assert tool_text(await legacy.call_tool("s2__register_tool", {"tool": "fresh"})) == "registered fresh"
        assert "s2__fresh" in await all_tools(legacy)
        assert "notifications/tools/list_changed" in heard
        assert tool_text(await legacy.call_tool("s2__fresh", {})) == "fresh from s2"

        # A handshake-era HTTP server announces it on the call's stream.
        heard.clear()
        await legacy.call_tool("h2__register_tool", {"tool": "newer"})
        assert "h2__newer" in await all_tools(modern)
        assert "notifications/tools/list_changed" in heard

        # A 2026-07-28 server tells `subscriptions/listen` streams only: the gateway holds one to each.
        await modern.call_tool("h1__register_tool", {"tool": "newest"})
        await modern.call_tool("s1__register_tool", {"tool": "latest"})

        async def both_listed() -> bool:
            names = await all_tools(modern)
            return "h1__newest" in names and "s1__latest" in names

        await until(both_listed, 15.0, every_s=0.1)
        assert tool_text(await modern.call_tool("h1__newest", {})) == "newest from h1"


async def test_crashing_server_does_not_disturb_the_others(tmp_path: Path) -> None:
    async with six(tmp_path, ALL) as (gw, _), Client(gw.urls["all"], mode="auto") as client:
        before = tool_text(await client.call_tool("s1__whoami", {}))

        async def crash() -> MCPError:
            with pytest.raises(MCPError) as failure:
                await client.call_tool("s1__crash", {})
            return failure.value

        async def other(server: str) -> str:
            return tool_text(await client.call_tool(f"{server}__sleep_ms", {"ms": 300}))

        failure, *others = await asyncio.gather(crash(), *(other(s) for s in ("s2", "s3", "h1", "h2", "h3")))
        assert failure.error.code == -32603
        assert failure.error.data["tunnel_failure"]["source"] == "transport_closed"
        assert others == ["slept 300 ms"] * 5
        assert tool_text(await client.call_tool("s1__whoami", {})) != before  # restarted, and back in service
        assert "s1__echo" in await all_tools(client)


@pytest.mark.parametrize("mode", CLIENT_MODES)
async def test_server_down_leaves_the_lists_and_rejoins(mode: str, tmp_path: Path) -> None:
    async with six(tmp_path, ALL) as (gw, http), Client(gw.urls["all"], mode=mode) as client:
        assert "h2__echo" in await all_tools(client)
        await http["h2"].stop()
        with pytest.raises(MCPError) as down:
            await client.call_tool("h2__echo", {"text": "anyone?"})
        assert down.value.error.code == -32603  # the contract's synthesized failure, with its provenance
        assert down.value.error.data["tunnel_failure"]["source"] == "connect"
        names = await all_tools(client)
        assert "h2__echo" not in names
        assert "h1__echo" in names
        assert tool_text(await client.call_tool("h1__echo", {"text": "still here"})) == "still here"

        await http["h2"].start()  # the same port, a new process (its sessions are gone)

        async def rejoined() -> bool:
            return "h2__echo" in await all_tools(client)

        await until(rejoined, 15.0, every_s=0.1)
        assert tool_text(await client.call_tool("h2__echo", {"text": "back"})) == "back"


@pytest.mark.parametrize("mode", CLIENT_MODES)
async def test_server_requests_cross_eras_as_input_required(mode: str, tmp_path: Path) -> None:
    """elicitation during a call, in every pairing: legacy servers send a request, 2026-07-28 servers
    answer `input_required`; the gateway turns each into what the client's era expects."""
    asked: list[str] = []

    async def on_elicit(context: object, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"name": f"Ada{len(asked)}"})

    async with (
        six(tmp_path, ALL) as (gw, _),
        Client(gw.urls["all"], mode=mode, elicitation_callback=on_elicit) as client,
    ):
        for i, server in enumerate(SERVER_NAMES, start=1):
            assert tool_text(await client.call_tool(f"{server}__ask_name", {})) == f"hello Ada{i}"
            assert tool_text(await client.call_tool(f"{server}__echo", {"text": "after"})) == "after"
    assert asked == ["What is your name?"] * len(SERVER_NAMES)


async def test_listen_and_subscribe_span_the_channels_servers(tmp_path: Path) -> None:
    heard: list[tuple[str, object]] = []

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        method = getattr(root, "method", None)
        if isinstance(method, str):
            heard.append((method, getattr(getattr(root, "params", None), "uri", None)))

    async with (
        six(tmp_path, ALL) as (gw, _),
        Client(gw.urls["all"], mode="auto") as modern,
        Client(gw.urls["all"], mode="legacy", message_handler=on_message) as legacy,
    ):
        async with modern.listen(tools_list_changed=True, resource_subscriptions=["test://info"]) as events:
            assert events.honored.tools_list_changed
            # A handshake-era stdio server (unsolicited on its pipe), then a 2026-07-28 HTTP server (on the
            # gateway's own listen): both reach the one stream of the channel.
            await legacy.call_tool("s2__register_tool", {"tool": "one"})
            async with asyncio.timeout(15):
                assert isinstance(await anext(events), ToolsListChanged)
            await modern.call_tool("h1__register_tool", {"tool": "two"})
            async with asyncio.timeout(15):
                assert isinstance(await anext(events), ToolsListChanged)
            # test://info belongs to s1 (the first server listing it); an update there reaches the listener.
            await modern.call_tool("s1__touch", {"uri": "test://info"})
            async with asyncio.timeout(15):
                updated = await anext(events)
            assert isinstance(updated, ResourceUpdated)
            assert updated.uri == "test://info"

        # A handshake-era client subscribes; the update is delivered ahead of its next answer.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await legacy.subscribe_resource("test://info")
            await modern.call_tool("s1__touch", {"uri": "test://info"})

            async def delivered() -> bool:
                await legacy.send_ping()
                return ("notifications/resources/updated", "test://info") in [(m, str(u)) for m, u in heard]

            await until(delivered, 15.0, every_s=0.1)


@pytest.mark.parametrize("mode", CLIENT_MODES)
async def test_one_server_channels_bridge_server_requests_too(mode: str, tmp_path: Path) -> None:
    asked: list[str] = []

    async def on_elicit(context: object, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"name": "Grace"})

    channels = "".join(f"  {server}: [{server}]\n" for server in SERVER_NAMES)  # plain passthrough channels
    async with six(tmp_path, channels) as (gw, _):
        for server in SERVER_NAMES:
            async with Client(gw.urls[server], mode=mode, elicitation_callback=on_elicit) as client:
                assert tool_text(await client.call_tool("ask_name", {})) == "hello Grace"
                assert tool_text(await client.call_tool("echo", {"text": "and on"})) == "and on"
    assert len(asked) == len(SERVER_NAMES)
