"""The ops listener end to end: `/healthz`, `/readyz` (control plane and required servers) and `/metrics` of a
gateway process with `ops: {listen: 127.0.0.1:0}`, polling a standalone `gateway relay` process (stopped and
started again on the same port), with an official-SDK stdio server that can be kept from coming back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support.harness import PYTHON, SERVERS, free_port, gateway
from tests.support.ops import RELAY_KEY, TUNNEL, get, ops_url, standalone_relay, until_status


def flaky_stdio_server(flag: Path) -> str:
    """A stdio block for the SDK server that fails to start while `flag` exists."""
    script = f'test -e "{flag}" && exit 1; exec "{PYTHON}" "{SERVERS / "sdk_server.py"}"'
    return f"{{stdio: {{command: sh, args: [-c, '{script}']}}, startup_timeout_s: 5, restart_backoff_max_s: 0.3}}"


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
        ops = ops_url(gw.process)
        assert (await get(f"{ops}/healthz"))[0] == 200
        body = json.loads(await until_status(f"{ops}/readyz", 200))
        assert body["status"] == "ready"
        assert body["not_ready"] == []
        assert body["checks"]["servers.srv"] == "up"
        assert body["checks"]["servers.spare"] == "down (not required)"

        # The control plane goes away: not ready, and the body says why; alive all the same.
        await relay.stop()
        body = json.loads(await until_status(f"{ops}/readyz", 503))
        assert body["not_ready"] == ["control_plane"]
        assert body["checks"]["control_plane"].startswith("no successful poll for")
        assert (await get(f"{ops}/healthz"))[0] == 200

        # It comes back on the same port: ready again.
        async with standalone_relay(tmp_path, port):
            await until_status(f"{ops}/readyz", 200)

            # A required server dies and cannot come back while the flag exists.
            flag.touch()
            async with Client(f"{relay_url}/v1/mcp/{TUNNEL}", mode="legacy") as client:
                with pytest.raises(MCPError):
                    await client.call_tool("crash", {})
            body = json.loads(await until_status(f"{ops}/readyz", 503))
            assert body["not_ready"] == ["servers.srv"]
            assert body["checks"]["servers.srv"] == "down"

            flag.unlink()
            await until_status(f"{ops}/readyz", 200)
            status, metrics = await get(f"{ops}/metrics")
    assert status == 200
    assert re.search(r'^gateway_upstream_up\{gateway_server="srv"\} 1$', metrics, re.M)
    assert re.search(r'^gateway_upstream_up\{gateway_server="spare"\} 0$', metrics, re.M)
    assert re.search(r'^gateway_upstream_restarts_total\{gateway_server="srv"\} [1-9]', metrics, re.M)
    assert "# TYPE mcp_server_operation_duration_seconds histogram" in metrics
    bucket = r'^mcp_server_operation_duration_seconds_bucket\{[^}]*mcp_method_name="tools/call"[^}]*le="0.01"\}'
    assert re.search(bucket, metrics, re.M)
    assert re.search(r"^gateway_poll_errors_total\{error_type=", metrics, re.M)
