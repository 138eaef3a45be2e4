"""Live fuzzing: the real gateway under generated malformed commands, the real relay under generated
malformed HTTP requests (generators and verdicts: tests/support/fuzz_inputs.py; budgets: tests/support/fuzz_budget.py).

Gateway: `tests.support.scripted_cp.ScriptedControlPlane` hands out batches of a few hundred commands per
poll (far past the `limit` hint, which the contract says to run whole). Every command the contract
says must be answered gets exactly one terminal frame, none that must not be answered (expired,
no usable envelope, unknown type) gets any, every frame is a valid `TunnelResponsePayload`, and at
the end the gateway still polls, `/readyz` is green and its log holds no traceback.

Relay: generated requests at every endpoint, many per keep-alive connection, malformed HTTP on
connections of their own. Every request is answered (never a 500, never a hang) and the relay's
log holds no traceback and no ERROR line.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from tests.support.fuzz_budget import SEED, FuzzReport, budget, timeout_s
from tests.support.fuzz_inputs import CommandFuzzer, FuzzCommand, FuzzRequest, RequestFuzzer, summary
from tests.support.gateway_process import cli_args, routes, run_gateway, stdio
from tests.support.harness import PYTHON, process
from tests.support.raw_http import Closed, connection, read_response
from tests.support.scripted_cp import ScriptedControlPlane

pytestmark = pytest.mark.timeout(timeout_s(240))


BATCH = 250
"""Commands per poll (the gateway asks for 25 at most; it must run a larger batch whole)."""
ROUND_WITHIN_S = float(os.environ.get("GATEWAY_FUZZ_ROUND_S", "90"))
"""How long one batch may take to be answered before it counts as a hang (not a speed check)."""
CONNECTIONS = 4
REQUEST_WITHIN_S = 30.0


async def test_the_gateway_answers_every_generated_command_as_the_contract_says(
    tmp_path: Path, fuzz_report: FuzzReport
) -> None:
    """Tunnel v1 (tunnel-protocol/README.md "Command fields", "response_timeout", "Response POST")."""
    document = json.loads(
        routes({"main": stdio(), "old": stdio("sdk_server.py", "--legacy")}, max_inflight=64, poll_timeout_ms=2000)
    )
    document["ops"] = {"listen": "127.0.0.1:0"}
    document["logging"] = {"level": "WARNING"}  # a line per refused command would cost more than refusing it
    fuzzer = CommandFuzzer(SEED, ("main", "old"))
    total = budget(25_000)
    sent: list[FuzzCommand] = []
    async with (
        ScriptedControlPlane(hold_s=0.2) as cp,
        run_gateway(json.dumps(document), tmp_path, *cli_args(cp)) as gw,
    ):
        ops = (await gw.wait_for(r"^ops: listening on (\S+)"))[1]
        while len(sent) < total:
            batch = [fuzzer.command() for _ in range(min(BATCH, total - len(sent)))]
            for command in batch:
                cp.enqueue_raw(
                    command.members,
                    request_id=command.request_id,
                    shard_token=command.shard_token,
                    envelope=False,
                    channel=command.channel,
                )
            cp.force_batch = len(batch)
            due = [c for c in batch if c.answered]
            try:
                await cp.until(lambda due=due: all(cp.answered(c.request_id) for c in due), ROUND_WITHIN_S)  # type: ignore[misc]
            except AssertionError:
                missing = [c.members[:300] for c in due if not cp.answered(c.request_id)]
                raise AssertionError(f"{len(missing)} commands unanswered, e.g. {missing[:5]}") from None
            sent += batch
        polls = len(cp.polls)
        await cp.polls_after(polls, 2)  # the poll loop still runs, and late frames had a chance to come
        async with aiohttp.ClientSession() as http, http.get(f"{ops}/readyz") as ready:
            readiness = (ready.status, await ready.json())
        assert gw.proc.returncode is None, "the gateway exited"
    counts = summary(sent)
    posted = Counter(post.request_id for post in cp.posts)
    accepted = Counter(post.request_id for post in cp.posts if post.terminal and post.accepted)
    wrongly_answered = [c.request_id for c in sent if not c.answered and posted[c.request_id]]
    terminals = Counter(accepted[c.request_id] for c in sent if c.answered)
    fuzz_report.add("live gateway", "commands", counts["commands"])
    fuzz_report.add("live gateway", "must answer (answered)", counts["must answer"])
    fuzz_report.add("live gateway", "must not answer (not answered)", counts["must not answer"] - len(wrongly_answered))
    fuzz_report.add("live gateway", "may reach a server", counts["may reach a server"])
    fuzz_report.add("live gateway", "polls", polls)
    assert wrongly_answered == []
    assert terminals == Counter({1: counts["must answer"]})
    assert cp.violations == []
    assert cp.duplicates() == {}
    assert readiness[0] == 200, readiness
    assert [line for line in gw.stderr if "Traceback" in line or " ERROR " in line] == []


async def _drive(port: int, requests: list[FuzzRequest], statuses: Counter[int], failures: list[str]) -> None:
    """Send `requests` in order over keep-alive connections (a new one after an unframed request or
    a `Connection: close` answer), one answer read before the next request goes."""
    index = 0
    while index < len(requests):
        async with connection(port) as (reader, writer):
            while index < len(requests):
                request = requests[index]
                index += 1
                writer.write(request.data)
                try:
                    async with asyncio.timeout(REQUEST_WITHIN_S):
                        answer = await read_response(reader)
                except Closed:
                    if request.framed:
                        failures.append(f"closed without an answer: {request.data[:120]!r}")
                    statuses[0] += 1
                    break
                except TimeoutError:
                    failures.append(f"no answer within {REQUEST_WITHIN_S}s: {request.data[:120]!r}")
                    break
                statuses[answer.status] += 1
                if answer.status >= 500 and answer.status != 503:
                    failures.append(f"{answer.status} for {request.data[:160]!r}: {answer.body[:200]!r}")
                if not request.framed or answer.headers.get("connection", "").lower() == "close":
                    break


async def test_the_relay_answers_every_generated_request_without_500_or_traceback(
    tmp_path: Path, fuzz_report: FuzzReport
) -> None:
    key = "fuzz-gateway-key-0001"
    config = tmp_path / "relay.yaml"
    config.write_text(
        json.dumps(
            {
                "listen": "127.0.0.1:0",
                "tunnels": {"fz_open": {"gateway_key": "fuzz-other-key-0002"}, "fz_gw": {"gateway_key": key}},
                "poll_max_wait_ms": 1,
                "response_timeout_s": 5,
                "client_seen_grace_s": 0,
                "read_timeout_s": 10,
            }
        )
    )
    log = tmp_path / "relay.log"
    total = budget(5_000)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    with log.open("wb") as stderr:
        async with process(PYTHON, "-m", "gateway.cli", "relay", "--config", config, stderr=stderr) as relay:
            port = int((await relay.wait_for(r"^relay: ready http://127\.0\.0\.1:(\d+)"))[1])
            fuzzer = RequestFuzzer(SEED, open_tunnel="fz_open", gw_tunnel="fz_gw", key=key, port=port)
            requests = [fuzzer.request() for _ in range(total)]
            shares = [requests[i::CONNECTIONS] for i in range(CONNECTIONS)]
            await asyncio.gather(*(_drive(port, share, statuses, failures) for share in shares))
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as health:
                assert health.status == 200
    fuzz_report.add("live relay", "requests", total)
    fuzz_report.add("live relay", "malformed HTTP", sum(not r.framed for r in requests))
    for status, n in statuses.items():
        fuzz_report.add("live relay", f"answered {status}" if status else "closed after malformed HTTP", n)
    lines = log.read_text(errors="replace").splitlines()
    assert failures == []
    assert sum(statuses.values()) == total
    assert [line for line in lines if "Traceback" in line or " ERROR " in line] == []
