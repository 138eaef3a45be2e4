"""Notifications reach only the request they belong to: two clients on one shared stdio process.

A shared stdio pipe carries every client's calls interleaved; the scripted server
(tests/support/servers/notify_stdio.py) sends progress for each request's own token, log messages about
each request and (handshake era) unsolicited ones. Over thousands of interleaved calls through the
relay, no client ever sees another's notification, nor an unsolicited one, and a 2026-07-28 client
sees log messages only for requests that asked for them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.harness import MODERN, PYTHON, SERVERS, gateway, http_server, legacy_initialize, one_server_routes

CALLS = 1000
"""Calls per client (each of `STEPS` steps, so several notifications each)."""
STEPS = 3
WAIT = 60.0
LEGACY = "2025-11-25"


def _routes(*flags: str) -> str:
    args = ", ".join(json.dumps(str(arg)) for arg in (SERVERS / "notify_stdio.py", *flags))
    return one_server_routes(f"{{stdio: {{command: {json.dumps(PYTHON)}, args: [{args}]}}}}")


@dataclass
class Heard:
    """What one client saw during its calls: notifications by kind, and any that were not its own."""

    progress: int = 0
    logs: int = 0
    foreign: list[str] = field(default_factory=list)


def _events(response: httpx2.Response) -> list[dict[str, Any]]:
    if response.headers["content-type"].startswith("application/json"):
        return [response.json()]
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def _check(events: list[dict[str, Any]], tag: str, heard: Heard) -> None:
    *notes, answer = events
    assert answer["result"]["content"][0]["text"] == tag, answer
    for note in notes:
        params = note.get("params") or {}
        if note.get("method") == "notifications/progress" and params.get("progressToken") == tag:
            if params.get("message") == tag:
                heard.progress += 1
                continue
        elif note.get("method") == "notifications/message" and params.get("data") == {"tag": tag}:
            heard.logs += 1
            continue
        heard.foreign.append(json.dumps(note))


class Client:
    """A raw HTTP MCP client of one era calling `work` through the relay."""

    def __init__(self, http: httpx2.AsyncClient, url: str, name: str, era: str, *, logs: bool = False) -> None:
        self._http, self._url, self.name, self._era, self._logs = http, url, name, era, logs
        self._session: str | None = None
        self.heard = Heard()

    async def start(self) -> None:
        if self._era == LEGACY:
            answer = await legacy_initialize(self._http, self._url)
            while answer.status_code == 503:  # the gateway has not polled yet: asked again (bounded by WAIT)
                answer = await legacy_initialize(self._http, self._url)
            self._session = answer.headers["mcp-session-id"]

    async def call(self, n: int) -> None:
        tag = f"{self.name}-{n}"
        meta: dict[str, Any] = {"progressToken": tag}
        headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": self._era}
        if self._era == MODERN:
            meta["io.modelcontextprotocol/protocolVersion"] = MODERN
            meta["io.modelcontextprotocol/clientCapabilities"] = {}
            if self._logs:
                meta["io.modelcontextprotocol/logLevel"] = "debug"
            headers |= {"Mcp-Method": "tools/call", "Mcp-Name": "work"}
        else:
            assert self._session is not None
            headers["Mcp-Session-Id"] = self._session
        params = {"name": "work", "arguments": {"tag": tag, "steps": STEPS}, "_meta": meta}
        body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}
        response = await self._http.post(self._url, json=body, headers=headers)
        while response.status_code == 503:  # not polled yet (only before the first poll)
            response = await self._http.post(self._url, json=body, headers=headers)
        assert response.status_code == 200, response.text
        _check(_events(response), tag, self.heard)

    async def run(self, calls: range, workers: int) -> None:
        queue = iter(calls)

        async def worker() -> None:
            for n in queue:
                await self.call(n)

        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(worker())


async def _interleaved(*runs: Callable[[], Awaitable[None]]) -> None:
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as group:
        for run in runs:
            group.create_task(run())


async def test_two_clients_on_a_handshake_era_process_never_hear_each_other(tmp_path: Path) -> None:
    """MCP 2025-11-25 basic/utilities/progress ("Progress notifications MUST only reference tokens
    that were provided in an active request"), server/utilities/logging, and 2026-07-28
    server/utilities/logging ("MUST NOT deliver it ... on any stream other than the one carrying
    the response to the request that set the log level"): a handshake-era client and a 2026-07-28
    one share a handshake-era stdio process; each gets all of its own progress and nothing else.
    The process's log messages cannot be told apart on the pipe: they go to the gateway's log."""
    async with gateway(_routes(), tmp_path) as gw, httpx2.AsyncClient(timeout=WAIT) as http:
        old = Client(http, gw.urls["main"], "A", LEGACY)
        new = Client(http, gw.urls["main"], "B", MODERN, logs=True)
        await old.start()
        await _interleaved(lambda: old.run(range(CALLS), 4), lambda: new.run(range(CALLS), 4))
    for client in (old, new):
        assert client.heard.foreign == [], f"{client.name} heard another's notifications"
        assert client.heard.progress == CALLS * STEPS, client.name
        assert client.heard.logs == 0, client.name


async def test_log_messages_reach_only_the_request_that_asked(tmp_path: Path) -> None:
    """MCP 2026-07-28 server/utilities/logging ("Per-request log level"): a 2026-07-28 stdio server
    logs only about requests whose `_meta` carries `io.modelcontextprotocol/logLevel`, so with one
    such request running its messages are that request's: the client that asked gets every one;
    another client sharing the process (with many calls at once) gets none, and only its progress."""
    async with gateway(_routes("--modern"), tmp_path) as gw, httpx2.AsyncClient(timeout=WAIT) as http:
        asking = Client(http, gw.urls["main"], "A", MODERN, logs=True)
        quiet = Client(http, gw.urls["main"], "B", MODERN)
        await _interleaved(lambda: asking.run(range(CALLS), 1), lambda: quiet.run(range(CALLS), 4))
    for client in (asking, quiet):
        assert client.heard.foreign == [], f"{client.name} heard another's notifications"
        assert client.heard.progress == CALLS * STEPS, client.name
    assert asking.heard.logs == CALLS * STEPS
    assert quiet.heard.logs == 0


@pytest.mark.parametrize(("level", "delivered"), [(None, False), ("error", False), ("info", True), ("debug", True)])
async def test_a_2026_client_gets_log_messages_only_at_the_level_it_asked(
    tmp_path: Path, level: str | None, delivered: bool
) -> None:
    """MCP 2026-07-28 server/utilities/logging ("Per-request log level": no `notifications/message`
    for a request without `io.modelcontextprotocol/logLevel`, and only "at or above the requested
    level"): a handshake-era HTTP server logs about every call on the call's stream; the gateway
    passes an info message to a 2026-07-28 client only when its request asked for info or below."""
    async with (
        http_server("--legacy") as url,
        gateway(one_server_routes(f"{{http: {{url: '{url}'}}}}"), tmp_path) as gw,
        httpx2.AsyncClient(timeout=WAIT) as http,
    ):
        meta: dict[str, Any] = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        if level is not None:
            meta["io.modelcontextprotocol/logLevel"] = level
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chatty", "arguments": {}, "_meta": meta},
        }
        headers = {
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "chatty",
        }
        response = await http.post(gw.urls["main"], json=body, headers=headers)
        while response.status_code == 503:  # the gateway has not polled yet
            response = await http.post(gw.urls["main"], json=body, headers=headers)
        assert response.status_code == 200, response.text
        *notes, answer = _events(response)
    assert answer["result"]["content"][0]["text"] == "said it"
    logs = [note for note in notes if note.get("method") == "notifications/message"]
    assert len(logs) == (1 if delivered else 0), notes
    if delivered:
        assert logs[0]["params"]["data"] == "about this call"
