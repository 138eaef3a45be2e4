"""The test servers in tests/support/servers behave as the gateway tests assume, checked with the SDK client alone.

No gateway code runs here: if these fail, the servers (or the SDK) changed, not the gateway.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tests.support.harness import MODERN, ROOT, SERVERS, tool_text

SDK_SERVER = SERVERS / "sdk_server.py"
RAW_STDIO = SERVERS / "raw_stdio.py"
READY_TIMEOUT = 30.0

Target = StdioServerParameters | str


@asynccontextmanager
async def sdk_server(transport: str, *flags: str) -> AsyncIterator[Target]:
    """Stdio parameters for the SDK test server, or the URL of one started over HTTP."""
    if transport == "stdio":
        yield StdioServerParameters(command=sys.executable, args=[str(SDK_SERVER), *flags])
        return
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SDK_SERVER), "--http", "--port", "0", *flags, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)).decode().strip()
        assert line.startswith("READY http://127.0.0.1:"), line
        yield line.split(" ", 1)[1]
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


TRANSPORTS = ["stdio", "http"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_auto_client_gets_modern_era_from_dual_era_server(transport: str) -> None:
    async with sdk_server(transport) as target, Client(target, mode="auto") as client:
        assert client.protocol_version == MODERN
        assert tool_text(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
        assert tool_text(await client.call_tool("echo", {"text": "héllo"})) == "héllo"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_auto_client_falls_back_to_handshake_on_legacy_server(transport: str) -> None:
    async with sdk_server(transport, "--legacy", "--name", "old") as target, Client(target, mode="auto") as client:
        assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        assert client.server_info is not None
        assert client.server_info.name == "old"
        assert tool_text(await client.call_tool("add", {"a": 40, "b": 2})) == "42"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_legacy_client_works_with_dual_era_server(transport: str) -> None:
    async with sdk_server(transport) as target, Client(target, mode="legacy") as client:
        assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        assert tool_text(await client.call_tool("echo", {"text": "x"})) == "x"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_pinned_modern_client_is_refused_by_legacy_server(transport: str) -> None:
    async with sdk_server(transport, "--legacy") as target, Client(target, mode=MODERN) as client:
        with pytest.raises(MCPError):
            await client.list_tools()


@pytest.mark.parametrize("mode", ["legacy", MODERN])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_progress_state_and_sizes(transport: str, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with sdk_server(transport) as target, Client(target, mode=mode) as client:
        result = await client.call_tool("slow_progress", {"steps": 3, "delay_ms": 10}, progress_callback=on_progress)
        assert tool_text(result) == "done 3 steps"
        assert seen == [(1, 3, "step 1/3"), (2, 3, "step 2/3"), (3, 3, "step 3/3")]
        assert [tool_text(await client.call_tool("counter_incr")) for _ in range(3)] == ["1", "2", "3"]
        assert int(tool_text(await client.call_tool("whoami"))) > 0
        assert len(tool_text(await client.call_tool("big", {"n": 300_000}))) == 300_000
        failed = await client.call_tool("fail", {"message": "nope"})
        assert failed.is_error
        assert "nope" in tool_text(failed)
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"echo", "add", "slow_progress", "sleep_ms", "counter_incr", "crash", "whoami", "big"} <= tools
        info = await client.read_resource("test://info")
        assert json.loads(getattr(info.contents[0], "text", ""))["name"] == "sdk-test"


async def test_crash_ends_the_stdio_call_with_an_error() -> None:
    async with sdk_server("stdio") as target, Client(target, mode="legacy") as client:
        with pytest.raises(MCPError):
            await client.call_tool("crash", read_timeout_seconds=20)


async def test_raw_stdio_server_speaks_the_handshake_era() -> None:
    params = StdioServerParameters(command=sys.executable, args=[str(RAW_STDIO)])
    async with Client(params, mode="auto") as client:
        assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
        assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
        assert tool_text(await client.call_tool("echo", {"text": "plain"})) == "plain"


def raw_exchange(flag: str, *requests: dict[str, object]) -> tuple[list[str], int | None]:
    """Write requests to raw_stdio.py with ``flag``, close stdin, return its stdout lines and exit code."""
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    proc = subprocess.run(
        [sys.executable, str(RAW_STDIO), flag], input=lines, capture_output=True, text=True, timeout=30
    )
    return proc.stdout.splitlines(), proc.returncode


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "a"}}}
PING = {"jsonrpc": "2.0", "id": 3, "method": "ping"}


def test_raw_stdio_malformed_answers_call_with_non_json() -> None:
    out, code = raw_exchange("--malformed", INIT, CALL, PING)
    assert json.loads(out[0])["result"]["protocolVersion"] == "2025-06-18"
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(out[1])
    assert json.loads(out[2]) == {"jsonrpc": "2.0", "id": 3, "result": {}}
    assert code == 0


def test_raw_stdio_die_on_call_exits_without_answer() -> None:
    out, code = raw_exchange("--die-on-call", INIT, CALL, PING)
    assert len(out) == 1
    assert code == 4


def test_raw_stdio_hang_on_call_still_serves_other_requests() -> None:
    out, code = raw_exchange("--hang-on-call", INIT, CALL, PING)
    assert [json.loads(line)["id"] for line in out] == [1, 3]
    assert code == 0


async def test_demo_clock_over_stdio() -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "gateway.demo.clock"], cwd=str(ROOT))
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with Client(params, mode="auto") as client:
        assert client.protocol_version == MODERN
        now = await client.call_tool("now", {"timezone": "Asia/Tokyo"})
        assert now.structured_content is not None
        assert now.structured_content["utc_offset"] == "+09:00"
        converted = await client.call_tool(
            "convert_time",
            {"time": "2026-01-15T09:30", "source_timezone": "Europe/Paris", "target_timezone": "UTC"},
        )
        assert converted.structured_content is not None
        assert converted.structured_content["target"]["datetime"] == "2026-01-15T08:30:00+00:00"
        bad = await client.call_tool("now", {"timezone": "Mars/Olympus"})
        assert bad.is_error
        await client.call_tool("countdown", {"steps": 3, "interval_ms": 0}, progress_callback=on_progress)
        assert seen == [1, 2, 3]


async def test_demo_notes_over_http() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.demo.notes", "--port", "0", cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)).decode().strip()
        assert line.startswith("notes: listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        async with Client(url, mode="legacy") as old, Client(url, mode="auto") as new:
            assert new.protocol_version == MODERN
            added = await old.call_tool("add_note", {"title": "Buy milk", "tags": ["Home"]})
            assert added.structured_content is not None
            note_id = added.structured_content["id"]
            found = await new.call_tool("search_notes", {"query": "milk"})
            assert found.structured_content == {"result": [added.structured_content]}
            prompt = await new.get_prompt("summarize_notes", {"tag": "home"})
            assert "Buy milk" in str(prompt.messages[0].content)
            assert not (await new.call_tool("delete_note", {"note_id": note_id})).is_error
            assert (await old.call_tool("delete_note", {"note_id": note_id})).is_error
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
