"""Driving `HttpUpstream` in tests: the official-SDK probe server as a process (`http_probe_server.py`, ready when
it prints its port), an upstream factory's type, and calls built as the channel layer builds them."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from msgspec import UNSET, Raw

from gateway.protocol.eras import EMPTY_OBJECT, Bridge
from gateway.protocol.mcp import Call, Era, Notify, Reply
from gateway.protocol.wire import Headers
from gateway.upstream.http import HttpUpstream
from tests.support.harness import SERVERS
from tests.support.upstream_support import collect

SERVER = SERVERS / "http_probe_server.py"
MAX_BYTES = 4 * 1024 * 1024
PATIENCE_S = 30.0
"""Upper bound for things that should happen promptly; only reached when something is broken."""


@contextlib.contextmanager
def sdk_server(*flags: str) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, str(SERVER), *flags], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("PORT "), f"test server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=PATIENCE_S)
        if proc.stdout is not None:
            proc.stdout.close()


Factory = Callable[..., HttpUpstream]


async def started(make: Factory, base: str, **kwargs: Any) -> HttpUpstream:
    up = make(f"{base}/mcp", **kwargs)
    await up.start()
    return up


def make_call(
    up: HttpUpstream,
    bridge: Bridge,
    method: str,
    params: dict[str, Any] | None = None,
    *,
    id: object = 1,
    headers: Headers | None = None,
    own_session: bool = True,
) -> Call:
    """A call as the channel layer would build it for this server's era."""
    assert up.info is not None
    raw = UNSET if params is None else Raw(json.dumps(params).encode())
    if up.info.era is Era.MODERN and id is not None:
        raw = bridge.modern_params(raw, EMPTY_OBJECT, bridge.client_info)
    call_id = None if id is None else Raw(json.dumps(id).encode())
    return Call(method, call_id, raw, headers or {}, own_session=own_session)


def tool_call(up: HttpUpstream, bridge: Bridge, name: str, progress: str | None = None, **args: Any) -> Call:
    params: dict[str, Any] = {"name": name, "arguments": args}
    if progress is not None:
        params["_meta"] = {"progressToken": progress}
    return make_call(up, bridge, "tools/call", params)


async def run(up: HttpUpstream, call: Call) -> tuple[list[Notify], Reply]:
    return await collect(up.exchange(call))


async def issued_sessions(http: aiohttp.ClientSession, base: str) -> list[str]:
    async with http.get(f"{base}/test/sessions") as resp:
        sessions: list[str] = await resp.json()
        return sessions
