"""`routes:` end to end: the real gateway with official-SDK servers proves deny (hidden and refused), `to:` by
header and by glob, and `limit_key` tagging."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from tests.support.harness import gateway, header_client, http_server, mux_stdio, tool_text

ROUTES = """
routes:
  - match: {channel: main, name: "*__crash"}
    deny: "crashing is not allowed on main"
  - match: {channel: main, method: tools/call, name: "s1__whoami", headers: {X-Tenant: "beta*"}}
    to: s2
  - match: {headers: {x-tenant: blocked}}
    deny: "this tenant is blocked"
  - match: {channel: solo, name: "getenv"}
    deny: "no environment here"
  - match: {channel: main, name: "s1__add"}
    limit_key: adds
"""


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_route_rules_end_to_end(mode: str, tmp_path: Path) -> None:
    async with http_server(name="h1") as h1_url:
        routes = (
            "relay: {listen: '127.0.0.1:0'}\n"
            f"servers:\n  s1: {mux_stdio('--name', 's1')}\n  s2: {mux_stdio('--name', 's2', '--legacy')}\n"
            f"  h1: {{http: {{url: '{h1_url}'}}}}\n"
            "channels:\n  main: [s1, h1]\n  solo: [h1]\n" + ROUTES
        )
        async with gateway(routes, tmp_path) as gw:
            async with header_client(gw.urls["main"], mode) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert "s1__echo" in names
                assert "h1__echo" in names
                assert not {"s1__crash", "h1__crash"} & names  # denied: hidden
                with pytest.raises(MCPError) as denied:  # and refused
                    await client.call_tool("h1__crash", {})
                assert denied.value.error.code == -32010
                assert denied.value.error.message == "crashing is not allowed on main"
                assert tool_text(await client.call_tool("s1__about_s1", {})) == "s1"
                assert tool_text(await client.call_tool("s1__add", {"a": 1, "b": 2})) == "3"  # limit_key only

                own_pid = tool_text(await client.call_tool("s1__whoami", {}))

            async with header_client(gw.urls["main"], mode, **{"X-Tenant": "beta-42"}) as beta:
                # The header sends s1__whoami to s2, a server outside the channel; other calls stay on s1.
                assert tool_text(await beta.call_tool("s1__whoami", {})) != own_pid
                assert tool_text(await beta.call_tool("s1__echo", {"text": "hi"})) == "hi"
                assert tool_text(await beta.call_tool("s1__about_s1", {})) == "s1"

            async with header_client(gw.urls["solo"], mode, **{"x-tenant": "blocked"}) as blocked:
                with pytest.raises(MCPError) as refused:
                    await blocked.list_tools()
                assert refused.value.error.message == "this tenant is blocked"

            async with header_client(gw.urls["solo"], mode) as solo:
                # A deny rule makes a one-server channel a routed one: names stay unprefixed.
                tools = {tool.name for tool in (await solo.list_tools()).tools}
                assert "echo" in tools
                assert "getenv" not in tools
                with pytest.raises(MCPError) as hidden:
                    await solo.call_tool("getenv", {"variable": "HOME"})
                assert hidden.value.error.code == -32010
                assert solo.server_info is not None
                assert solo.server_info.name == "h1"


async def test_to_rule_reaches_the_named_server(tmp_path: Path) -> None:
    """Proof that a `to:` rule picks the server: s2's `about_s2` answers through an s1 name."""
    routes = (
        "relay: {listen: '127.0.0.1:0'}\n"
        f"servers:\n  s1: {mux_stdio('--name', 's1')}\n  s2: {mux_stdio('--name', 's2')}\n"
        "channels:\n  main: [s1]\n"
        "routes:\n  - match: {method: tools/call, name: 'about_*', headers: {x-route: 's2'}}\n    to: s2\n"
    )
    async with gateway(routes, tmp_path) as gw:
        async with header_client(gw.urls["main"], "auto") as plain:
            assert tool_text(await plain.call_tool("about_s1", {})) == "s1"
        async with header_client(gw.urls["main"], "auto", **{"x-route": "s2"}) as routed:
            assert tool_text(await routed.call_tool("about_s2", {})) == "s2"
            missing = await routed.call_tool("about_s1", {})  # s2 has no such tool: its own tool error
            assert missing.is_error
