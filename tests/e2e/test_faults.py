"""Faults survived with nothing lost or duplicated, counted at the control plane.

Each test runs the real gateway against `tests.support.scripted_cp.ScriptedControlPlane` under
load and breaks something: the control plane goes down and comes back, response POSTs
fail every other time, the stdio server is killed again and again, the HTTP upstream
refuses connections. Every command taken must get exactly one accepted terminal frame
(unless its deadline passed, and then none after it), with no duplicate delivery, and
every failure must be the contract's -32603 with valid `tunnel_failure` provenance.
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

from tests.support.cp_records import exactly_once, payload_text, tunnel_failure
from tests.support.gateway_process import cli_args, routes, run_gateway, stdio
from tests.support.harness import PYTHON, SERVERS, process
from tests.support.scripted_cp import ScriptedControlPlane


async def test_control_plane_down_mid_load_then_back(tmp_path: Path) -> None:
    async with ScriptedControlPlane(hold_s=0.3) as cp:
        document = routes({"main": stdio(), "raw": stdio("raw_stdio.py")}, poll_timeout_ms=2000)
        async with run_gateway(document, tmp_path, *cli_args(cp)):
            ids = [cp.call("sleep_ms", {"ms": 200 + 50 * (i % 8)}) for i in range(30)]
            ids += [cp.call("echo", {"text": f"e{i}"}, channel="raw") for i in range(30)]
            deadlines = {cp.call("sleep_ms", {"ms": 100}, response_timeout="1500ms"): 1.5 for _ in range(5)}
            await cp.until(lambda: sum(cp.answered(r) for r in ids) >= 10, what="the load to be under way")

            async with cp.outage("refuse"):
                # Commands queued during the outage are handed out once it is over.
                ids += [cp.call("echo", {"text": f"late{i}"}, channel="raw") for i in range(10)]
                await cp.quiet(3.0)
            assert cp.outstanding(), "nothing was in flight when the control plane went down"

            await cp.answers(ids, within_s=60)
            async with cp.outage("drop"):
                await cp.quiet(1.0)
            ids += [cp.call("echo", {"text": f"after{i}"}, channel="raw") for i in range(10)]
            await cp.answers(ids, within_s=60)

            exactly_once(cp, [*ids, *deadlines], deadlines)
            assert sorted(payload_text(cp.payload(r)) for r in ids if r.startswith("req_echo")) == sorted(
                [f"e{i}" for i in range(30)] + [f"late{i}" for i in range(10)] + [f"after{i}" for i in range(10)]
            )


async def test_response_posts_failing_every_other_time(tmp_path: Path) -> None:
    async with ScriptedControlPlane(hold_s=0.3) as cp:
        document = routes({"main": stdio(), "raw": stdio("raw_stdio.py")})
        async with run_gateway(document, tmp_path, *cli_args(cp)):
            await cp.answer(cp.call("echo", {"text": "warm"}, channel="raw"))
            cp.fail_every_other_post(503)
            ids = [cp.call("echo", {"text": f"e{i}"}, channel="raw") for i in range(30)]
            ids += [cp.call("slow_progress", {"steps": 2, "delay_ms": 20}, progress=f"p{i}") for i in range(10)]
            ids += [cp.notify("notifications/roots/list_changed") for _ in range(5)]
            await cp.answers(ids, within_s=90)
            exactly_once(cp, ids)

            failed_terminals = 0
            for rid in ids:
                attempts = [a for a in cp.attempts(rid) if a.terminal]
                assert attempts[-1].status == 200
                assert all(a.status == 503 for a in attempts[:-1])
                assert len({a.body for a in attempts}) == 1, "a retried terminal frame changed"
                failed_terminals += len(attempts) - 1
                notifies = Counter(a.body for a in cp.notifies(rid))
                assert all(n == 1 for n in notifies.values()), "a notify was retried after a 503"
            assert failed_terminals >= 10, "the every-other-time failures did not hit terminal frames"
            for rid in ids[:30]:
                assert payload_text(cp.payload(rid)) == cp.commands[rid].body["jsonrpc"]["params"]["arguments"]["text"]


async def test_stdio_server_killed_repeatedly_under_load(tmp_path: Path) -> None:
    """Four waves of echo calls, each with a `crash` call that kills the server mid-wave."""
    async with ScriptedControlPlane(hold_s=0.3) as cp:
        document = routes({"main": stdio(restart_backoff_max_s=0.5)})
        async with run_gateway(document, tmp_path, *cli_args(cp)):
            pids = [int(payload_text(await cp.answer(cp.call("whoami"))))]
            ids: list[str] = []
            crashes: list[str] = []
            answered = failed = 0
            for wave in range(4):
                batch = [cp.call("echo", {"text": f"w{wave}-{i}"}) for i in range(6)]
                crashes.append(cp.call("crash"))
                batch += [cp.call("echo", {"text": f"w{wave}-{i}"}) for i in range(6, 12)]
                ids += batch
                for rid, payload in zip(batch, await cp.answers(batch, within_s=60), strict=True):
                    if "error" in payload["resp_json"]:
                        provenance = tunnel_failure(payload)
                        assert payload["resp_code"] == 502
                        assert provenance["source"] == "transport_closed", provenance
                        assert provenance["upstream_response_received"] is False
                        assert "upstream_status" not in provenance
                        failed += 1
                    else:
                        assert payload_text(payload) == cp.commands[rid].body["jsonrpc"]["params"]["arguments"]["text"]
                        answered += 1
                pids.append(int(payload_text(await cp.answer(cp.call("whoami")))))
            for payload in await cp.answers(crashes):
                assert payload["resp_code"] == 502
                assert tunnel_failure(payload)["source"] == "transport_closed"
            assert len(set(pids)) == 5, f"not one restart per crash: {pids}"
            exactly_once(cp, [*ids, *crashes])
            assert answered + failed == 48
            assert answered > 0


async def test_http_upstream_refusing_connections(tmp_path: Path) -> None:
    async with ScriptedControlPlane(hold_s=0.3) as cp:
        server = process(PYTHON, SERVERS / "sdk_server.py", "--http", "--port", "0")
        async with server as proc:
            url = (await proc.wait_for(r"READY (\S+)"))[1]
            document = routes({"web": {"http": {"url": url}, "startup_timeout_s": 5}})
            async with run_gateway(document, tmp_path, *cli_args(cp)):
                before = [cp.call("echo", {"text": f"up{i}"}, channel="web") for i in range(10)]
                assert [payload_text(p) for p in await cp.answers(before)] == [f"up{i}" for i in range(10)]

                assert await proc.stop() is not None  # the server is gone; its port refuses connections
                after = [cp.call("echo", {"text": f"down{i}"}, channel="web") for i in range(20)]
                after.append(cp.notify("notifications/roots/list_changed", channel="web"))
                payloads = await cp.answers(after, within_s=60)
                for payload in payloads[:-1]:
                    assert payload["resp_code"] == 502
                    assert payload["resp_json"]["error"]["message"] == "Bad Gateway"
                    assert tunnel_failure(payload) == {
                        "version": 1,
                        "source": "connect",
                        "transport_error_kind": "connection_refused",
                        "upstream_response_received": False,
                    }
                ack = payloads[-1]
                assert ack["resp_type"] == "notify_ack"
                assert ack["resp_code"] == 502
                exactly_once(cp, [*before, *after])
                raw = json.dumps([p.payload for p in cp.posts])
                assert url not in raw, "the upstream URL leaked into a response"


async def test_death_in_the_restart_handshake_is_noticed_at_once(tmp_path: Path) -> None:
    """A stdio server killed, whose restart then exits during its `initialize` (MCP 2025-11-25,
    Lifecycle: Initialization), is restarted again after the backoff, not after `startup_timeout_s`:
    300 s here, ten times this test's own patience. Counted by the spawns the server logs."""
    spawns = tmp_path / "spawns"
    server = stdio(
        "raw_stdio.py",
        "--spawn-log",
        str(spawns),
        "--die-in-handshake",
        "2",
        startup_timeout_s=300,
        restart_backoff_max_s=0.5,
    )
    async with (
        ScriptedControlPlane(hold_s=0.3) as cp,
        run_gateway(routes({"raw": server}), tmp_path, *cli_args(cp)) as gw,
    ):
        assert payload_text(await cp.answer(cp.call("echo", {"text": "before"}, channel="raw"))) == "before"
        os.kill(int(spawns.read_text().split()[0]), signal.SIGKILL)
        await gw.wait_for(r"stdio server 'raw' exited with status -9", stream="stderr")
        after = cp.call("echo", {"text": "after"}, channel="raw")
        assert payload_text(await cp.answer(after, within_s=30)) == "after"
        await gw.wait_for(r"stdio server 'raw' exited during the MCP handshake", stream="stderr", within_s=1)
        assert len(spawns.read_text().split()) == 3, "not one restart after the handshake death"
        exactly_once(cp, [after])
