"""An aggregated channel with a server that wants each user's token (an OAuth-protected Streamable HTTP
server, tests/support/servers/oauth_resource_server.py): the channel fetches its servers' lists once for
every caller, without a user's token, so that server is left out of the merged list. The other servers
are still listed (MCP 2025-11-25, "Tools" §Listing Tools: `tools/list` answers with the tools the server
offers), and the gateway's log says what is wrong and what to do, never a token.
"""

from __future__ import annotations

from pathlib import Path

from mcp import Client

from tests.support.harness import PYTHON, SERVERS, gateway, process, stdio_server
from tests.support.waiting import until

PORT = r"PORT (\d+)"
STATIC_TOKEN = "static-user-token-5d1f"


async def test_a_server_that_wants_a_users_token_is_left_out_and_the_log_says_why(tmp_path: Path) -> None:
    protected = (PYTHON, SERVERS / "oauth_resource_server.py", "--static", f"{STATIC_TOKEN}=alice")
    async with process(*protected) as server:
        url = f"http://127.0.0.1:{(await server.wait_for(PORT))[1]}/mcp"
        routes = (
            "relay: {listen: '127.0.0.1:0'}\n"
            f"servers:\n  local: {stdio_server()}\n  notes: {{http: {{url: '{url}'}}}}\n"
            "channels:\n  main: [local, notes]\n"
        )
        log = tmp_path / "gateway.stderr"
        with log.open("wb") as stderr:
            async with gateway(routes, tmp_path, stderr=stderr) as gw:
                async with Client(gw.urls["main"], mode="legacy") as client:
                    names = {tool.name for tool in (await client.list_tools()).tools}
                await until(lambda: "give the server a channel of its own" in log.read_text())
    assert names, "the stdio server's tools are listed"
    assert all(name.startswith("local") for name in names), names  # nothing of `notes`
    text = log.read_text()
    line = next(line for line in text.splitlines() if "give the server a channel of its own" in line)
    assert "'notes' left out of tools/list" in line
    assert "HTTP 401" in line
    assert STATIC_TOKEN not in text
