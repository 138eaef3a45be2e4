"""An official-SDK MCP server over Streamable HTTP for the HTTP upstream tests.

Run as a program: binds 127.0.0.1 on a free port, prints `PORT <n>` once the
socket listens (readiness), then serves `/mcp` until killed.

    --legacy-only    answer any request carrying `MCP-Protocol-Version: 2026-07-28`
                     with HTTP 400 and a JSON-RPC error, as a handshake-era server does
    --json-response  answer with application/json instead of SSE streams

Test-only extra route: `GET /test/sessions` lists the `Mcp-Session-Id`s the
server issued (so a test can end them behind the client's back).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from typing import Any

import anyio
import uvicorn
from asgi_json import json_answer
from mcp.server.mcpserver import Context, MCPServer

MODERN = b"2026-07-28"

mcp = MCPServer("http-probe-server")
stats = {"started": 0, "cancelled": 0}
cancel_waiters: list[anyio.Event] = []


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.tool()
async def progress(steps: int, ctx: Context) -> str:
    """Report `steps` progress notifications, then answer."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}")
    return f"done after {steps}"


@mcp.tool()
async def block(ctx: Context) -> str:
    """Report one progress notification, then wait until cancelled."""
    stats["started"] += 1
    try:
        await ctx.report_progress(0, 1, "blocking")
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        stats["cancelled"] += 1
        for waiter in cancel_waiters:
            waiter.set()
        raise
    return "unreachable"


@mcp.tool()
async def wait_cancelled(at_least: int) -> str:
    """Answer (the counters, as JSON) once at least `at_least` `block` calls were cancelled."""
    while stats["cancelled"] < at_least:
        waiter = anyio.Event()
        cancel_waiters.append(waiter)
        try:
            await waiter.wait()
        finally:
            cancel_waiters.remove(waiter)
    return json.dumps(stats)


@mcp.tool()
def counters() -> str:
    """How many `block` calls started and were cancelled (JSON)."""
    return json.dumps(stats)


@mcp.tool()
def big(size: int) -> str:
    """A text of `size` bytes."""
    return "x" * size


class TestRoutes:
    """ASGI wrapper: records issued session ids, serves /test/sessions, optionally refuses 2026-07-28."""

    def __init__(self, app: Any, *, legacy_only: bool) -> None:
        self.app = app
        self.legacy_only = legacy_only
        self.sessions: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/test/sessions":
            await json_answer(send, 200, json.dumps(self.sessions).encode())
            return
        headers = dict(scope["headers"])
        if self.legacy_only and headers.get(b"mcp-protocol-version") == MODERN:
            body = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Unsupported protocol version"}}'
            await json_answer(send, 400, body)
            return

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    if name.lower() == b"mcp-session-id" and value.decode() not in self.sessions:
                        self.sessions.append(value.decode())
            await send(message)

        await self.app(scope, receive, watch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--legacy-only", action="store_true")
    parser.add_argument("--json-response", action="store_true")
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]

    app = TestRoutes(
        mcp.streamable_http_app(json_response=args.json_response, host="127.0.0.1"),
        legacy_only=args.legacy_only,
    )
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    # The socket already listens: connections made after this line wait in its backlog.
    print(f"PORT {port}", flush=True)
    asyncio.run(server.serve(sockets=[sock]))
    sys.exit(0)


if __name__ == "__main__":
    main()
