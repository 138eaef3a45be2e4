"""Tool allow-lists end to end: `channels.NAME.allow_tools` on a one-server and on an aggregated channel, and
`tenants:` by the tenant header, through the real gateway with official-SDK servers and clients of both eras.
A tool outside a list is hidden from `tools/list` (MCP 2025-11-25 server/tools, "Listing Tools") and a
`tools/call` to it is refused as a `deny` route refuses (-32010)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.harness import gateway, header_client, http_server, mux_stdio, tool_text

LISTS = """
limits: {tenant_header: X-Tenant}
tenants:
  acme: {allow_tools: ["*echo", "*add", "*about_*"]}
"""


async def _names(client: object) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}  # type: ignore[attr-defined]


async def _refused(client: object, tool: str, arguments: dict[str, object]) -> None:
    with pytest.raises(MCPError) as refused:
        await client.call_tool(tool, arguments)  # type: ignore[attr-defined]
    assert refused.value.error.code == -32010


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_allow_lists_on_both_kinds_of_channel(mode: str, tmp_path: Path) -> None:
    async with http_server(name="h1") as h1_url:
        routes = (
            "relay: {listen: '127.0.0.1:0'}\n"
            f"servers:\n  s1: {mux_stdio('--name', 's1')}\n  s2: {mux_stdio('--name', 's2', '--legacy')}\n"
            f"  h1: {{http: {{url: '{h1_url}'}}}}\n"
            "channels:\n"
            "  solo: {servers: [h1], allow_tools: [echo, add, whoami]}\n"
            "  main: {servers: [s1, s2], allow_tools: ['s1__*', 's2__echo', 's2__about_s2']}\n"
            "  open: [h1]\n" + LISTS
        )
        async with gateway(routes, tmp_path) as gw:
            async with header_client(gw.urls["solo"], mode) as solo:
                assert await _names(solo) == {"echo", "add", "whoami"}  # one server: names stay unprefixed
                assert tool_text(await solo.call_tool("echo", {"text": "hi"})) == "hi"
                await _refused(solo, "getenv", {"variable": "HOME"})
                await _refused(solo, "crash", {})

            async with header_client(gw.urls["main"], mode) as main:
                names = await _names(main)
                assert {"s1__echo", "s1__crash", "s2__echo", "s2__about_s2"} <= names
                assert not {name for name in names if name.startswith("s2__")} - {"s2__echo", "s2__about_s2"}
                assert tool_text(await main.call_tool("s2__about_s2", {})) == "s2"
                await _refused(main, "s2__add", {"a": 1, "b": 2})

            # The tenant's list applies on every channel, on top of the channel's own.
            async with header_client(gw.urls["main"], mode, **{"X-Tenant": "acme"}) as acme:
                assert await _names(acme) == {"s1__echo", "s1__add", "s1__about_s1", "s2__echo", "s2__about_s2"}
                assert tool_text(await acme.call_tool("s1__add", {"a": 2, "b": 2})) == "4"
                await _refused(acme, "s1__crash", {})
            async with header_client(gw.urls["open"], mode, **{"X-Tenant": "acme"}) as acme_open:
                assert await _names(acme_open) == {"echo", "add"}
                await _refused(acme_open, "whoami", {})
            async with header_client(gw.urls["open"], mode, **{"X-Tenant": "beta"}) as beta:
                assert {"echo", "add", "whoami", "getenv"} <= await _names(beta)  # no entry, no `*`: unrestricted
                assert tool_text(await beta.call_tool("echo", {"text": "ok"})) == "ok"


async def test_a_reload_applies_changed_lists(tmp_path: Path) -> None:
    """SIGHUP with a wider channel list and a new tenant entry: the running gateway serves the new lists,
    and the status page's JSON shows the lists in force (issue 19: allow-lists shown on the status page)."""
    before = (
        "relay: {listen: '127.0.0.1:0'}\n"
        "ops: {listen: '127.0.0.1:0'}\n"
        "limits: {tenant_header: X-Tenant}\n"
        f"servers:\n  s1: {mux_stdio('--name', 's1')}\n"
        "channels:\n  solo: {servers: [s1], allow_tools: [echo]}\n"
    )
    after = (
        before.replace("allow_tools: [echo]", "allow_tools: [echo, add]") + "tenants: {beta: {allow_tools: [add]}}\n"
    )
    async with gateway(before, tmp_path) as gw:
        ops = next(line.split()[-1] for line in gw.process.lines if line.startswith("ops: listening on "))
        assert await _shown(ops) == ({"solo": ["echo"]}, {})
        async with header_client(gw.urls["solo"], "legacy") as client:
            assert await _names(client) == {"echo"}
            await _refused(client, "add", {"a": 1, "b": 2})
        (tmp_path / "routing.yaml").write_text(after)
        gw.process.proc.send_signal(signal.SIGHUP)
        await gw.process.wait_for(r"^gateway: reloaded$", within_s=60)
        async with header_client(gw.urls["solo"], "legacy") as client:
            assert await _names(client) == {"echo", "add"}
            assert tool_text(await client.call_tool("add", {"a": 1, "b": 2})) == "3"
        async with header_client(gw.urls["solo"], "legacy", **{"X-Tenant": "beta"}) as beta:
            assert await _names(beta) == {"add"}
            await _refused(beta, "echo", {"text": "no"})
        assert await _shown(ops) == ({"solo": ["echo", "add"]}, {"beta": ["add"]})


async def _shown(ops: str) -> tuple[dict[str, list[str] | None], dict[str, list[str]]]:
    """The allow-lists `/api/status` reports: by channel, and by tenant."""
    async with httpx2.AsyncClient() as http:
        status = (await http.get(f"{ops}/api/status")).json()
    return {c["name"]: c["allow_tools"] for c in status["channels"]}, status["tenant_allow_tools"]
