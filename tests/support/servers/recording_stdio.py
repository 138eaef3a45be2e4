"""A scripted handshake-era stdio MCP server that records every line it receives (standard library only).

`--record PATH` appends each line read from stdin to PATH, so a test can show what reached the
server (and what never did). Serves raw_stdio's `initialize` and tools (`echo`, plus `héllo`, a
name that only travels base64-encoded in an `Mcp-Name` header), declares the 2025-11-25 `tasks`
capability, and answers every `resources/read` with the handshake era's -32002 resource-not-found.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from raw_stdio import ECHO_TOOL, arguments, handle, parse_flags, result, send, serve_lines

NON_ASCII_TOOL = {**ECHO_TOOL, "name": "héllo", "description": "Return `text` unchanged (a non-ASCII name)."}
CAPABILITIES = {"tools": {}, "resources": {}, "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}}
RESOURCE_NOT_FOUND = -32002


def serve(request: dict[str, Any], flags: argparse.Namespace) -> None:
    method, req_id, params = request.get("method"), request.get("id"), request.get("params") or {}
    if "id" not in request:
        return
    if method == "initialize":
        asked = params.get("protocolVersion")
        info = {"name": "recording", "version": "0.0.1"}
        result(req_id, {"protocolVersion": asked, "capabilities": CAPABILITIES, "serverInfo": info})
    elif method == "tools/list":
        result(req_id, {"tools": [ECHO_TOOL, NON_ASCII_TOOL]})
    elif method == "tools/call" and params.get("name") == NON_ASCII_TOOL["name"]:
        handle({**request, "params": {**params, "name": "echo"}}, flags)
    elif method == "resources/read":
        missing = {"code": RESOURCE_NOT_FOUND, "message": "Resource not found", "data": {"uri": params.get("uri")}}
        send({"jsonrpc": "2.0", "id": req_id, "error": missing})
    else:
        handle(request, flags)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--record", required=True)
    flags = parse_flags(parser)
    with open(flags.record, "a", encoding="utf-8") as record:
        serve_lines(_recorded(sys.stdin, record), serve, flags)


def _recorded(lines: Iterable[str], record: TextIO) -> Iterator[str]:
    for line in lines:
        record.write(line)
        record.flush()
        yield line


if __name__ == "__main__":
    main()
