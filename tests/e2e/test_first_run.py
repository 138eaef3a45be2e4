"""A first run that tells the truth: `gateway: ready` only when `/readyz` answers 200.

Until then the gateway says what it waits for and why (`waiting: servers.notes (connect refused …)`),
`gateway: ready` when that changes, `gateway: NOT ready: …` when readiness is lost; `gateway relay`
likewise. Also `http.spawn` (a local HTTP server the gateway starts and restarts) and `{python}`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from pathlib import Path

import httpx2
from mcp import Client

from tests.support.harness import PYTHON, SERVERS, Process, process
from tests.support.ops import ops_url
from tests.support.procfs import children, pid_exists
from tests.support.redis_server import RedisServer

GATEWAY = (PYTHON, "-m", "gateway.cli")


def refused_port() -> socket.socket:
    """A loopback port bound (so nothing else takes it) but not listening: connections are refused.
    Close the socket to hand the port to a server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def mcp_url(proc: Process, channel: str) -> str:
    for line in proc.lines:
        match = re.match(rf"MCP endpoint \(channel {channel}\): (\S+)", line)
        if match:
            return match[1]
    raise AssertionError(f"the gateway did not print the URL of channel {channel}")


def _routes(servers: str, channels: str) -> str:
    return f"relay: {{listen: '127.0.0.1:0'}}\nops: {{listen: '127.0.0.1:0'}}\nservers:\n{servers}channels:\n{channels}"


async def _readyz(url: str) -> tuple[int, dict[str, object]]:
    async with httpx2.AsyncClient() as http:
        resp = await http.get(f"{url}/readyz")
    return resp.status_code, resp.json()


async def test_a_refused_server_is_named_until_it_comes_up_and_when_it_goes_away(tmp_path: Path) -> None:
    """The HTTP server is not there at start: the gateway waits, names it and why, and says `ready`
    (and /readyz answers 200) only once it is up; when it dies the gateway says NOT ready."""
    holder = refused_port()
    port = holder.getsockname()[1]
    routes = _routes(
        f"  notes: {{http: {{url: 'http://127.0.0.1:{port}/mcp'}}, restart_backoff_max_s: 0.5}}\n",
        "  main: [notes]\n",
    )
    (tmp_path / "routing.yaml").write_text(routes)
    async with process(*GATEWAY, "--routes", tmp_path / "routing.yaml") as gw:
        waiting = await gw.wait_for(r"^waiting: (.*)")
        assert waiting[1] == f"servers.notes (connect refused 127.0.0.1:{port})"
        status, body = await _readyz(ops_url(gw))
        assert (status, body["not_ready"]) == (503, ["servers.notes"])
        assert not any(line.startswith("gateway: ready") for line in gw.lines)

        holder.close()  # the gateway keeps probing with backoff: start the server on that port
        server_args = ("--http", "--port", str(port), "--name", "notes")
        async with process(PYTHON, SERVERS / "sdk_server.py", *server_args) as server:
            await server.wait_for(r"READY ")
            await gw.wait_for(r"^gateway: ready$")
            status, body = await _readyz(ops_url(gw))
            assert (status, body["not_ready"]) == (200, [])
            async with Client(mcp_url(gw, "main")) as client:
                assert "echo" in {tool.name for tool in (await client.list_tools()).tools}
            await server.stop(signal.SIGKILL)

        # The next call finds the server gone: readiness is lost, and said.
        async with Client(mcp_url(gw, "main"), mode="2026-07-28") as client:
            with contextlib.suppress(Exception):
                await client.list_tools()
        lost = await gw.wait_for(r"^gateway: NOT ready: (.*)", after=len(gw.lines) - 1)
        assert lost[1] == f"servers.notes (connect refused 127.0.0.1:{port})"
        status, body = await _readyz(ops_url(gw))
        assert (status, body["not_ready"]) == (503, ["servers.notes"])


async def test_a_server_that_cannot_start_is_named_with_its_reason(tmp_path: Path) -> None:
    """A stdio server whose program does not exist, and one that dies at once, keep the gateway from
    saying `ready`; the output and /readyz name each server, and the line says why."""
    missing = tmp_path / "no-such-server"
    dies = tmp_path / "dies.py"
    dies.write_text("import sys\nsys.exit('cannot load')\n")
    routes = _routes(
        f"  gone: {{stdio: {{command: '{missing}'}}}}\n"
        f"  dies: {{stdio: {{command: '{{python}}', args: ['{dies}']}}}}\n",
        "  a: [gone]\n  b: [dies]\n",
    )
    (tmp_path / "routing.yaml").write_text(routes)
    async with process(*GATEWAY, "--routes", tmp_path / "routing.yaml") as gw:
        waiting = await gw.wait_for(r"^waiting: (.*)")
        reasons = dict(re.findall(r"(servers\.\w+) \(((?:[^()]|\([^()]*\))*)\)", waiting[1]))
        assert set(reasons) == {"servers.gone", "servers.dies"}, waiting[1]
        assert reasons["servers.gone"] == "could not be started (No such file or directory)"
        assert reasons["servers.dies"] == "exited with status 1: cannot load"
        status, body = await _readyz(ops_url(gw))
        assert status == 503
        assert body["not_ready"] == ["servers.dies", "servers.gone"]
        assert not any(line.startswith("gateway: ready") for line in gw.lines)


async def test_spawned_http_server_and_python_placeholder(tmp_path: Path) -> None:
    """`http.spawn` starts a local HTTP server with `{python}`; the gateway is ready once it answers,
    restarts it when it is killed, and stops it with the gateway."""
    holder = refused_port()
    port = holder.getsockname()[1]
    holder.close()
    server = SERVERS / "sdk_server.py"
    spawn = f"{{command: '{{python}}', args: ['{server}', '--http', '--port', '{port}']}}"
    routes = _routes(
        f"  web: {{http: {{url: 'http://127.0.0.1:{port}/mcp', spawn: {spawn}}}, restart_backoff_max_s: 0.5}}\n",
        "  main: [web]\n",
    )
    (tmp_path / "routing.yaml").write_text(routes)
    async with process(*GATEWAY, "--routes", tmp_path / "routing.yaml") as gw:
        await gw.wait_for(r"^gateway: ready$")
        async with Client(mcp_url(gw, "main")) as client:
            result = await client.call_tool("echo", {"text": "spawned"})
            assert "spawned" in str(result.content)
        (first,) = children(gw.proc.pid)
        os.kill(first, signal.SIGKILL)
        lost = await gw.wait_for(r"^gateway: NOT ready: servers.web \(its process exited with status -9\)$")
        await gw.wait_for(r"^gateway: ready$", after=gw.lines.index(lost.string))
        (pid,) = children(gw.proc.pid)
        assert pid != first
        async with Client(mcp_url(gw, "main")) as client:
            result = await client.call_tool("echo", {"text": "again"})
            assert "again" in str(result.content)
    assert not pid_exists(pid), "the gateway stopped (and reaped) the process it spawned"


async def test_relay_says_ready_only_when_its_queue_backend_answers(tmp_path: Path) -> None:
    """`gateway relay` on Redis that is not there yet: `waiting: queue_backend (unreachable)`, then
    `relay: ready URL` once Redis answers."""
    holder = refused_port()
    port = holder.getsockname()[1]
    config = tmp_path / "relay.yaml"
    config.write_text(
        "listen: 127.0.0.1:0\n"
        f"backend: {{kind: redis, url: 'redis://127.0.0.1:{port}/0'}}\n"
        "tunnels:\n  t1: {gateway_key: k}\n"
    )
    async with process(*GATEWAY, "relay", "--config", config) as relay:
        waiting = await relay.wait_for(r"^waiting: (.*)")
        assert waiting[1] == "queue_backend (unreachable)"
        holder.close()
        redis = RedisServer(tmp_path)
        redis.port = port  # start() takes this port
        await redis.start()
        try:
            ready = await relay.wait_for(r"^relay: ready (\S+)$")
            async with httpx2.AsyncClient() as http:
                assert (await http.get(f"{ready[1]}/readyz")).status_code == 200
        finally:
            await relay.stop()
            await redis.stop()


async def test_a_reason_quoting_the_server_never_shows_a_secret(tmp_path: Path) -> None:
    """The `waiting:` line quotes a dying server's last stderr line; a configured secret in it is masked."""
    secret = "first-run-secret-Qx81mz"
    leaks = tmp_path / "leaks.py"
    leaks.write_text("import os, sys\nsys.exit('cannot start with key ' + os.environ['TUNNEL_API_KEY'])\n")
    # The gateway withholds its key from the servers it starts; this one is handed it on purpose.
    server = f"  leaky: {{stdio: {{command: '{{python}}', args: ['{leaks}'], env: {{TUNNEL_API_KEY: {secret}}}}}}}\n"
    routes = _routes(server, "  main: [leaky]\n")
    (tmp_path / "routing.yaml").write_text(routes)
    async with process(*GATEWAY, "--routes", tmp_path / "routing.yaml", env={"TUNNEL_API_KEY": secret}) as gw:
        waiting = await gw.wait_for(r"^waiting: servers\.leaky \(exited with status 1: cannot start with key (.*)\)$")
        assert secret not in waiting[0]
        assert waiting[1], "the reason keeps the rest of the line"
    assert not any(secret in line for line in gw.lines)
