"""The SDK test server (`sdk_server.py`) plus what multiplexing tests need. Imports nothing from ``gateway``.

Same flags as sdk_server.py (``--name``, ``--legacy``, ``--http --port N``), plus:
  --page-size N   page `tools/list` N tools at a time (upstream pagination)
  --tools N       add N numbered tools `t000` ... (big lists)

Extra tools: `about_<name>` (unique to this server: answers its name), `pid_after(ms)` (sleeps, then
answers its pid), `register_tool(tool)` (adds a tool and announces `notifications/tools/list_changed`
on the era's channel: the call's stream for a handshake-era client, `subscriptions/listen` for a
2026-07-28 one), `touch(uri)` (announces `notifications/resources/updated` likewise), `session_header`
(the `Mcp-Session-Id` the request came with, HTTP only), and an `ask_name` that elicits in both eras
(a request to the client, or `input_required` and a retry).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sdk_server import build_server, run


def extend(mcp: MCPServer, name: str, page_size: int | None, numbered: int) -> None:
    def about() -> str:
        return name

    mcp.add_tool(about, name=f"about_{name}", description=f"This server's name ({name}).")

    for i in range(numbered):

        def numbered_tool(i: int = i) -> int:
            return i

        mcp.add_tool(numbered_tool, name=f"t{i:03d}", description=f"Numbered tool {i}.")

    @mcp.tool()
    async def register_tool(tool: str, ctx: Context) -> str:
        """Add a tool named `tool` (it answers its own name) and announce the change."""

        def added() -> str:
            return f"{tool} from {name}"

        mcp.add_tool(added, name=tool, description=f"Added at run time to {name}.")
        if ctx.protocol_version == "2026-07-28":
            await ctx.notify_tools_changed()
        else:
            await ctx.session.send_notification(types.ToolListChangedNotification(), related_request_id=ctx.request_id)
        return f"registered {tool}"

    class Name(BaseModel):
        name: str

    mcp.remove_tool("ask_name")

    @mcp.tool()
    async def ask_name(ctx: Context) -> str | types.InputRequiredResult:
        """Ask the client for a name, then greet it: a request to the client during the call in the
        handshake era, an `input_required` result and a retry in 2026-07-28 (multi round-trip)."""
        if ctx.protocol_version != "2026-07-28":
            answer = await ctx.elicit("What is your name?", Name)
            return f"hello {answer.data.name}" if answer.action == "accept" and answer.data else "no name"
        reply = (ctx.input_responses or {}).get("name")
        if reply is None:
            question = types.ElicitRequestFormParams(
                message="What is your name?",
                requested_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
            )
            return types.InputRequiredResult(input_requests={"name": types.ElicitRequest(params=question)})
        assert isinstance(reply, types.ElicitResult)
        return f"hello {(reply.content or {}).get('name')}" if reply.action == "accept" else "no name"

    @mcp.tool()
    async def touch(uri: str, ctx: Context) -> str:
        """Announce that the resource `uri` changed (to listeners, or to the session's subscribers)."""
        if ctx.protocol_version == "2026-07-28":
            await ctx.notify_resource_updated(uri)
        else:
            await ctx.session.send_resource_updated(uri)
        return f"touched {uri}"

    @mcp.tool()
    async def pid_after(ms: int) -> int:
        """Sleep `ms` milliseconds, then answer this process's pid (which pool member served the call)."""
        await anyio.sleep(ms / 1000)
        return os.getpid()

    @mcp.tool()
    def session_header(ctx: Context) -> str | None:
        """The Mcp-Session-Id header of this request (HTTP), or null."""
        headers = ctx.headers or {}
        return next((v for k, v in headers.items() if k.lower() == "mcp-session-id"), None)

    if page_size is not None:

        async def list_tools(ctx: object, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
            tools = await mcp.list_tools()
            start = int(params.cursor) if params is not None and params.cursor else 0
            end = start + page_size
            return types.ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None)

        mcp._lowlevel_server.add_request_handler("tools/list", types.PaginatedRequestParams, list_tools)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--legacy", action="store_true")
    parser.add_argument("--name", default="sdk-test")
    parser.add_argument("--page-size", type=int, default=None)
    parser.add_argument("--tools", type=int, default=0)
    args = parser.parse_args()
    mcp = build_server(args.name)
    extend(mcp, args.name, args.page_size, args.tools)
    run(mcp, http=args.http, port=args.port, legacy=args.legacy)


if __name__ == "__main__":
    main()
