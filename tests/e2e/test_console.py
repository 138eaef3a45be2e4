"""The operator console of a real gateway process on the shipped routing.yaml (moved to free loopback ports):
`/api/status` with both channels, a killed stdio server shown down then up after its restart, the failed call
in the recent failures without its arguments, secrets masked in the config panel, the log tail over SSE with
its level filter, `gateway status` and its exit codes, and the ops token (without one the console is
served on loopback only; checked on every console request; `/healthz` `/readyz` `/metrics` as before)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from gateway import __version__
from gateway.protocol.sse import SseParser
from gateway.relay.webconsole import served
from tests.support.console import (
    ARGUMENT_MARKER,
    default_routes,
    get_json,
    killed_mid_call,
    server,
    until_status,
)
from tests.support.harness import PYTHON, ROOT, free_port, gateway
from tests.support.ops import RELAY_KEY, TUNNEL, ops_url, standalone_relay

LITERAL_SECRET = "literal-header-secret-0c9e1d"
URL_PASSWORD = "url-password-55aa17"
SESSION_KEY = "session-key-literal-8d2b66f0a1"


def with_secrets(routes: str) -> str:
    """The default routes plus an (unused) HTTP server whose URL and header carry secrets, and a literal
    session key: all three must be masked in the config panel."""
    extra = (
        f"  vault:\n    http:\n      url: http://admin:{URL_PASSWORD}@127.0.0.1:9/mcp\n"
        f"      headers: {{Authorization: 'Bearer {LITERAL_SECRET}', X-Plain: env:SOME_VARIABLE}}\n"
    )
    routes = routes.replace("\nchannels:\n", f"\n{extra}\nchannels:\n", 1)
    return f"{routes}sessions: {{key: {SESSION_KEY}}}\n"


async def status_cli(*args: str, **env: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "gateway.cli",
        "status",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, (out + err).decode()


async def sse_lines(url: str, until: str, *, within_s: float = 60.0) -> list[dict[str, Any]]:
    """`log` events of an SSE stream, read until one whose message contains `until`."""
    parser = SseParser()
    lines: list[dict[str, Any]] = []
    async with asyncio.timeout(within_s), aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for chunk in resp.content.iter_any():
            for event in parser.feed(chunk):
                assert event.event == "log"
                lines.append(json.loads(event.data))
                if until in lines[-1]["message"]:
                    return lines
    raise AssertionError("the stream ended")


def everything(status: dict[str, Any]) -> str:
    return json.dumps(status)


async def test_status_page_api_follows_a_killed_server_and_a_failed_call(tmp_path: Path) -> None:
    hold_down = tmp_path / "clock-held-down"
    routes = with_secrets(default_routes(hold_down=hold_down))
    async with gateway(routes, tmp_path) as gw:
        ops = ops_url(gw.process)
        status = await until_status(ops, lambda s: s["ready"])
        assert status["kind"] == "gateway"
        assert [channel["name"] for channel in status["channels"]] == ["main", "notes"]
        assert server(status, "clock")["transport"] == "stdio"
        assert server(status, "notes")["transport"] == "http"
        assert all(server(status, name)["up"] for name in ("clock", "notes"))
        assert status["control_plane"]["connected"] is True
        code, text = await status_cli("--ops", ops)
        assert code == 0, text
        assert "channel main" in text
        assert "channel notes" in text
        assert "clock" in text

        # The config panel: every secret masked, references shown as references.
        config = status["config"]
        shown = json.dumps(config)
        for secret in (LITERAL_SECRET, URL_PASSWORD, SESSION_KEY):
            assert secret not in shown
        vault = config["servers"]["vault"]["http"]
        assert vault["headers"] == {"Authorization": "[REDACTED]", "X-Plain": "env:SOME_VARIABLE"}
        assert vault["url"] == "http://[REDACTED]@127.0.0.1:9/mcp"
        assert config["sessions"]["key"] == "[REDACTED]"
        assert await get_json(f"{ops}/api/config") == config

        # A call in flight when its stdio server is killed: down at once, the failure listed, up again.
        async with killed_mid_call(gw.urls["main"], ops, hold_down) as call:
            down = await until_status(ops, lambda s: not server(s, "clock")["up"])
            code, text = await status_cli("--ops", ops)
            await call
        assert code == 1, text
        assert "DOWN" in text
        assert server(down, "clock")["up"] is False
        back = await until_status(ops, lambda s: server(s, "clock")["up"] and server(s, "clock")["restarts"] >= 1)
        assert server(back, "clock")["last_exit"] is not None
        failed = await until_status(ops, lambda s: bool(s["recent_failures"]))
        failure = failed["recent_failures"][0]
        assert (failure["channel"], failure["server"], failure["method"]) == ("main", "clock", "tools/call")
        assert failure["name"] == "countdown"
        assert failure["outcome"] == "error"
        assert failure["error"] == "transport_closed"
        assert server(failed, "clock")["stats"]["errors"] == {"transport_closed": 1}
        assert ARGUMENT_MARKER not in everything(failed)
        assert ARGUMENT_MARKER not in json.dumps(await get_json(f"{ops}/api/failures"))

        # The log tail: INFO lines at INFO, and only WARNING and above at WARNING.
        info = await sse_lines(f"{ops}/api/logs/stream?level=INFO", "'clock' started")
        assert {line["level"] for line in info} >= {"INFO"}
        warnings = await sse_lines(f"{ops}/api/logs/stream?level=WARNING", "stdio server 'clock' exited")
        assert {line["level"] for line in warnings} <= {"WARNING", "ERROR", "CRITICAL"}
        every_line = await get_json(f"{ops}/api/logs?level=DEBUG")
        assert ARGUMENT_MARKER not in json.dumps(every_line)
        async with aiohttp.ClientSession() as http, http.get(f"{ops}/api/logs?level=LOUD") as resp:
            assert resp.status == 400

        # The page and its assets come from the package.
        async with aiohttp.ClientSession() as http:
            for path, kind in (("/", "text/html"), ("/ui", "text/html"), ("/console/app.js", "text/javascript")):
                async with http.get(f"{ops}{path}") as resp:
                    assert resp.status == 200
                    assert resp.headers["Content-Type"].startswith(kind)
            async with http.get(f"{ops}/console/..%2Fstatus.py") as resp:
                assert resp.status == 404


async def test_gateway_status_exit_codes_without_a_gateway(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    code, text = await status_cli("--ops", unreachable, "--routes", str(tmp_path / "none.yaml"))
    assert code == 2
    assert "unreachable" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers: 3\n")
    code, text = await status_cli("--routes", str(bad))
    assert code == 2
    assert "bad.yaml" in text
    no_ops = tmp_path / "routing.yaml"
    no_ops.write_text((ROOT / "routing.yaml").read_text())
    code, text = await status_cli("--routes", str(no_ops))
    assert code == 2
    assert "ops.listen" in text
    no_ops.write_text(default_routes())  # ops.listen port 0: only the gateway knows the port it got
    code, text = await status_cli("--routes", str(no_ops))
    assert code == 2
    assert "--ops URL" in text


async def test_off_loopback_the_console_needs_a_token_and_the_probes_stay(tmp_path: Path) -> None:
    """A pod's `ops.listen: 0.0.0.0:9090` without `ops.token` is a valid file (`gateway check`: the
    kubelet's probes and Prometheus need that listener); the console is then off. Decided by
    `webconsole.served`, checked here without binding anything off loopback."""
    file = tmp_path / "routing.yaml"
    file.write_text(default_routes("{listen: '0.0.0.0:9090'}"))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", "check", "--routes", str(file))
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert not served("0.0.0.0", None)
    assert not served("::", None)
    assert not served("10.0.0.7", None)
    assert served("0.0.0.0", "a-token")
    assert served("127.0.0.1", None)
    assert served("::1", None)
    assert served("localhost", None)


async def test_the_ops_token_guards_every_console_request(tmp_path: Path) -> None:
    token = "ops-token-for-the-console-31f0"
    routes = default_routes("{listen: '127.0.0.1:0', token: env:OPS_TOKEN}")
    async with gateway(routes, tmp_path, env={"OPS_TOKEN": token}) as gw:
        ops = ops_url(gw.process)
        bearer = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # cookies of an IP
            for path in ("/", "/ui", "/api/status", "/api/config", "/api/failures", "/api/logs", "/api/logs/stream"):
                async with http.get(f"{ops}{path}") as resp:
                    assert resp.status == 401, path
                    assert token not in await resp.text()
                async with http.get(f"{ops}{path}", headers={"Authorization": "Bearer wrong-token"}) as resp:
                    assert resp.status == 401, path
            for path in ("/healthz", "/readyz", "/metrics"):  # as before: no token
                async with http.get(f"{ops}{path}") as resp:
                    assert resp.status in (200, 404, 503), path
            async with http.get(f"{ops}/api/status", headers=bearer) as resp:
                assert resp.status == 200
            # The page takes the token once and keeps it in a strict cookie; the address drops it.
            async with http.get(f"{ops}/ui?token={token}", allow_redirects=False) as resp:
                assert resp.status == 303
                assert resp.headers["Location"] == "/ui"
                cookie = resp.headers["Set-Cookie"]
                assert "HttpOnly" in cookie
                assert "SameSite=Strict" in cookie
            async with http.get(f"{ops}/api/status") as resp:  # the session now carries the cookie
                assert resp.status == 200
        code, text = await status_cli("--ops", ops)
        assert code == 2
        assert "401" in text
        routes_file = str(tmp_path / "routing.yaml")
        code, text = await status_cli("--ops", ops, "--routes", routes_file, OPS_TOKEN=token)  # its ops.token
        assert code == 0, text
        code, text = await status_cli("--ops", ops, "--json", GATEWAY_OPS_TOKEN=token)
        assert code == 0, text
        assert json.loads(text)["kind"] == "gateway"


async def test_a_standalone_relay_lists_the_gateway_that_polls_it(tmp_path: Path) -> None:
    """`gateway relay` on loopback serves its console: the tunnel, and the gateway as its v1 identity
    headers name it; a refused poll is counted by its code."""
    port = free_port()
    routes = (
        f"control_plane: {{url: 'http://127.0.0.1:{port}', tunnel_id: {TUNNEL}, api_key: env:RELAY_KEY}}\n"
        "servers:\n  clock: {stdio: {command: '{python}', args: [-m, gateway.demo.clock]}}\n"
        "channels:\n  main: [clock]\n"
    )
    async with (
        standalone_relay(tmp_path, port) as (relay_url, _),
        gateway(routes, tmp_path, env={"RELAY_KEY": RELAY_KEY}),
    ):
        status = await until_status(relay_url, lambda s: bool(s["gateways"]))
        assert status["kind"] == "relay"
        (tunnel,) = status["tunnels"]
        assert (tunnel["id"], tunnel["gateway_seen"]) == (TUNNEL, True)
        (seen,) = status["gateways"]
        assert (seen["tunnel"], seen["name"], seen["version"]) == (TUNNEL, "mcp-tunnel-gateway", __version__)
        assert len(seen["instance_id"]) >= 16
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{relay_url}/v1/tunnels/{TUNNEL}/poll", headers={"Authorization": "Bearer no"}
            ) as resp:
                assert resp.status == 401
            async with http.get(f"{relay_url}/ui") as resp:
                assert resp.status == 200
                assert "Operator console" in await resp.text()
        status = await until_status(relay_url, lambda s: bool(s["rejections"]))
        assert status["rejections"] == {"tunnel_use_forbidden": 1}
