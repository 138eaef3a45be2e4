"""Test harness: real processes on loopback, ready when they print a line (never a sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx2
import pytest
from mcp_types import TextContent

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ROOT / "tests" / "support" / "servers"
MUX = SERVERS / "mux_server.py"
PYTHON = sys.executable
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    """A loopback port free a moment ago, for servers that cannot bind port 0 or must come back on the same
    port; a caller retries when it got taken meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Process:
    """A child process whose stdout lines are collected as they arrive."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _new_line: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, pattern: str, within_s: float = READY_TIMEOUT_S, *, after: int = 0) -> re.Match[str]:
        """The first stdout line matching `pattern` (already seen or still to come), from line `after` on."""
        regex = re.compile(pattern)
        seen = after
        async with asyncio.timeout(within_s):
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                if self.proc.returncode is not None and self._reader is not None and self._reader.done():
                    raise RuntimeError(f"process exited ({self.proc.returncode}) before printing {pattern!r}")
                self._new_line.clear()
                await self._new_line.wait()

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._new_line.set()
        self._new_line.set()

    async def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return self.proc.returncode if self.proc.returncode is not None else -1


@contextlib.asynccontextmanager
async def process(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path = ROOT, stderr: IO[bytes] | None = None
) -> AsyncIterator[Process]:
    """A child process; its stderr goes to ours, or to the file `stderr`."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    handle = Process(proc)
    handle._reader = asyncio.create_task(handle._read())
    try:
        yield handle
    finally:
        await handle.stop()


@contextlib.asynccontextmanager
async def http_server(*extra: str, name: str = "sdk-test") -> AsyncIterator[str]:
    """An official-SDK test server over Streamable HTTP; yields its MCP URL."""
    async with process(PYTHON, SERVERS / "sdk_server.py", "--http", "--port", "0", "--name", name, *extra) as proc:
        match = await proc.wait_for(r"READY (\S+)")
        yield match[1]


@dataclass
class Gateway:
    process: Process
    urls: dict[str, str]


@contextlib.asynccontextmanager
async def gateway(
    routes: str,
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready: str = r"^gateway: ready$",
    stderr: IO[bytes] | None = None,
) -> AsyncIterator[Gateway]:
    """Run `gateway --routes` on a routing document; started when it prints a line matching `ready`
    (`gateway: ready`; a test whose servers are down on purpose waits for its `waiting: …` line).
    Its log (stderr) goes to ours, or to the file `stderr`."""
    file = tmp_path / "routing.yaml"
    file.write_text(routes)
    async with process(PYTHON, "-m", "gateway.cli", "--routes", file, *args, env=env, stderr=stderr) as proc:
        await proc.wait_for(ready)
        urls = {}
        for line in proc.lines:
            match = re.match(r"MCP endpoint \(channel (\S+)\): (\S+)", line)
            if match:
                urls[match[1]] = match[2]
        yield Gateway(proc, urls)


def one_server_routes(block: str, **gateway_settings: object) -> str:
    """A routing document: the embedded relay on 127.0.0.1:0 and one channel `main` serving the server `block`
    describes (`gateway_settings` become the `gateway:` section)."""
    extra = "".join(f"  {k}: {v}\n" for k, v in gateway_settings.items())
    return (
        "relay: {listen: '127.0.0.1:0'}\n"
        + (f"gateway:\n{extra}" if extra else "")
        + f"servers:\n  srv: {block}\nchannels:\n  main: [srv]\n"
    )


def stdio_server(*extra: str) -> str:
    """A routing.yaml `stdio:` block for the SDK test server."""
    return _stdio_block(SERVERS / "sdk_server.py", extra)


def mux_stdio(*args: str, extra: str = "") -> str:
    """A routing.yaml server entry for the multiplexing test server over stdio (`--name`, `--legacy`, `--tools N`,
    `--page-size N` …); `extra` adds settings after the block (`, processes: 3`)."""
    return _stdio_block(MUX, args, extra)


def _stdio_block(script: Path, args: tuple[str, ...], extra: str = "") -> str:
    quoted = ", ".join(f'"{a}"' for a in (str(script), *args))
    return f'{{stdio: {{command: "{PYTHON}", args: [{quoted}]}}{extra}}}'


@contextlib.asynccontextmanager
async def mux_http(*flags: str, name: str, port: int = 0) -> AsyncIterator[str]:
    """The multiplexing test server over Streamable HTTP (`--legacy`: a handshake-era server, stateful, refusing
    requests without its session); yields its MCP URL. `port` brings it back on the port it had."""
    async with process(PYTHON, MUX, "--http", "--port", str(port), "--name", name, *flags) as proc:
        yield (await proc.wait_for(r"READY (\S+)"))[1]


@contextlib.asynccontextmanager
async def header_client(url: str, mode: str, **headers: str) -> AsyncIterator[Any]:
    """An official-SDK `mcp.Client` sending `headers` with every request (an X-Tenant, an Authorization)."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,  # type: ignore[arg-type]
    ):
        yield client


def tool_text(result: Any) -> str:
    """The text of a tool result's first content block (an `mcp` client's `CallToolResult`), asserted to be text."""
    assert result.content, result
    first = result.content[0]
    assert isinstance(first, TextContent), result
    return str(first.text)


MODERN = "2026-07-28"
ENVELOPE: dict[str, object] = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1"},
}
"""The `_meta` envelope of a 2026-07-28 request (MCP 2026-07-28 basic/index `_meta`)."""


def modern_call(
    id: int, tool: str, arguments: dict[str, object], **meta: object
) -> tuple[dict[str, object], dict[str, str]]:
    """A raw 2026-07-28 `tools/call` body (envelope keys in `meta` win) and the headers streamable-http
    requires with it."""
    body = {
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": {**ENVELOPE, **meta}},
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    return body, headers


async def legacy_initialize(http: httpx2.AsyncClient, url: str, **headers: str) -> httpx2.Response:
    """A raw handshake-era `initialize` POSTed to an MCP endpoint (JSON or SSE accepted), with `headers` too."""
    return await http.post(
        url,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
        headers={"Accept": "application/json, text/event-stream", **headers},
    )


def report(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Print figures to the terminal past pytest's output capture (campaign tables and counts)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n".join(lines), flush=True)
