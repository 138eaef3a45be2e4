"""The MCP conformance toolchain in .tools/ (Node 22, the `@modelcontextprotocol/conformance` runner and the
reference server `server-everything`, installed by `bash scripts/conformance-tools.sh`), and routing.yaml blocks
that run server-everything behind the gateway."""

from __future__ import annotations

import json

import pytest

from tests.support.harness import ROOT

TOOLS = ROOT / ".tools" / "node_modules"
BIN = TOOLS / ".bin"
NODE = BIN / "node"
CONFORMANCE = TOOLS / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
EVERYTHING = TOOLS / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
LOOPBACK = ROOT / "scripts" / "loopback-only.cjs"
"""Node preload pinning every listen() to 127.0.0.1; prints `LISTENING http://127.0.0.1:PORT` on stderr."""


def require_tools() -> None:
    missing = [path for path in (NODE, CONFORMANCE, EVERYTHING) if not path.exists()]
    if missing:
        pytest.fail(
            "the MCP conformance toolchain is not installed (missing: "
            + ", ".join(str(path.relative_to(ROOT)) for path in missing)
            + "); run `bash scripts/conformance-tools.sh` (needs npm)",
            pytrace=False,
        )


def everything_stdio() -> str:
    """A routing.yaml `stdio:` block for server-everything (Node 22); fails the test when not installed."""
    require_tools()
    args = ", ".join(json.dumps(str(arg)) for arg in ("--require", LOOPBACK, EVERYTHING, "stdio"))
    return f"{{stdio: {{command: {json.dumps(str(NODE))}, args: [{args}], inherit_env: false}}}}"


def everything_stdio_routes() -> str:
    """A routing document whose single channel `main` is server-everything over stdio (Node 22)."""
    return (
        "relay: {listen: '127.0.0.1:0'}\n"
        "servers:\n"
        f"  everything: {everything_stdio()}\n"
        "channels:\n"
        "  main: [everything]\n"
    )
