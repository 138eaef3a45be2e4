"""A minimal, hand-written MCP server for the benchmark: the upstream that is never the bottleneck.

Owns nothing but answering `initialize`, `server/discover`, `tools/list` and
`tools/call echo` with as little work as possible, over stdio (one JSON-RPC
message per line; all lines of one read answered with one write) or over
Streamable HTTP (a raw asyncio HTTP/1.1 server, keep-alive, JSON answers).
Must not import the gateway; it stands for "any server".

    python bench/fast_server.py [--era legacy|modern|both]                  # stdio
    python bench/fast_server.py --http --port 0 [--era ...]                  # prints READY http://127.0.0.1:PORT/mcp

`--era legacy` answers `server/discover` with -32601 (a handshake-era server),
`modern` answers only `server/discover` style requests (no `initialize`),
`both` answers both (a gateway probing with `server/discover` takes it as modern).
"""

from __future__ import annotations

import argparse
import asyncio
import os

import orjson

NAME = "bench-fast"
LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN = "2026-07-28"
SERVER_INFO = {"name": NAME, "version": "1.0"}
TOOL = {
    "name": "echo",
    "description": "Echoes back the input",
    "inputSchema": {
        "type": "object",
        "properties": {"message": {"type": "string", "description": "Message to echo"}},
        "required": ["message"],
    },
}
_META_KEY = "io.modelcontextprotocol/protocolVersion"


class Answerer:
    """JSON-RPC message bytes in, answer bytes (or None) out. No I/O."""

    def __init__(self, era: str) -> None:
        self.legacy = era in ("legacy", "both")
        self.modern = era in ("modern", "both")

    def answer(self, line: bytes) -> bytes | None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            return orjson.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
        if not isinstance(msg, dict) or "id" not in msg or "method" not in msg:
            return None  # notifications and responses need no answer
        rid, method = msg["id"], msg["method"]
        params = msg.get("params") or {}
        modern_req = self.modern and isinstance(params.get("_meta"), dict) and _META_KEY in params["_meta"]
        if method == "tools/call":
            arguments = params.get("arguments") or {}
            text = arguments.get("message", "")
            result: dict[str, object] = {"content": [{"type": "text", "text": text}]}
            if modern_req:
                result["resultType"] = "complete"
            return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result})
        if method == "tools/list":
            result = {"tools": [TOOL]}
            if modern_req:
                result.update(resultType="complete", ttlMs=0, cacheScope="private")
            return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result})
        if method == "initialize" and self.legacy:
            asked = params.get("protocolVersion")
            version = asked if asked in LEGACY_VERSIONS else LEGACY_VERSIONS[-1]
            result = {"protocolVersion": version, "capabilities": {"tools": {}}, "serverInfo": SERVER_INFO}
            return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result})
        if method == "server/discover" and self.modern:
            result = {
                "supportedVersions": [MODERN],
                "capabilities": {"tools": {}},
                "resultType": "complete",
                "ttlMs": 0,
                "cacheScope": "private",
                "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
            }
            return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result})
        if method == "ping":
            return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": {}})
        return orjson.dumps(
            {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"method not found: {method}"}}
        )


def serve_stdio(answerer: Answerer) -> None:
    """Read what is there, answer every complete line, write the answers in one go."""
    buf = b""
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return
        buf += chunk
        if b"\n" not in chunk:
            continue
        *lines, buf = buf.split(b"\n")
        out = [a for line in lines if line.strip() and (a := answerer.answer(line)) is not None]
        if out:
            data = b"\n".join(out) + b"\n"
            view = memoryview(data)
            while view:
                n = os.write(1, view)
                view = view[n:]


class _HttpProtocol(asyncio.Protocol):
    """Just enough HTTP/1.1 for a benchmark client: POST with Content-Length, keep-alive."""

    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            length = 0
            close = False
            for header in header_lines:
                name, _, value = header.partition(":")
                lname = name.strip().lower()
                if lname == "content-length":
                    length = int(value.strip())
                elif lname == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self._respond(request_line.split(" ", 1)[0], body, close)

    def _respond(self, method: str, body: bytes, close: bool) -> None:
        assert self.transport is not None
        if method == "POST":
            answer = self.answerer.answer(body)
            if answer is None:
                status, payload, ctype = "202 Accepted", b"", None
            else:
                status, payload, ctype = "200 OK", answer, "application/json"
        elif method == "DELETE":
            status, payload, ctype = "200 OK", b"", None
        else:
            status, payload, ctype = "405 Method Not Allowed", b"", None
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(payload)}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        if close:
            head += "Connection: close\r\n"
        self.transport.write(head.encode() + b"\r\n" + payload)
        if close:
            self.transport.close()


async def serve_http(answerer: Answerer, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _HttpProtocol(answerer), "127.0.0.1", port)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY http://127.0.0.1:{bound}/mcp", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve Streamable HTTP on 127.0.0.1 instead of stdio")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--era", choices=["legacy", "modern", "both"], default="legacy")
    args = parser.parse_args()
    answerer = Answerer(args.era)
    if not args.http:
        serve_stdio(answerer)
        return
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a gateway dependency
        runner = asyncio.Runner()
    with runner, __import__("contextlib").suppress(KeyboardInterrupt):
        runner.run(serve_http(answerer, args.port))


if __name__ == "__main__":
    main()
