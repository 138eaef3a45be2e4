"""The ops endpoints from a test's side: a standalone `gateway relay` process, the ops URL a gateway prints,
`/healthz` `/readyz` `/metrics` asked until they answer as expected (a bound, never a sleep)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.support.harness import PYTHON, Process, process

RELAY_KEY = "relay-gateway-key-0123456789"
TUNNEL = "t_ops"


@contextlib.asynccontextmanager
async def standalone_relay(
    tmp_path: Path, port: int, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, Process]]:
    """`gateway relay` on 127.0.0.1:`port`; yields its base URL once it prints `relay: ready`."""
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\ntunnels:\n  {TUNNEL}:\n    gateway_key: env:RELAY_KEY\nclient_seen_grace_s: 1\n"
    )
    async with process(
        PYTHON, "-m", "gateway.cli", "relay", "--config", config, env={"RELAY_KEY": RELAY_KEY, **(env or {})}
    ) as proc:
        match = await proc.wait_for(r"relay: ready (\S+)")
        yield match[1], proc


def ops_url(proc: Process) -> str:
    """The ops listener's base URL, from the `ops: listening on URL` line the gateway printed."""
    for line in proc.lines:
        match = re.match(r"ops: listening on (\S+)", line)
        if match:
            return match[1]
    raise AssertionError("the gateway printed no ops URL")


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def until_status(url: str, status: int, within_s: float = 30.0) -> str:
    """Ask `url` until it answers `status`; its last body. (A condition with a bound, not a sleep.)"""
    body = ""
    async with asyncio.timeout(within_s):
        while True:
            code, body = await get(url)
            if code == status:
                return body
            await asyncio.sleep(0.05)
