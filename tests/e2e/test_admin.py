"""Admin controls through the real gateway process and official-SDK clients and servers: the audit file (one JSON
line per call, rotated by size), budget alerts POSTed to a loopback webhook receiver (retried after a 500), and the
refusal at 100 % as the limits' 429 (JSON-RPC -32029, MCP 2025-11-25 basic/transports: an HTTP error status with a
JSON-RPC error body) seen by the SDK client."""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from mcp import Client
from mcp.shared.exceptions import MCPError

from gateway.dispatch.budgets import token_key
from tests.support.harness import gateway, header_client, stdio_server, tool_text
from tests.support.loopback_app import serve_app
from tests.support.waiting import until


@dataclass
class Hooks:
    """A webhook receiver on 127.0.0.1: answers 500 to the first POST, then 204; keeps what it got."""

    url: str = ""
    bodies: list[dict[str, object]] = field(default_factory=list)
    """Every POSTed body, in order (the failed first one included)."""
    headers: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        self.headers.append(dict(request.headers))
        return web.Response(status=500 if len(self.bodies) == 1 else 204)


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Hooks]:
    hooks = Hooks()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    async with serve_app(app) as url:
        hooks.url = f"{url}/hook"
        yield hooks


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _written(audit: Path) -> list[dict[str, object]]:
    """The complete lines of the audit file and its rotated files (a line the writer thread is still
    writing is left for the next look)."""
    records: list[dict[str, object]] = []
    for path in audit.parent.glob(audit.name + "*"):
        complete, _, _ = path.read_text().rpartition("\n")
        records += [json.loads(line) for line in complete.splitlines()]
    return records


async def test_the_audit_file_has_one_line_per_call_and_rotates(tmp_path: Path) -> None:
    routes = (
        "relay: {listen: '127.0.0.1:0'}\n"
        "audit: {file: audit/calls.jsonl, max_bytes: 4000, backups: 2}\n"
        f"servers:\n  a: {stdio_server()}\n"
        "channels:\n  main: [a]\n  guarded: {servers: [a], allow_tools: [echo]}\n"
    )
    audit = tmp_path / "audit" / "calls.jsonl"
    async with gateway(routes, tmp_path) as gw:
        async with Client(gw.urls["main"], mode="legacy") as client:
            assert tool_text(await client.call_tool("echo", {"text": "audit-me"})) == "audit-me"
            assert tool_text(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
        async with Client(gw.urls["guarded"], mode="legacy") as guarded:
            with pytest.raises(MCPError):
                await guarded.call_tool("add", {"a": 1, "b": 1})
        await until(lambda: any(r["channel"] == "guarded" for r in _written(audit)), within_s=30)
        records = _written(audit)
        echo = next(r for r in records if r.get("name") == "echo")
        assert echo["tunnel"] == "tunnel_local"
        assert (echo["channel"], echo["method"], echo["outcome"], echo["status"]) == ("main", "tools/call", "ok", 200)
        assert echo["server"] == "a"
        assert isinstance(echo["bytes_in"], int)
        assert echo["bytes_in"] > 0
        assert isinstance(echo["bytes_out"], int)
        assert echo["bytes_out"] > 0
        assert isinstance(echo["duration_s"], float)
        assert str(echo["ts"]).endswith("Z")
        assert str(echo["session"]).startswith("sha256:")
        assert "audit-me" not in audit.read_text()  # neither the argument nor the result
        assert {r["method"] for r in records} >= {"initialize", "notifications/initialized", "tools/call"}
        refused = next(r for r in records if r["channel"] == "guarded" and r.get("name") == "add")
        assert (refused["outcome"], refused["status"], refused["error"]) == ("rejected", 403, "-32010")

        async with Client(gw.urls["main"], mode="legacy") as client:
            for i in range(40):
                await client.call_tool("add", {"a": i, "b": 1})
        rotated = [audit.with_name("calls.jsonl.1"), audit.with_name("calls.jsonl.2")]
        await until(lambda: all(p.exists() for p in rotated), within_s=30)
    names = sorted(p.name for p in audit.parent.iterdir())
    assert names == ["calls.jsonl", "calls.jsonl.1", "calls.jsonl.2"]  # at most `backups` rotated files
    assert all(p.stat().st_size <= 4000 for p in audit.parent.iterdir())
    for path in audit.parent.iterdir():
        assert all(isinstance(r["method"], str) for r in _lines(path))  # whole lines only


async def test_budget_alerts_reach_the_webhook_and_the_budget_refuses_at_100_percent(tmp_path: Path) -> None:
    token = "Bearer budget-test-token-0123456789"
    async with webhook_receiver() as hooks:
        routes = (
            "relay: {listen: '127.0.0.1:0'}\n"
            "audit: {file: audit.jsonl}\n"
            f"servers:\n  a: {stdio_server()}\nchannels:\n  main: [a]\n  other: [a]\n"
            "budgets:\n"
            "  - name: main-daily\n    scope: channel\n    match: main\n    calls: 4\n    per: day\n"
            "    alerts: [50, 100]\n    refuse: true\n"
            f"    webhook: {{url: '{hooks.url}', headers: {{X-Hook-Token: 'env:HOOK_TOKEN'}}, retries: 3}}\n"
            "  - {name: per-token, scope: client_token, calls: 2, per: hour, alerts: [100]}\n"
        )
        env = {"HOOK_TOKEN": "hook-secret-value"}
        log_file = tmp_path / "gateway.log"
        with log_file.open("wb") as log:
            async with gateway(routes, tmp_path, env=env, stderr=log) as gw:
                await _spend_and_refuse(gw.urls, token)
                await until(lambda: len(hooks.bodies) >= 3, within_s=60)
                await until(lambda: "budget 'per-token'" in log_file.read_text(), within_s=30)
        log_text = log_file.read_text()
    first, retried, full = hooks.bodies[:3]
    assert first == retried  # the 500 was retried with the same alert
    assert (first["budget"], first["scope"], first["key"]) == ("main-daily", "channel", "main")
    assert (first["threshold_percent"], first["calls"], first["limit"], first["refusing"]) == (50, 2, 4, False)
    assert (full["threshold_percent"], full["calls"], full["refusing"]) == (100, 4, True)
    assert str(full["window_end"]).endswith("T00:00:00Z")
    assert all(h.get("X-Hook-Token") == "hook-secret-value" for h in hooks.headers)
    assert len(hooks.bodies) == 3  # per-token has no webhook; each threshold once
    key = token_key(token)
    assert key is not None
    assert f"budget 'per-token': client_token {key} reached 100%" in log_text
    refused = [r for r in _lines(tmp_path / "audit.jsonl") if r["outcome"] == "rejected"]
    assert [(r["channel"], r["name"], r["status"], r["error"]) for r in refused] == [
        ("main", "add", 429, "budget:main-daily")
    ]
    assert "budget-test-token" not in log_text
    assert "hook-secret-value" not in log_text
    assert hooks.url not in log_text


async def _spend_and_refuse(urls: dict[str, str], token: str) -> None:
    """Four calls on `main` (its budget: 4 a day, refusing), a list (not counted), the refused fifth call;
    one call on `other`."""
    async with header_client(urls["main"], "legacy", Authorization=token) as client:
        for i in range(4):
            assert tool_text(await client.call_tool("add", {"a": i, "b": 0})) == str(i)
        await client.list_tools()
        with pytest.raises(MCPError) as refused:
            await client.call_tool("add", {"a": 9, "b": 9})
        assert refused.value.error.code == -32029
        assert "budget:main-daily" in refused.value.error.message
        assert isinstance(refused.value.error.data, dict)
        assert refused.value.error.data["retry_after_ms"] > 0
    async with Client(urls["other"], mode="legacy") as other:  # another channel: not under main-daily
        assert tool_text(await other.call_tool("add", {"a": 1, "b": 1})) == "2"


async def test_a_reload_applies_changed_audit_and_budgets(tmp_path: Path) -> None:
    """SIGHUP with a new audit file and a lower budget: calls after the reload are written to the new file only,
    and the budget, keeping the two calls it counted, refuses the next one at its new limit of 2 (MCP 2025-11-25
    basic/transports: an HTTP error status with a JSON-RPC error body, -32029)."""
    before = (
        "relay: {listen: '127.0.0.1:0'}\n"
        "audit: {file: first.jsonl}\n"
        f"servers:\n  a: {stdio_server()}\nchannels:\n  main: [a]\n"
        "budgets: [{name: main-daily, scope: channel, calls: 10, per: day, refuse: true}]\n"
    )
    after = before.replace("first.jsonl", "second.jsonl").replace("calls: 10", "calls: 2")
    async with gateway(before, tmp_path) as gw:
        async with Client(gw.urls["main"], mode="legacy") as client:
            for i in range(2):
                assert tool_text(await client.call_tool("add", {"a": i, "b": 0})) == str(i)
        (tmp_path / "routing.yaml").write_text(after)
        gw.process.proc.send_signal(signal.SIGHUP)
        await gw.process.wait_for(r"^gateway: reloaded$", within_s=60)
        async with Client(gw.urls["main"], mode="legacy") as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("add", {"a": 9, "b": 9})
        assert refused.value.error.code == -32029
        assert "budget:main-daily" in refused.value.error.message
        await until(lambda: (tmp_path / "second.jsonl").exists() and "rejected" in _text(tmp_path / "second.jsonl"))
    first = [(r["method"], r.get("name")) for r in _lines(tmp_path / "first.jsonl")]
    assert first.count(("tools/call", "add")) == 2
    second = _lines(tmp_path / "second.jsonl")
    assert [(r["name"], r["outcome"]) for r in second if r["method"] == "tools/call"] == [("add", "rejected")]
    assert not any(r["outcome"] == "rejected" for r in _lines(tmp_path / "first.jsonl"))


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def test_a_call_the_rate_limits_refuse_counts_against_no_budget(tmp_path: Path) -> None:
    """A budget of 2 calls and a rate limit of one `add` an hour: the second `add` is refused by the limit and
    not counted, so an `echo` still passes and only the call after it meets the budget's refusal."""
    routes = (
        "relay: {listen: '127.0.0.1:0'}\n"
        f"servers:\n  a: {stdio_server()}\nchannels:\n  main: [a]\n"
        "limits: {policy: reject, rules: [{scope: tool, match: add, rate: 1/h, burst: 1}]}\n"
        "budgets: [{name: b, scope: channel, calls: 2, per: day, alerts: [100], refuse: true}]\n"
    )
    async with gateway(routes, tmp_path) as gw, Client(gw.urls["main"], mode="legacy") as client:
        assert tool_text(await client.call_tool("add", {"a": 1, "b": 1})) == "2"
        with pytest.raises(MCPError) as limited:
            await client.call_tool("add", {"a": 2, "b": 2})
        assert limited.value.error.code == -32029
        assert "budget" not in limited.value.error.message
        assert tool_text(await client.call_tool("echo", {"text": "counted second"})) == "counted second"
        with pytest.raises(MCPError) as refused:
            await client.call_tool("echo", {"text": "third"})
        assert "budget:b" in refused.value.error.message
