"""Process hygiene under many parallel agents: `session: per-client` keeps to its cap and leaves nothing behind.

1,000 handshake-era client sessions (raw Streamable HTTP through the embedded relay, 24 at a
time) each call a `session: per-client` stdio server with `max_sessions: 8`, then end: a third
by `DELETE`, a third by going quiet (the idle timeout), a third by vanishing in the middle of a
call (the connection dropped, never seen again). Meanwhile `/proc` is sampled for the gateway's
live children: never more than the cap plus the server's shared process. Afterwards: no zombie,
every per-session process gone, and the gateway holds no more file descriptors than before.

MCP 2025-11-25, Transports (Streamable HTTP): Session Management — a client ends its session
with an HTTP DELETE carrying `Mcp-Session-Id`; the server may end sessions on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.harness import PYTHON, SERVERS, gateway, report
from tests.support.procfs import children

SESSIONS = int(os.environ.get("HYGIENE_SESSIONS", "1000"))
PARALLEL = 24
MAX_SESSIONS = 8
IDLE_TIMEOUT_S = 1.0
VERSION = "2025-11-25"
ACCEPT = {"Accept": "application/json, text/event-stream"}


def state(pid: int) -> str:
    """The process state letter (`Z` for a zombie), or `gone`."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # gone between the listing and the read: ENOENT, or ESRCH mid-exit
        return "gone"


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int) -> Counter[str]:
    """What the descriptors are (`socket`, `pipe`, `anon_inode:[eventpoll]`, files): for a failure's message."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kinds[target.split(":[")[0] if ":[" in target else target] += 1
    return kinds


def message(resp: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of a JSON or SSE answer."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:")]
        answer: dict[str, Any] = json.loads(data[-1])
        return answer
    answer = resp.json()
    return answer


class Agent:
    """One client session over raw Streamable HTTP."""

    def __init__(self, http: httpx2.AsyncClient, url: str, n: int) -> None:
        self.http, self.url, self.n = http, url, n
        self.headers: dict[str, str] = {}

    async def open(self) -> None:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": f"agent-{self.n}"}},
        }
        resp = await self.http.post(self.url, json=init, headers=ACCEPT)
        assert resp.status_code == 200, resp.text
        self.headers = {**ACCEPT, "Mcp-Session-Id": resp.headers["mcp-session-id"], "MCP-Protocol-Version": VERSION}
        note = await self.http.post(
            self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers
        )
        assert note.status_code == 202

    async def echo(self, text: str, delay_ms: int = 0) -> dict[str, Any]:
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": text, "delay_ms": delay_ms}},
        }
        return message(await self.http.post(self.url, json=call, headers=self.headers))

    async def delete(self) -> int:
        return (await self.http.delete(self.url, headers=self.headers)).status_code


@pytest.mark.timeout(max(300, SESSIONS // 3))  # about a minute on an idle 2-core machine for 1,000
async def test_a_thousand_per_client_sessions_keep_to_the_cap_and_leave_nothing_behind(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = f'{{command: "{PYTHON}", args: ["{SERVERS / "raw_stdio.py"}"]}}'
    routes = (
        "relay: {listen: '127.0.0.1:0'}\n"
        f"servers:\n  stateful: {{stdio: {server}, session: per-client, max_sessions: {MAX_SESSIONS},"
        f" idle_timeout_s: {IDLE_TIMEOUT_S}}}\n"
        "channels:\n  main: [stateful]\n"
    )
    async with gateway(routes, tmp_path) as gw:
        pid, url = gw.process.proc.pid, gw.urls["main"]
        shared = set(children(pid))
        assert len(shared) == 1, "the server's shared process is not the only child"
        async with httpx2.AsyncClient(timeout=60) as http:  # warm up: the first session and its process
            agent = Agent(http, url, -1)
            await agent.open()
            assert (await agent.echo("warm"))["result"]["content"][0]["text"] == "warm"
            assert await agent.delete() == 200
        await until_only(pid, shared)
        fds_before, kinds_before = fds(pid), fd_kinds(pid)

        peak, seen = 0, set[int]()
        sampling = True

        async def sample() -> None:
            nonlocal peak
            while sampling:
                kids = children(pid)
                live = [k for k in kids if state(k) not in ("Z", "gone")]
                peak = max(peak, len(live))
                seen.update(kids)
                await asyncio.sleep(0.01)

        outcomes: Counter[str] = Counter()
        gate = asyncio.Semaphore(PARALLEL)

        async def session(n: int) -> None:
            async with gate, httpx2.AsyncClient(timeout=60) as http:
                agent = Agent(http, url, n)
                await agent.open()
                if n % 3 == 2:  # vanishes mid-call: the connection is dropped, the session never seen again
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.05):
                            await agent.echo(f"gone-{n}", delay_ms=300)
                    outcomes["vanished"] += 1
                    return
                answer = await agent.echo(f"s-{n}")
                if "error" in answer:  # every process busy: the session is refused, never over the cap
                    assert answer["error"]["code"] == -32603, answer
                    outcomes["refused"] += 1
                else:
                    assert answer["result"]["content"][0]["text"] == f"s-{n}"
                    outcomes["answered"] += 1
                if n % 3 == 0:
                    assert await agent.delete() == 200
                    outcomes["deleted"] += 1
                else:
                    outcomes["went quiet"] += 1

        sampler = asyncio.create_task(sample())
        try:
            await asyncio.gather(*(session(n) for n in range(SESSIONS)))
            await until_only(pid, shared)  # idle timeouts reaped the rest
        finally:
            sampling = False
            await sampler
        fds_after = await until_fds(pid, url, fds_before)
        figures = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        report(
            request,
            [
                "",
                f"process hygiene: {SESSIONS} per-client sessions, {PARALLEL} at a time, max_sessions {MAX_SESSIONS}",
                f"  {figures}; server processes started {len(seen - shared)}, peak live {peak} (cap {MAX_SESSIONS} + 1"
                f" shared); zombies {sum(state(k) == 'Z' for k in children(pid))}; descriptors {fds_before} before,"
                f" {fds_after} after",
            ],
        )

        assert peak <= MAX_SESSIONS + 1, f"{peak} live server processes: over the cap of {MAX_SESSIONS} (+1 shared)"
        assert outcomes["answered"] + outcomes["refused"] + outcomes["vanished"] == SESSIONS, outcomes
        assert outcomes["answered"] >= SESSIONS // 10, outcomes
        assert len(seen) > MAX_SESSIONS * 4, "too few processes came and went to test anything"
        assert [k for k in children(pid) if state(k) == "Z"] == [], "zombie children"
        assert [k for k in seen - shared if state(k) != "gone"] == [], "a session's process outlived the run"
        assert fds_after <= fds_before, f"descriptors leaked: {kinds_before} before, {fd_kinds(pid)} after"


async def until_only(pid: int, shared: set[int], within_s: float = 60.0) -> None:
    """Until the gateway's only children are the shared process(es)."""
    async with asyncio.timeout(within_s):
        while set(children(pid)) != shared:  # noqa: ASYNC110 - /proc offers nothing to wait on
            await asyncio.sleep(0.05)


async def until_fds(pid: int, url: str, target: int, within_s: float = 40.0) -> int:
    """The gateway's descriptor count once back to `target`, or after `within_s`. Closing is
    asynchronous, and the gateway's keep-alive pools forget idle connections when next used
    (`gateway.tunnel.http1`), so each look is preceded by one more call, as the next agent would make."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within_s):
            while fds(pid) > target:
                async with httpx2.AsyncClient(timeout=60) as http:
                    agent = Agent(http, url, 0)
                    await agent.open()
                    await agent.echo("sweep")
                    assert await agent.delete() == 200
                await asyncio.sleep(0.5)
    return fds(pid)
