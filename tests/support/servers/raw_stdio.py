"""A scripted, non-SDK stdio MCP server for fault tests (standard library only, handshake era only).

Reads newline-delimited JSON-RPC on stdin and answers `initialize`, `ping`, `tools/list` and
`tools/call` of its one tool `echo` (optional `delay_ms`: answer that much later); any other
request (`server/discover` included) gets -32601.
Flags change what happens when `tools/call` arrives:
  --malformed     answer with a line that is not JSON, then carry on serving
  --die-on-call   exit with status 4 without answering
  --hang-on-call  never answer that call (other requests are still served)
Restart scripting (independent of the above):
  --spawn-log FILE          append this process's pid to FILE when it starts (count the spawns)
  --die-in-handshake N,...  exit with status 5 on `initialize` when this is the Nth spawn in FILE
  --call-log FILE           append the `text` of each `echo` call to FILE before answering it
  --echo-delay-ms N         take N ms over each `echo` call (calls stay in flight long enough to break)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
ECHO_TOOL = {
    "name": "echo",
    "description": "Return `text` unchanged.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def result(req_id: Any, value: dict[str, Any]) -> None:
    send({"jsonrpc": "2.0", "id": req_id, "result": value})


def error(req_id: Any, code: int, message: str) -> None:
    send({"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}})


def handle(request: dict[str, Any], flags: argparse.Namespace) -> None:
    method, req_id, params = request.get("method"), request.get("id"), request.get("params") or {}
    if "id" not in request:
        return  # a notification: nothing to answer
    if method == "initialize" and flags.spawn in flags.die_in_handshake:
        sys.exit(5)
    if method == "initialize":
        asked = params.get("protocolVersion")
        result(
            req_id,
            {
                "protocolVersion": asked if asked in VERSIONS else VERSIONS[-1],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "raw-stdio", "version": "0.0.1"},
            },
        )
    elif method == "ping":
        result(req_id, {})
    elif method == "tools/list":
        result(req_id, {"tools": [ECHO_TOOL]})
    elif method == "tools/call":
        if flags.malformed:
            sys.stdout.write("this is not json {\n")
            sys.stdout.flush()
        elif flags.die_on_call:
            sys.exit(4)
        elif flags.hang_on_call:
            return
        elif params.get("name") == "echo":
            text = str((params.get("arguments") or {}).get("text", ""))
            time.sleep((flags.echo_delay_ms + int((params.get("arguments") or {}).get("delay_ms", 0))) / 1000)
            if flags.call_log is not None:
                with flags.call_log.open("a") as log:
                    log.write(f"{text}\n")
            result(req_id, {"content": [{"type": "text", "text": text}], "isError": False})
        else:
            error(req_id, -32602, f"unknown tool {params.get('name')!r}")
    else:
        error(req_id, -32601, f"method not found: {method}")


def main() -> None:
    serve_lines(sys.stdin, handle, parse_flags(arguments()))


def arguments(description: str | None = __doc__) -> argparse.ArgumentParser:
    """This server's command line; servers built on it add their own flags."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    behaviour = parser.add_mutually_exclusive_group()
    behaviour.add_argument("--malformed", action="store_true")
    behaviour.add_argument("--die-on-call", action="store_true")
    behaviour.add_argument("--hang-on-call", action="store_true")
    parser.add_argument("--spawn-log", type=Path)
    parser.add_argument("--call-log", type=Path)
    parser.add_argument("--echo-delay-ms", type=int, default=0)
    parser.add_argument("--die-in-handshake", type=lambda v: {int(n) for n in v.split(",")}, default=set())
    return parser


def parse_flags(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The flags, with `spawn` the number of this start (counted in `--spawn-log`, 0 without it)."""
    flags = parser.parse_args()
    flags.spawn = 0
    if flags.spawn_log is not None:
        with flags.spawn_log.open("a") as log:
            log.write(f"{os.getpid()}\n")
        flags.spawn = len(flags.spawn_log.read_text().split())
    return flags


def serve_lines(
    lines: Iterable[str], handler: Callable[[dict[str, Any], argparse.Namespace], None], flags: argparse.Namespace
) -> None:
    """Answer each JSON-RPC line with `handler`; a line that is not a JSON object gets the JSON-RPC error."""
    for line in lines:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            error(None, -32700, "parse error")
            continue
        if isinstance(request, dict):
            handler(request, flags)
        else:
            error(None, -32600, "invalid request")


if __name__ == "__main__":
    main()
