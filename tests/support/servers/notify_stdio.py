"""A scripted stdio MCP server that talks a lot while it works (standard library only).

Serves requests concurrently, so one pipe carries many calls' messages interleaved. Its one tool
`work` (arguments `tag`, `steps`) answers `tag` after `steps` steps; each step sends
  - `notifications/progress` with the request's own progress token (when it gave one), message `tag`;
  - a log message about the request (`notifications/message`, data `{"tag": tag}`);
  - (handshake era only) an unsolicited log message, data `"unsolicited"`.
Handshake era by default (`server/discover` gets -32601); with `--modern` it answers
`server/discover` as a 2026-07-28 server and, as that era requires, logs about a request only when
the request's `_meta` asked (`io.modelcontextprotocol/logLevel`), and sends nothing unsolicited.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

HANDSHAKE = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN = "2026-07-28"
LOG_LEVEL = "io.modelcontextprotocol/logLevel"
WORK_TOOL = {
    "name": "work",
    "description": "Take `steps` steps, talking about each, then answer `tag`.",
    "inputSchema": {
        "type": "object",
        "properties": {"tag": {"type": "string"}, "steps": {"type": "integer"}},
        "required": ["tag"],
    },
}
INFO = {"name": "notify-stdio", "version": "0.0.1"}
CAPABILITIES = {"tools": {}, "logging": {}}


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def notify(method: str, params: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "method": method, "params": params})


async def work(req_id: Any, params: dict[str, Any], modern: bool) -> None:
    arguments = params.get("arguments") or {}
    tag, steps = str(arguments.get("tag", "")), int(arguments.get("steps", 3))
    meta = params.get("_meta") or {}
    token = meta.get("progressToken")
    logs = LOG_LEVEL in meta if modern else True
    for step in range(1, steps + 1):
        await asyncio.sleep(0)  # let the other calls' messages in between
        if token is not None:
            notify("notifications/progress", {"progressToken": token, "progress": step, "total": steps, "message": tag})
        if logs:
            notify("notifications/message", {"level": "info", "logger": "work", "data": {"tag": tag}})
        if not modern:
            notify("notifications/message", {"level": "info", "data": "unsolicited"})
    result = {"content": [{"type": "text", "text": tag}], "isError": False}
    if modern:
        result["resultType"] = "complete"
    send({"jsonrpc": "2.0", "id": req_id, "result": result})


async def handle(request: dict[str, Any], modern: bool) -> None:
    method, req_id, params = request.get("method"), request.get("id"), request.get("params") or {}
    if "id" not in request:
        return
    if method == "initialize":
        asked = params.get("protocolVersion")
        version = asked if asked in HANDSHAKE else HANDSHAKE[-1]
        result = {"protocolVersion": version, "capabilities": CAPABILITIES, "serverInfo": INFO}
        send({"jsonrpc": "2.0", "id": req_id, "result": result})
    elif method == "server/discover" and modern:
        result = {
            "supportedVersions": [MODERN],
            "capabilities": CAPABILITIES,
            "resultType": "complete",
            "_meta": {"io.modelcontextprotocol/serverInfo": INFO},
        }
        send({"jsonrpc": "2.0", "id": req_id, "result": result})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": req_id, "result": {"tools": [WORK_TOOL]}})
    elif method == "tools/call" and params.get("name") == "work":
        await work(req_id, params, modern)
    else:
        send({"jsonrpc": "2.0", "id": req_id, "error": {"code": -32601, "message": f"method not found: {method}"}})


async def serve(modern: bool) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    running: set[asyncio.Task[None]] = set()
    while line := await reader.readline():
        if not line.strip():
            continue
        task = asyncio.create_task(handle(json.loads(line), modern))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.wait(running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modern", action="store_true", help="answer server/discover as a 2026-07-28 server")
    asyncio.run(serve(parser.parse_args().modern))


if __name__ == "__main__":
    main()
