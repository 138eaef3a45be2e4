"""The ops listener: `/healthz`, `/readyz` (control plane and required servers), `/metrics`.

End to end: a standalone `gateway relay` process (stopped and started again on the same
port), a gateway process with `ops: {listen: 127.0.0.1:0}`, and an official-SDK stdio
server that can be kept from coming back. Unit tests cover readiness and the Prometheus
text with fakes that implement the interfaces readiness reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from gateway.config import routing as routing_config
from gateway.observe.ops import Readiness, render_prometheus
from gateway.observe.telemetry import build
from tests.harness import PYTHON, SERVERS, Gateway, Process, gateway, process

RELAY_KEY = "relay-gateway-key-0123456789"
TUNNEL = "t_ops"


# --------------------------------------------------------------------------- helpers (shared with test_telemetry)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def ops_url(gw: Gateway) -> str:
    for line in gw.process.lines:
        match = re.match(r"ops: listening on (\S+)", line)
        if match:
            return match[1]
    raise AssertionError("the gateway printed no ops URL")


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def until(url: str, status: int, within_s: float = 30.0) -> str:
    """Ask `url` until it answers `status`; its last body. (A condition with a bound, not a sleep.)"""
    body = ""
    async with asyncio.timeout(within_s):
        while True:
            code, body = await get(url)
            if code == status:
                return body
            await asyncio.sleep(0.05)


def flaky_stdio_server(flag: Path) -> str:
    """A stdio block for the SDK server that fails to start while `flag` exists."""
    script = f'test -e "{flag}" && exit 1; exec "{PYTHON}" "{SERVERS / "sdk_server.py"}"'
    return f"{{stdio: {{command: sh, args: [-c, '{script}']}}, startup_timeout_s: 5, restart_backoff_max_s: 0.3}}"


# --------------------------------------------------------------------------- end to end


async def test_readyz_follows_the_control_plane_and_required_servers(tmp_path: Path) -> None:
    port = free_port()
    flag = tmp_path / "keep-down"
    routes = (
        f"control_plane: {{url: 'http://127.0.0.1:{port}', tunnel_id: {TUNNEL}, api_key: env:RELAY_KEY}}\n"
        "ops: {listen: '127.0.0.1:0', ready_poll_age_s: 1.0}\n"
        "gateway: {poll_timeout_ms: 200}\n"
        "servers:\n"
        f"  srv: {flaky_stdio_server(flag)}\n"
        "  spare: {stdio: {command: 'false'}, required: false, startup_timeout_s: 2, restart_backoff_max_s: 5}\n"
        "channels:\n  main: [srv]\n  spare: [spare]\n"
    )
    async with (
        standalone_relay(tmp_path, port) as (relay_url, relay),
        gateway(routes, tmp_path, env={"RELAY_KEY": RELAY_KEY}) as gw,
    ):
        ops = ops_url(gw)
        assert (await get(f"{ops}/healthz"))[0] == 200
        body = json.loads(await until(f"{ops}/readyz", 200))
        assert body["status"] == "ready"
        assert body["not_ready"] == []
        assert body["checks"]["servers.srv"] == "up"
        assert body["checks"]["servers.spare"] == "down (not required)"

        # The control plane goes away: not ready, and the body says why; alive all the same.
        await relay.stop()
        body = json.loads(await until(f"{ops}/readyz", 503))
        assert body["not_ready"] == ["control_plane"]
        assert body["checks"]["control_plane"].startswith("no successful poll for")
        assert (await get(f"{ops}/healthz"))[0] == 200

        # It comes back on the same port: ready again.
        async with standalone_relay(tmp_path, port):
            await until(f"{ops}/readyz", 200)

            # A required server dies and cannot come back while the flag exists.
            flag.touch()
            async with Client(f"{relay_url}/v1/mcp/{TUNNEL}", mode="legacy") as client:
                with pytest.raises(MCPError):
                    await client.call_tool("crash", {})
            body = json.loads(await until(f"{ops}/readyz", 503))
            assert body["not_ready"] == ["servers.srv"]
            assert body["checks"]["servers.srv"] == "down"

            flag.unlink()
            await until(f"{ops}/readyz", 200)
            status, metrics = await get(f"{ops}/metrics")
    assert status == 200
    assert re.search(r'^gateway_upstream_up\{gateway_server="srv"\} 1$', metrics, re.M)
    assert re.search(r'^gateway_upstream_up\{gateway_server="spare"\} 0$', metrics, re.M)
    assert re.search(r'^gateway_upstream_restarts_total\{gateway_server="srv"\} [1-9]', metrics, re.M)
    assert "# TYPE mcp_server_operation_duration_seconds histogram" in metrics
    bucket = r'^mcp_server_operation_duration_seconds_bucket\{[^}]*mcp_method_name="tools/call"[^}]*le="0.01"\}'
    assert re.search(bucket, metrics, re.M)
    assert re.search(r"^gateway_poll_errors_total\{error_type=", metrics, re.M)


# --------------------------------------------------------------------------- units


@dataclass
class FakeUpstream:
    name: str
    ready: bool
    problem: str | None = None
    needs_authorization: bool = False


@dataclass
class FakeControlPlane:
    last_poll_ok: float | None = None
    problem: str | None = None


@dataclass
class FakePoller:
    fault: str | None = None


@dataclass
class FakeRuntime:
    config: routing_config.RoutingConfig
    upstreams: Mapping[str, Any]
    control_plane: FakeControlPlane = field(default_factory=FakeControlPlane)
    poller: FakePoller = field(default_factory=FakePoller)


def _config(required_b: bool = True) -> routing_config.RoutingConfig:
    required = "true" if required_b else "false"
    return routing_config.parse(
        (
            "servers:\n  a: {stdio: {command: x}}\n"
            f"  b: {{stdio: {{command: x}}, required: {required}}}\n"
            "channels:\n  one: [a]\n  two: [b]\n"
        ).encode(),
        "routing.yaml",
    )


def test_readiness_reports_each_part() -> None:
    now = [100.0]
    readiness = Readiness(max_poll_age_s=5.0, clock=lambda: now[0])
    assert readiness.report() == (
        False,
        {"status": "not ready", "not_ready": ["gateway"], "checks": {"gateway": "starting"}},
    )
    upstreams: dict[str, Any] = {"a": FakeUpstream("a", True), "b": FakeUpstream("b", False)}
    runtime = FakeRuntime(_config(), upstreams)
    readiness.runtime = runtime  # type: ignore[assignment]
    ready, body = readiness.report()
    assert not ready
    assert body["not_ready"] == ["control_plane", "servers.b"]
    assert body["checks"]["control_plane"] == "no successful poll yet"

    runtime.control_plane.last_poll_ok = 98.0
    upstreams["b"].ready = True
    assert readiness.report() == (
        True,
        {
            "status": "ready",
            "not_ready": [],
            "checks": {"control_plane": "polled 2.0s ago", "servers.a": "up", "servers.b": "up"},
        },
    )
    now[0] = 104.0
    ready, body = readiness.report()
    assert not ready
    assert body["checks"]["control_plane"] == "no successful poll for 6.0s (limit 5s)"

    now[0] = 100.0
    runtime.config = _config(required_b=False)
    upstreams["b"].ready = False
    ready, body = readiness.report()
    assert ready
    assert body["checks"]["servers.b"] == "down (not required)"

    upstreams["a"].needs_authorization = True  # it answered the probe 401: up (issue 18)
    ready, body = readiness.report()
    assert ready
    assert body["checks"]["servers.a"] == "up, requires authorization"


def test_prometheus_text_from_sdk_metrics() -> None:
    telemetry = build(routing_config.TelemetrySpec(), metrics_pull=True, environ={})
    try:
        up: dict[str, Any] = {"srv": FakeUpstream("srv", True)}
        telemetry.watch(up, {})  # type: ignore[arg-type]
        assert telemetry.enabled
        ot: Any = telemetry
        ot.server_duration.record(0.03, {"mcp.method.name": "tools/call", "gen_ai.tool.name": 'we"ird\\name'})
        ot.polled.add(3)
        ot.inflight.add(2)
        text = render_prometheus(telemetry.metrics_data()).decode()
    finally:
        telemetry.shutdown()
    assert "# TYPE mcp_server_operation_duration_seconds histogram" in text
    assert (
        'mcp_server_operation_duration_seconds_bucket{mcp_method_name="tools/call",'
        'gen_ai_tool_name="we\\"ird\\\\name",le="0.02"} 0' in text
    )
    assert (
        'mcp_server_operation_duration_seconds_bucket{mcp_method_name="tools/call",'
        'gen_ai_tool_name="we\\"ird\\\\name",le="0.05"} 1' in text
    )
    assert 'le="+Inf"} 1' in text
    assert "mcp_server_operation_duration_seconds_count" in text
    assert "# TYPE gateway_commands_polled_total counter" in text
    assert "gateway_commands_polled_total 3" in text
    assert "# TYPE gateway_commands_inflight gauge" in text
    assert "gateway_commands_inflight 2" in text
    assert 'gateway_upstream_up{gateway_server="srv"} 1' in text


def test_ops_section_is_checked() -> None:
    with pytest.raises(routing_config.ConfigError, match=r"ops\.listen"):
        routing_config.parse(
            b"ops: {listen: nowhere}\nservers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\n", "r.yaml"
        )
    with pytest.raises(routing_config.ConfigError, match=r"ops\.ready_poll_age_s"):
        routing_config.parse(
            b"ops: {listen: '127.0.0.1:1', ready_poll_age_s: 0}\nservers: {a: {stdio: {command: x}}}\n"
            b"channels: {main: [a]}\n",
            "r.yaml",
        )
