"""The operator console from a test's side: the default routing.yaml moved to free loopback ports with an
ops listener, `/api/status` asked until a condition holds (a bound, never a sleep), and a call to the demo
clock that fails because its process is killed while the call runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support.harness import PYTHON, ROOT, free_port
from tests.support.waiting import until

ARGUMENT_MARKER = "console-argument-marker-7f3a"
"""Put in a failing call's arguments: no console answer may ever contain it."""


CLOCK_COMMAND = """      command: "{python}"       # the interpreter running the gateway (its virtualenv's)
      args: [-m, gateway.demo.clock]
"""


def default_routes(ops: str = "{listen: '127.0.0.1:0'}", *, hold_down: Path | None = None) -> str:
    """The shipped routing.yaml with the embedded relay on port 0, the notes server on a free port, and
    `ops:` as given. With `hold_down`, the clock cannot start again while that file exists (its command
    wrapped in `sh`, which execs the same server): a test sees it down for as long as it needs."""
    text = (ROOT / "routing.yaml").read_text()
    port = str(free_port())
    text = text.replace("127.0.0.1:8780", "127.0.0.1:0").replace("8781", port)
    assert "8780" not in text
    if hold_down is not None:
        assert CLOCK_COMMAND in text
        script = f'test -e "{hold_down}" && exit 1; exec "{PYTHON}" -m gateway.demo.clock'
        held = f"      command: sh\n      args: [-c, '{script}']\n    restart_backoff_max_s: 0.5\n"
        text = text.replace(CLOCK_COMMAND, held)
    return f"{text}\nops: {ops}\n"


async def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as resp:
        assert resp.status == 200, f"{url}: HTTP {resp.status}"
        return json.loads(await resp.text())


async def until_status(
    ops: str, condition: Callable[[dict[str, Any]], bool], within_s: float = 60.0, **headers: str
) -> dict[str, Any]:
    """`/api/status` asked until `condition(status)` holds; that status."""
    async with asyncio.timeout(within_s):
        while True:
            status = await get_json(f"{ops}/api/status", headers)
            if condition(status):
                return status
            await asyncio.sleep(0.05)


def server(status: dict[str, Any], name: str) -> dict[str, Any]:
    for channel in status["channels"]:
        for entry in channel["servers"]:
            if entry["name"] == name:
                return dict(entry)
    raise AssertionError(f"no server {name!r} in the status")


async def clock_pid(ops: str, after: int = 0) -> int:
    """The pid of the newest clock process, from the log tail's `stdio server 'clock' started (pid N)`."""
    async with asyncio.timeout(60):
        while True:
            lines = await get_json(f"{ops}/api/logs?level=INFO&since={after}")
            pids = [re.search(r"'clock' started \(pid (\d+)\)", line["message"]) for line in lines]
            found = [int(match[1]) for match in pids if match]
            if found:
                return found[-1]
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def killed_mid_call(mcp_url: str, ops: str, hold_down: Path) -> AsyncIterator[asyncio.Task[None]]:
    """Start a long `countdown` on the clock (with the marker among its arguments), kill the clock process
    once the call runs in it (its first progress report came back), and yield the call's task (it ends with
    the gateway's error). The clock stays down while in the block (`hold_down` exists), and may start again
    after it."""
    pid = await clock_pid(ops)
    running = asyncio.Event()

    async def progressed(progress: float, total: float | None, message: str | None) -> None:
        running.set()

    async def call() -> None:
        async with Client(mcp_url) as client:
            try:
                await client.call_tool(
                    "countdown",
                    {"steps": 60, "interval_ms": 200, "note": ARGUMENT_MARKER},
                    progress_callback=progressed,
                )
            except MCPError:
                return
            raise AssertionError("the call survived its server being killed")

    task = asyncio.create_task(call())
    try:
        # "in flight" on the status page is not enough: under load the request may still wait for the pipe's
        # flush when the kill lands, and the call then fails as `connect`, not as the cut transport
        await until(lambda: running.is_set() or task.done(), within_s=60)
        assert not task.done(), "the call ended before the server was killed"
        await asyncio.to_thread(hold_down.touch)
        os.kill(pid, signal.SIGKILL)
        yield task
    finally:
        await asyncio.to_thread(hold_down.unlink, missing_ok=True)
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
