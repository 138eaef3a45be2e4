"""An official-SDK MCP server for tests: the independent peer the gateway's upstreams talk to.

Stdio by default; ``--http --port 0`` serves Streamable HTTP on 127.0.0.1 and prints
``READY http://127.0.0.1:PORT/mcp`` once it accepts connections. Dual-era (handshake and 2026-07-28)
unless ``--legacy``, which serves the handshake era only, as a pre-2026 server would.
Imports nothing from ``gateway``.

Tools: echo, add, slow_progress, sleep_ms, counter_incr, crash, whoami, big, fail, getenv, trace_context,
track, peak, count_steps, step_count, chatty, ask_name.
With ``SDK_SERVER_OTLP_ENDPOINT`` set, the SDK's own server spans are exported there over OTLP/HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.runner import serve_loop
from mcp.server.stdio import stdio_server
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MCP_PATH = "/mcp"
MAX_BIG = 64 * 1024 * 1024


def build_server(name: str) -> MCPServer:
    mcp: MCPServer = MCPServer(name, version="0.0.1", log_level="WARNING")
    calls = {"counter": 0}

    @mcp.tool()
    def echo(text: str) -> str:
        """Return `text` unchanged."""
        return text

    @mcp.tool()
    def add(a: int, b: int) -> int:
        """Return a + b."""
        return a + b

    @mcp.tool()
    async def slow_progress(ctx: Context, steps: int = 3, delay_ms: int = 50) -> str:
        """Sleep `delay_ms` `steps` times, reporting progress after each step."""
        for step in range(1, steps + 1):
            await anyio.sleep(delay_ms / 1000)
            await ctx.report_progress(step, steps, f"step {step}/{steps}")
        return f"done {steps} steps"

    @mcp.tool()
    async def sleep_ms(ms: int) -> str:
        """Sleep `ms` milliseconds, then answer."""
        await anyio.sleep(ms / 1000)
        return f"slept {ms} ms"

    @mcp.tool()
    def counter_incr() -> int:
        """Increment and return a counter kept in this process (shows which process/session answered)."""
        calls["counter"] += 1
        return calls["counter"]

    @mcp.tool()
    def crash() -> str:
        """Kill this process mid-call with exit status 3 (no answer is ever sent)."""
        sys.stdout.flush()
        os._exit(3)

    @mcp.tool()
    def whoami() -> int:
        """The pid of this server process."""
        return os.getpid()

    @mcp.tool()
    def big(n: int) -> str:
        """A string of `n` ASCII bytes."""
        if not 0 <= n <= MAX_BIG:
            raise ToolError(f"n must be between 0 and {MAX_BIG}")
        return "x" * n

    @mcp.tool()
    def fail(message: str = "requested failure") -> str:
        """Answer with a tool error (isError: true) carrying `message`."""
        raise ToolError(message)

    @mcp.tool()
    def getenv(variable: str) -> str | None:
        """The value of an environment variable of this process, or null."""
        return os.environ.get(variable)

    @mcp.tool()
    def trace_context(ctx: Context) -> str:
        """The W3C trace context this request arrived with, in `_meta` and in HTTP headers (JSON)."""
        meta = ctx.request_context.meta or {}
        headers = ctx.headers or {}
        keys = ("traceparent", "tracestate")
        return json.dumps({"meta": {k: meta.get(k) for k in keys}, "headers": {k: headers.get(k) for k in keys}})

    @mcp.resource("test://info", name="info", mime_type="application/json")
    def info() -> str:
        """This server's name and pid."""
        return json.dumps({"name": name, "pid": os.getpid()})

    running = {"now": 0, "peak": 0}

    @mcp.tool()
    async def track(ms: int = 50) -> int:
        """Sleep `ms` while counting calls running at once; returns the peak seen so far."""
        running["now"] += 1
        running["peak"] = max(running["peak"], running["now"])
        try:
            await anyio.sleep(ms / 1000)
        finally:
            running["now"] -= 1
        return running["peak"]

    @mcp.tool()
    def peak() -> int:
        """The most `track` calls that ever ran at once in this process."""
        return running["peak"]

    stepped = {"steps": 0, "cancelled": 0}

    @mcp.tool()
    async def count_steps(ctx: Context, steps: int = 10_000, delay_ms: int = 10) -> str:
        """Take up to `steps` steps of `delay_ms`, counting each in this process and reporting progress
        after it; a call cancelled midway (notifications/cancelled, or its stream closed) is counted too."""
        try:
            for step in range(1, steps + 1):
                await anyio.sleep(delay_ms / 1000)
                stepped["steps"] += 1
                await ctx.report_progress(step, steps)
        except anyio.get_cancelled_exc_class():
            stepped["cancelled"] += 1
            raise
        return f"took {steps} steps"

    @mcp.tool()
    def step_count() -> str:
        """Steps `count_steps` took in this process, and how many of its calls were cancelled (JSON)."""
        return json.dumps(stepped)

    @mcp.tool()
    async def chatty(ctx: Context, text: str = "about this call") -> str:
        """Send an info-level log message about this call (`notifications/message`), then answer."""
        await ctx.info(text)
        return "said it"

    class Name(BaseModel):
        name: str

    @mcp.tool()
    async def ask_name(ctx: Context) -> str:
        """Ask the client for a name (a server-to-client request: elicitation), then greet it."""
        answer = await ctx.elicit("What is your name?", Name)
        if answer.action == "accept" and answer.data:
            return f"hello {answer.data.name}"
        return f"no name ({answer.action})"

    @mcp.prompt()
    def greet(who: str = "world") -> str:
        """A one-line greeting prompt."""
        return f"Say hello to {who}."

    return mcp


async def serve_legacy_stdio(mcp: MCPServer) -> None:
    """Handshake-era only on stdio: `server/discover` gets a JSON-RPC error, `initialize` still works."""
    lowlevel = mcp._lowlevel_server
    async with stdio_server() as (read_stream, write_stream), lowlevel.lifespan(lowlevel) as state:
        await serve_loop(
            lowlevel,
            read_stream,
            write_stream,
            lifespan_state=state,
            init_options=lowlevel.create_initialization_options(),
        )


class RejectModernEra:
    """ASGI middleware answering any request with a non-handshake `MCP-Protocol-Version` as a
    pre-2026 SDK server does: HTTP 400 with a JSON-RPC error body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        version = None
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            raw = headers.get(b"mcp-protocol-version")
            version = raw.decode("latin-1") if raw is not None else None
        if version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
            await self.app(scope, receive, send)
            return
        while True:  # drain the request body before answering
            message: Message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        supported = ", ".join(HANDSHAKE_PROTOCOL_VERSIONS)
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": "server-error",
                "error": {
                    "code": -32600,
                    "message": f"Bad Request: Unsupported protocol version: {version}. Supported versions: {supported}",
                },
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class AnnouncingServer(uvicorn.Server):
    """Prints the readiness line once uvicorn accepts connections."""

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self._ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._ready_line, flush=True)


def serve_http(mcp: MCPServer, port: int, legacy: bool) -> None:
    host = "127.0.0.1"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    app: Any = mcp.streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    if legacy:
        app = RejectModernEra(app)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    ready = f"READY http://{host}:{sock.getsockname()[1]}{MCP_PATH}"
    asyncio.run(AnnouncingServer(config, ready).serve(sockets=[sock]))


def export_spans(endpoint: str | None) -> None:
    """Send the SDK's server spans to an OTLP/HTTP endpoint (a global provider: this is a test server)."""
    if not endpoint:
        return
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "sdk-server"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")))
    trace.set_tracer_provider(provider)


def run(mcp: MCPServer, *, http: bool, port: int, legacy: bool) -> None:
    """Serve `mcp` until killed: Streamable HTTP on 127.0.0.1:`port`, or stdio; handshake era only if `legacy`."""
    if http:
        serve_http(mcp, port, legacy)
    elif legacy:
        anyio.run(serve_legacy_stdio, mcp)
    else:
        mcp.run("stdio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", action="store_true", help="serve Streamable HTTP on 127.0.0.1, not stdio")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default 0: any free port)")
    parser.add_argument("--legacy", action="store_true", help="serve the handshake era only")
    parser.add_argument("--name", default="sdk-test", help="server name reported to clients")
    args = parser.parse_args()
    export_spans(os.environ.get("SDK_SERVER_OTLP_ENDPOINT"))
    run(build_server(args.name), http=args.http, port=args.port, legacy=args.legacy)


if __name__ == "__main__":
    main()
