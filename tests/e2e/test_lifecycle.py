"""Lifecycle of the real gateway process, observed at a scripted control plane.

SIGTERM: polling stops, commands in flight finish within the drain timeout and their
responses are delivered, the stdio servers are gone afterwards, exit status 0; a call
longer than the drain timeout is cancelled and posts nothing. SIGHUP: routing.yaml is
read again (a changed server replaced, a channel added) without dropping commands in
flight; a broken file is logged and the running configuration keeps serving. With the relay embedded
(the default), SIGTERM still answers the MCP clients' calls in flight.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx2

from tests.support.cp_records import now, payload_text, whoami
from tests.support.gateway_process import cli_args, gateway_env, routes, run_gateway, stdio
from tests.support.harness import PYTHON, SERVERS, gateway, legacy_initialize, one_server_routes, stdio_server
from tests.support.procfs import pid_alive
from tests.support.scripted_cp import KEY, ScriptedControlPlane

STUBBORN = """
import os, runpy, signal, sys, time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1], "w") as out:
    out.write(str(os.getpid()))
sys.argv = [sys.argv[2]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    while True:  # deaf to stdin EOF and SIGTERM: only SIGKILL ends it
        time.sleep(1)
"""


async def running(cp: ScriptedControlPlane, ids: list[str]) -> None:
    """Each command has reported progress: it is running in the gateway."""
    await cp.until(lambda: all(any(n.accepted for n in cp.notifies(r)) for r in ids), what="progress from each call")


async def test_sigterm_drains_in_flight_commands_then_stops_the_servers(tmp_path: Path) -> None:
    async with ScriptedControlPlane(hold_s=60) as cp:
        document = routes({"main": stdio(), "other": stdio()}, drain_timeout_s=15, poll_timeout_ms=25000)
        async with run_gateway(document, tmp_path, *cli_args(cp)) as gw:
            pids = [await whoami(cp, "main"), await whoami(cp, "other")]
            ids = [
                cp.call("slow_progress", {"steps": 3, "delay_ms": 400}, channel=ch, progress=f"t{i}")
                for i, ch in enumerate(["main", "other", "main", "other"])
            ]
            await running(cp, ids)
            polls_before = len(cp.polls)
            signalled = now()
            gw.signal(signal.SIGTERM)
            assert await gw.wait(within_s=30) == 0
            assert any(line == "gateway: stopping" for line in gw.stdout)

            for rid in ids:
                assert len(cp.terminals(rid)) == 1, f"{rid} was not delivered during the drain"
                assert payload_text(cp.payload(rid)) == "done 3 steps"
            assert [p.index for p in cp.polls if p.arrived > signalled] == [], "polled after SIGTERM"
            assert len(cp.polls) == polls_before
            for pid in pids:
                assert not pid_alive(pid), f"stdio server {pid} outlived the gateway"
            assert cp.violations == []
            assert cp.duplicates() == {}


async def test_drain_timeout_cancels_what_is_still_running(tmp_path: Path) -> None:
    async with ScriptedControlPlane(hold_s=60) as cp:
        document = routes({"main": stdio()}, drain_timeout_s=1)
        async with run_gateway(document, tmp_path, *cli_args(cp)) as gw:
            pid = await whoami(cp, "main")
            endless = cp.call("slow_progress", {"steps": 300, "delay_ms": 100}, progress="forever")
            await running(cp, [endless])
            signalled = now()
            gw.signal(signal.SIGTERM)
            assert await gw.wait(within_s=30) == 0
            assert now() - signalled >= 1 - 0.05, "the drain timeout was not given to the running call"
            assert cp.terminals(endless) == [], "a cancelled call posted a response"
            assert not pid_alive(pid)
            assert cp.violations == []


async def test_a_server_deaf_to_eof_and_sigterm_is_killed_at_shutdown(tmp_path: Path) -> None:
    script, pid_file = tmp_path / "stubborn.py", tmp_path / "stubborn.pid"
    script.write_text(STUBBORN)
    server = {"stdio": {"command": PYTHON, "args": [str(script), str(pid_file), str(SERVERS / "raw_stdio.py")]}}
    async with (
        ScriptedControlPlane(hold_s=60) as cp,
        run_gateway(routes({"main": server}), tmp_path, *cli_args(cp)) as gw,
    ):
        assert payload_text(await cp.answer(cp.call("echo", {"text": "up"}))) == "up"
        pid = int(pid_file.read_text())
        assert pid_alive(pid)
        gw.signal(signal.SIGTERM)
        assert await gw.wait(within_s=30) == 0
        assert not pid_alive(pid), "a server ignoring EOF and SIGTERM outlived the gateway"


async def test_sighup_reload_replaces_a_server_and_adds_a_channel_without_dropping_calls(tmp_path: Path) -> None:
    async with ScriptedControlPlane(hold_s=0.3) as cp:
        before = routes({"main": stdio()}, drain_timeout_s=15)
        async with run_gateway(before, tmp_path, *cli_args(cp)) as gw:
            old_pid = await whoami(cp, "main")
            marker = cp.call("getenv", {"variable": "RELOAD_MARKER"})
            assert "v2" not in json.dumps(await cp.answer(marker))
            in_flight = [cp.call("slow_progress", {"steps": 4, "delay_ms": 400}, progress=f"h{i}") for i in range(3)]
            await running(cp, in_flight)

            changed = stdio()
            changed["stdio"]["env"] = {"RELOAD_MARKER": "v2"}
            gw.routes_file.write_text(routes({"main": changed, "extra": stdio("raw_stdio.py")}, drain_timeout_s=15))
            reload_at = len(cp.polls)
            gw.signal(signal.SIGHUP)
            await gw.wait_for(r"^gateway: reload", within_s=30)
            assert gw.proc.returncode is None, "SIGHUP ended the gateway"

            assert payload_text(await cp.answer(cp.call("getenv", {"variable": "RELOAD_MARKER"}))) == "v2"
            assert await whoami(cp, "main") != old_pid
            extra = cp.call("echo", {"text": "new channel"}, channel="extra")
            assert payload_text(await cp.answer(extra)) == "new channel"

            for rid in in_flight:
                payload = await cp.answer(rid)
                assert payload_text(payload) == "done 4 steps", "a call in flight across the reload was dropped"
                assert len(cp.terminals(rid)) == 1
            await cp.until(lambda: not pid_alive(old_pid), 30, "the replaced server to be stopped")

            await cp.polls_after(len(cp.polls), 1)
            info = json.loads(cp.polls[-1].headers["X-Tunnel-MCP-Server-Info"])
            assert info == {
                "version": 1,
                "channels": [{"name": "extra", "proc_affinity": True}, {"name": "main", "proc_affinity": True}],
            }, "the server-info declaration does not follow the reloaded channels"
            assert reload_at < len(cp.polls)
            assert cp.violations == []
            assert cp.duplicates() == {}


async def test_sighup_with_a_broken_file_keeps_the_running_configuration(tmp_path: Path) -> None:
    async with (
        ScriptedControlPlane(hold_s=0.3) as cp,
        run_gateway(routes({"main": stdio()}), tmp_path, *cli_args(cp)) as gw,
    ):
        pid = await whoami(cp, "main")
        in_flight = cp.call("slow_progress", {"steps": 3, "delay_ms": 300}, progress="b")
        await running(cp, [in_flight])
        gw.routes_file.write_text("servers:\n  main: {stdio: {command: 5}}\nchannels: {main: [main]}\n")
        gw.signal(signal.SIGHUP)
        await gw.wait_for(r"^gateway: reload", within_s=30)
        assert gw.proc.returncode is None, "SIGHUP ended the gateway"
        await gw.wait_for(rf" ERROR .*{gw.routes_file}.*servers\.main\.stdio\.command", stream="stderr")

        assert payload_text(await cp.answer(in_flight)) == "done 3 steps"
        assert await whoami(cp, "main") == pid, "the running server was replaced by a rejected reload"
        assert payload_text(await cp.answer(cp.call("echo", {"text": "still serving"}))) == "still serving"
        assert cp.violations == []


async def test_a_stdio_server_never_inherits_the_gateways_control_plane_key(tmp_path: Path) -> None:
    """The gateway's environment holds its API key (TUNNEL_API_KEY); the stdio server it starts, with
    `inherit_env` on, gets the rest of that environment but not the key."""
    async with ScriptedControlPlane() as cp, run_gateway(routes({"main": stdio()}), tmp_path, *cli_args(cp)):
        key = await cp.answer(cp.call("getenv", {"variable": "TUNNEL_API_KEY"}))
        assert key["resp_json"]["result"]["structuredContent"] == {"result": None}, key
        assert payload_text(await cp.answer(cp.call("getenv", {"variable": "PATH"})))


async def test_a_stdio_server_gets_a_secret_the_file_reads_only_when_its_own_env_names_it(tmp_path: Path) -> None:
    """Every variable routing.yaml reads a secret from (here `sessions.key: env:SESSION_SECRET`) is
    withheld from the servers it starts; a server's own `env:` entry hands one over by reference."""
    server = stdio()
    server["stdio"]["env"] = {"HANDED": "env:HANDED_SECRET"}
    document = json.loads(routes({"main": server}))
    document["sessions"] = {"key": "env:SESSION_SECRET"}
    extra = {"SESSION_SECRET": "session-secret-0123456789abcdef", "HANDED_SECRET": "handed-to-the-server"}
    env = gateway_env(TUNNEL_API_KEY=KEY, **extra)
    async with ScriptedControlPlane() as cp, run_gateway(json.dumps(document), tmp_path, *cli_args(cp), env=env):
        withheld = await cp.answer(cp.call("getenv", {"variable": "SESSION_SECRET"}))
        assert withheld["resp_json"]["result"]["structuredContent"] == {"result": None}, withheld
        assert payload_text(await cp.answer(cp.call("getenv", {"variable": "HANDED"}))) == "handed-to-the-server"
        assert cp.violations == []


async def test_sigterm_with_the_embedded_relay_answers_the_calls_in_flight(tmp_path: Path) -> None:
    """The default deployment (the relay in the gateway's process, reached over the in-process link): on
    SIGTERM the `tools/call` POSTs MCP clients are waiting on still get their answers (the relay serves them
    until the drain ends), and the gateway exits 0. Raw HTTP (MCP 2025-11-25, basic/transports, Streamable
    HTTP: one JSON-RPC request per POST, answered with its response): the SDK client's own background GET
    stream would race the answers as the server goes away."""
    document = one_server_routes(stdio_server(), drain_timeout_s=15)
    async with gateway(document, tmp_path) as gw, httpx2.AsyncClient(timeout=30) as http:
        url = gw.urls["main"]
        started = await legacy_initialize(http, url)
        assert started.status_code == 200
        headers = {
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": started.headers["Mcp-Session-Id"],
            "MCP-Protocol-Version": "2025-11-25",
        }
        await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)

        async def sleep_call(i: int) -> httpx2.Response:
            call = {"name": "sleep_ms", "arguments": {"ms": 1500}}
            return await http.post(
                url, json={"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": call}, headers=headers
            )

        calls = [asyncio.ensure_future(sleep_call(i)) for i in range(3)]
        await asyncio.sleep(0.5)  # the calls are in the server by now (they take 1.5 s)
        assert not any(call.done() for call in calls)
        gw.process.proc.send_signal(signal.SIGTERM)
        answers = await asyncio.wait_for(asyncio.gather(*calls), 30)
        for i, answer in enumerate(answers):
            assert answer.status_code == 200
            message = json.loads(answer.text.removeprefix("event: message\ndata: ").strip())
            assert message["result"]["content"] == [{"type": "text", "text": "slept 1500 ms"}], f"call {i}"
        assert await asyncio.wait_for(gw.process.proc.wait(), 30) == 0
