"""The v1 poll-channel contract, rule by rule, counted at a scripted control plane.

The real gateway process polls `tests.support.scripted_cp.ScriptedControlPlane` on loopback.
Deadlines (`0s`, expired, anchored at the poll's headers, passing mid-call, malformed),
poll retries (backoff, `Retry-After` in both forms as a minimum on the control plane's
clock, malformed values ignored, 401/403 without a tight loop), response POST retries
(identical bytes and headers, 404 terminal, notify rules, never past the deadline),
batches, `limit` and backpressure, unknown command types, notifications, and the
identity headers. Every body either side sends is checked against `openapi.json`.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.support.cp_records import PostRecord, Reply, http_date, now, payload_text, whoami
from tests.support.gateway_process import GatewayProcess, cli_args, gateway_env, routes, run_gateway, stdio
from tests.support.harness import PYTHON, SERVERS, process
from tests.support.scripted_cp import KEY, ScriptedControlPlane

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOLERANCE_S = 0.05
"""Clock granularity allowance for lower bounds."""


@dataclass
class Rig:
    cp: ScriptedControlPlane
    gw: GatewayProcess


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def probe_url() -> AsyncIterator[str]:
    """The HTTP test server (`block` waits to be cancelled, `counters` says what happened)."""
    async with process(PYTHON, SERVERS / "http_probe_server.py") as proc:
        port = (await proc.wait_for(r"^PORT (\d+)"))[1]
        yield f"http://127.0.0.1:{port}/mcp"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(probe_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """One gateway for the rules that leave it as they found it: stdio `main`, HTTP `web`, stdio `raw`."""
    document = routes(
        {"main": stdio(), "web": {"http": {"url": probe_url}}, "raw": stdio("raw_stdio.py")},
        poll_timeout_ms=5000,
    )
    async with (
        ScriptedControlPlane(hold_s=0.5) as cp,
        run_gateway(document, tmp_path_factory.mktemp("shared"), *cli_args(cp)) as gw,
    ):
        yield Rig(cp, gw)


@pytest.fixture
def cp(rig: Rig) -> Iterator[ScriptedControlPlane]:
    """The shared control plane; afterwards: scripts cleared, no contract violation, no duplicate."""
    cp = rig.cp
    violations, duplicates = len(cp.violations), sum(cp.duplicates().values())
    yield cp
    cp.reset_scripts()
    assert cp.violations[violations:] == []
    assert sum(cp.duplicates().values()) == duplicates


async def counter(cp: ScriptedControlPlane) -> int:
    """Increment the stdio server's call counter (`main`) and return it."""
    return int(payload_text(await cp.answer(cp.call("counter_incr"))))


def gap_after(cp: ScriptedControlPlane, index: int) -> float:
    """Seconds between the control plane's reply to poll `index` and the next poll's arrival."""
    replied = cp.polls[index].replied
    assert replied is not None
    return cp.polls[index + 1].arrived - replied


def failed_polls(cp: ScriptedControlPlane, since: int) -> list[int]:
    return [p.index for p in cp.polls[since:] if p.status not in (200, 204, None)]


async def polls_failed(cp: ScriptedControlPlane, since: int, count: int, within_s: float = 60) -> list[int]:
    """Wait until `count` polls since `since` failed and one more poll followed the last; their indexes."""

    def done() -> bool:
        failed = failed_polls(cp, since)
        return len(failed) >= count and len(cp.polls) > failed[count - 1] + 1

    await cp.until(done, within_s, f"{count} failed polls and a retry")
    return failed_polls(cp, since)[:count]


# --------------------------------------------------------------------------- deadlines


async def test_zero_and_expired_deadlines_are_dropped_without_a_call(cp: ScriptedControlPlane) -> None:
    pid, before = await whoami(cp), await counter(cp)
    expired = [cp.call("counter_incr", response_timeout=value) for value in ("0s", "0ms", "0h", "1ns", "1us")]
    assert await counter(cp) == before + 1, "an expired command reached the server"
    assert await whoami(cp) == pid
    await cp.quiet(0.5)
    assert all(cp.attempts(r) == [] for r in expired), "an expired command was answered"
    assert expired[0] in cp.handed()


async def test_deadline_is_anchored_at_the_poll_headers(cp: ScriptedControlPlane) -> None:
    """The body arrives 600 ms after the headers: a 200 ms deadline has passed before decoding."""
    before = await counter(cp)
    cp.body_delay_s = 0.6
    late = cp.call("counter_incr", response_timeout="200ms")
    await cp.until(lambda: late in cp.handed(), what="the delayed batch")
    assert await counter(cp) == before + 1, "a command whose deadline passed during the body ran"
    assert cp.attempts(late) == []


async def test_deadline_passing_mid_call_posts_nothing_and_keeps_the_process(cp: ScriptedControlPlane) -> None:
    pid = await whoami(cp)
    abandoned = cp.call("sleep_ms", {"ms": 1500}, response_timeout="300ms")
    await cp.until(lambda: abandoned in cp.handed(), what="the timed-out call to be taken")
    # Started after the abandoned call on the same pipe and sleeping as long, so the server's late
    # reply to the abandoned call comes out of the pipe first and the gateway must discard it.
    follower = cp.call("sleep_ms", {"ms": 1500})
    assert payload_text(await cp.answer(follower)) == "slept 1500 ms"
    assert await whoami(cp) == pid, "the stdio server was restarted for a timed-out call"
    assert await counter(cp) > 0
    assert cp.attempts(abandoned) == [], "a response was posted after the deadline"


async def test_deadline_passing_mid_call_cancels_the_http_request(cp: ScriptedControlPlane) -> None:
    blocked = cp.call("block", channel="web", response_timeout="700ms")
    # `wait_cancelled` answers only once the server saw the `block` call cancelled.
    seen = cp.call("wait_cancelled", {"at_least": 1}, channel="web", response_timeout="20s")
    stats = json.loads(payload_text(await cp.answer(seen)))
    assert stats["started"] >= 1
    assert stats["cancelled"] >= 1
    assert cp.attempts(blocked) == []


async def test_malformed_response_timeout_means_no_deadline(cp: ScriptedControlPlane) -> None:
    values = ["4.5s", "-1s", "1m30s", " 1s", "30", "1e3s", "30d", "99999999999999999999h", "1S", ""]
    ids = [cp.call("sleep_ms", {"ms": 150}, response_timeout=v, contract=False) for v in values]
    ids.append(cp.call("sleep_ms", {"ms": 150}, extra={"response_timeout": None}))
    for payload in await cp.answers(ids):
        assert payload["resp_code"] == 200
        assert payload_text(payload) == "slept 150 ms"
    assert all(len(cp.terminals(r)) == 1 for r in ids)


# --------------------------------------------------------------------------- poll retries


async def test_poll_errors_are_retried(cp: ScriptedControlPlane) -> None:
    since = len(cp.polls)
    cp.fail_polls(503, 429, 500, 502, 504, Reply.dropped())
    failed = await polls_failed(cp, since, 6)
    assert [cp.polls[i].status for i in failed] == [503, 429, 500, 502, 504, 0]
    rid = cp.call("echo", {"text": "after the storm"}, channel="raw")
    assert payload_text(await cp.answer(rid)) == "after the storm"


async def test_malformed_poll_bodies_are_survived(cp: ScriptedControlPlane) -> None:
    since = len(cp.polls)
    cp.fail_polls(Reply(200, body=b'{"commands": ['), Reply(200, body=b'{"commands": 3}'), Reply(200, body=b"[]"))
    await cp.until(lambda: len(cp.polls) >= since + 4, what="polls after the malformed bodies")
    rid = cp.call("echo", {"text": "recovered"}, channel="raw")
    assert payload_text(await cp.answer(rid)) == "recovered"


async def test_a_malformed_command_does_not_sink_its_batch(cp: ScriptedControlPlane) -> None:
    first = cp.call("echo", {"text": "first"}, channel="raw")
    broken = cp.call("echo", {"text": "broken"}, channel="raw", contract=False, extra={"shard_token": 5})
    last = cp.call("echo", {"text": "last"}, channel="raw")
    cp.force_batch = 3
    assert [payload_text(p) for p in await cp.answers([first, last])] == ["first", "last"]
    assert next(p for p in cp.polls if first in p.handed).handed == [first, broken, last]
    await cp.quiet(0.3)
    assert cp.attempts(broken) == []


@pytest.mark.parametrize(("status", "seconds"), [(429, 2), (503, 1)])
async def test_retry_after_seconds_is_a_minimum(cp: ScriptedControlPlane, status: int, seconds: int) -> None:
    since = len(cp.polls)
    cp.fail_polls(Reply(status, retry_after=str(seconds)))
    failed = await polls_failed(cp, since, 1)
    gap = gap_after(cp, failed[0])
    assert gap >= seconds - TOLERANCE_S, f"polled again {gap:.3f}s after Retry-After: {seconds}"
    assert gap < seconds + 10


HTTP_DATE_FORMATS = {
    "IMF-fixdate": http_date,
    "RFC 850": lambda t: time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(t)),
    "asctime": lambda t: time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(t)),
}


@pytest.mark.parametrize("form", list(HTTP_DATE_FORMATS))
async def test_retry_after_http_date_is_a_minimum(cp: ScriptedControlPlane, form: str) -> None:
    """All three HTTP-date forms are valid (RFC 9110 5.6.7: recipients must accept each)."""
    since = len(cp.polls)
    target = math.floor(time.time()) + 3  # HTTP dates have one-second resolution
    cp.fail_polls(Reply(503, retry_after=HTTP_DATE_FORMATS[form](target)))
    failed = await polls_failed(cp, since, 1)
    record = cp.polls[failed[0]]
    assert record.replied_wall is not None
    minimum = target - record.replied_wall
    gap = gap_after(cp, failed[0])
    assert minimum > 1.5
    assert gap >= minimum - TOLERANCE_S, f"polled again {gap:.3f}s after a Retry-After {minimum:.3f}s ahead"
    assert gap < minimum + 10


async def test_malformed_negative_and_past_retry_after_are_ignored(cp: ScriptedControlPlane) -> None:
    """Each value, if wrongly honoured, would hold polling for 100 s or more."""
    since = len(cp.polls)
    values = ["-100", "100.5", "in 100 seconds", "Sun, 06 Nov 1994 08:49:37 GMT"]
    cp.fail_polls(*(Reply(503, retry_after=v) for v in values))
    failed = await polls_failed(cp, since, len(values))
    for value, index in zip(values, failed, strict=True):
        assert gap_after(cp, index) < 20, f"Retry-After {value!r} was honoured"


async def test_retry_after_with_non_ascii_digits_is_ignored(cp: ScriptedControlPlane) -> None:
    """delta-seconds is 1*DIGIT, ASCII only: "\u0665" (ARABIC-INDIC DIGIT FIVE) is malformed.
    Ignored, the retry follows the first backoff step (well under a second)."""
    since = len(cp.polls)
    cp.fail_polls(Reply(503, retry_after="\u0665"))
    failed = await polls_failed(cp, since, 1)
    gap = gap_after(cp, failed[0])
    assert gap < 4, f"a malformed Retry-After was honoured ({gap:.3f}s)"


# --------------------------------------------------------------------------- response POST retries


def _same_attempts(attempts: list[PostRecord]) -> None:
    first = attempts[0]
    for attempt in attempts[1:]:
        assert attempt.body == first.body, "a retried response POST changed its body"
        assert list(attempt.headers.items()) == list(first.headers.items()), "a retry changed the headers"


@pytest.mark.parametrize("status", [503, 502, 504, 408, 429])
async def test_terminal_post_is_retried_identically_and_delivered_once(cp: ScriptedControlPlane, status: int) -> None:
    rid = cp.call("echo", {"text": f"retry {status}"}, channel="raw")
    cp.fail_posts(status, status, request_id=rid)
    payload = await cp.answer(rid)
    assert payload_text(payload) == f"retry {status}"
    attempts = cp.attempts(rid)
    assert [a.status for a in attempts] == [status, status, 200]
    _same_attempts(attempts)
    assert attempts[0].headers["X-Tunnel-Shard-Token"] == cp.commands[rid].shard_token
    assert len(cp.terminals(rid)) == 1


async def test_terminal_post_retry_after_is_a_minimum(cp: ScriptedControlPlane) -> None:
    rid = cp.call("echo", {"text": "slow down"}, channel="raw")
    cp.fail_posts(Reply(429, retry_after="2"), request_id=rid)
    await cp.answer(rid)
    first, second = cp.attempts(rid)
    assert second.arrived - first.arrived >= 2 - TOLERANCE_S
    _same_attempts([first, second])


async def test_404_on_the_terminal_post_is_final_and_not_rerun(cp: ScriptedControlPlane) -> None:
    before = await counter(cp)
    gone = cp.call("counter_incr")
    cp.fail_posts(404, request_id=gone)
    await cp.until(lambda: len(cp.attempts(gone)) == 1, what="the terminal POST")
    await cp.quiet(1.5)  # the first retry, were there one, would come within 0.1 s
    assert [a.status for a in cp.attempts(gone)] == [404]
    assert await counter(cp) == before + 2, "the call was re-run after a 404"


async def test_lost_acknowledgement_is_resent_identically_and_404_ends_it(cp: ScriptedControlPlane) -> None:
    """The control plane took the terminal frame but the connection broke before its 200: the
    gateway re-sends the same bytes, the control plane says 404 (already final), and that is the end."""
    before = await counter(cp)
    rid = cp.call("counter_incr")
    cp.fail_posts(Reply.lost_ack(), request_id=rid)
    await cp.until(lambda: len(cp.attempts(rid)) >= 2, what="the re-sent terminal frame")
    await cp.quiet(1.0)
    attempts = cp.attempts(rid)
    assert len(attempts) == 2, "the gateway kept re-sending after a 404"
    assert attempts[1].after_final
    assert attempts[1].status == 404
    _same_attempts(attempts)
    assert len(cp.terminals(rid)) == 1
    assert await counter(cp) == before + 2, "the call was re-run"


@pytest.mark.parametrize("status", [400, 409, 413, 500])
async def test_other_statuses_on_the_terminal_post_are_not_retried(cp: ScriptedControlPlane, status: int) -> None:
    rid = cp.call("echo", {"text": "refused"}, channel="raw")
    cp.fail_posts(status, request_id=rid)
    await cp.until(lambda: len(cp.attempts(rid)) == 1, what="the terminal POST")
    await cp.quiet(1.0)
    assert [a.status for a in cp.attempts(rid)] == [status]


async def test_terminal_post_retries_stop_at_the_deadline(cp: ScriptedControlPlane) -> None:
    rid = cp.call("echo", {"text": "never taken"}, channel="raw", response_timeout="2s")
    cp.fail_posts(*([503] * 200), request_id=rid)
    await cp.until(lambda: cp.commands[rid].handed_at is not None, what="the command to be taken")
    handed = cp.commands[rid].handed_at
    assert handed is not None
    await cp.until(lambda: len(cp.attempts(rid)) >= 2, what="a retry")
    await cp.quiet(max(0.0, handed + 4.0 - now()))
    late = [a for a in cp.attempts(rid) if a.arrived > handed + 2 + 1.0]
    assert late == [], f"{len(late)} POST attempts after the 2 s deadline"
    assert cp.terminals(rid) == []


async def test_failed_notify_skips_later_notifies_but_the_terminal_is_delivered(cp: ScriptedControlPlane) -> None:
    rid = cp.call("slow_progress", {"steps": 4, "delay_ms": 30}, progress="p-500")
    cp.fail_posts(500, request_id=rid, resp_type="jsonrpc_notify")
    payload = await cp.answer(rid)
    assert payload_text(payload) == "done 4 steps"
    assert [a.status for a in cp.notifies(rid)] == [500], "a notify was retried, or later ones still sent"
    assert len(cp.terminals(rid)) == 1


async def test_notify_429_is_retried(cp: ScriptedControlPlane) -> None:
    rid = cp.call("slow_progress", {"steps": 3, "delay_ms": 30}, progress="p-429")
    cp.fail_posts(429, request_id=rid, resp_type="jsonrpc_notify")
    await cp.answer(rid)
    notifies = cp.notifies(rid)
    assert [a.status for a in notifies] == [429, 200, 200, 200]
    _same_attempts(notifies[:2])
    progress = [json.loads(a.body)["resp_json"]["params"]["progress"] for a in notifies[1:]]
    assert progress == [1, 2, 3]
    assert all(json.loads(a.body)["resp_json"]["params"]["progressToken"] == "p-429" for a in notifies)
    assert len(cp.terminals(rid)) == 1


# --------------------------------------------------------------------------- batches, limit, command types


async def test_batch_larger_than_limit_is_fully_processed(cp: ScriptedControlPlane) -> None:
    ids = [cp.call("echo", {"text": f"n{i}"}, channel="raw") for i in range(40)]
    cp.force_batch = 40
    payloads = await cp.answers(ids)
    assert [payload_text(p) for p in payloads] == [f"n{i}" for i in range(40)]
    batch = next(p for p in cp.polls if ids[0] in p.handed)
    assert len(batch.handed) == 40
    assert batch.limit is not None
    assert batch.limit <= 25
    assert all(len(cp.terminals(r)) == 1 for r in ids)


async def test_limit_is_at_most_25_and_the_poll_asks_for_the_configured_wait(cp: ScriptedControlPlane) -> None:
    await cp.answer(cp.call("echo", {"text": "x"}, channel="raw"))
    assert len(cp.polls) >= 2
    assert cp.polls[0].query["timeout_ms"] == ["1"], "the first poll asks for no wait: a quick first answer"
    for poll in cp.polls:
        assert poll.limit is not None
        assert 1 <= poll.limit <= 25
        assert "channel" not in poll.query, "no channel allowlist is configured"
    for poll in cp.polls[1:]:
        assert poll.query["timeout_ms"] == ["5000"]
    assert max(p.limit or 0 for p in cp.polls) == 25  # 64 free slots, capped at 25


async def test_unknown_command_type_is_skipped_and_polling_continues(cp: ScriptedControlPlane) -> None:
    odd = cp.enqueue(
        {"jsonrpc": "2.0", "id": "odd", "method": "tools/call", "params": {"name": "echo", "arguments": {}}},
        command_type="telepathy",
        channel="raw",
        contract=False,
    )
    later = [cp.call("echo", {"text": f"still here {i}"}, channel="raw") for i in range(3)]
    assert [payload_text(p) for p in await cp.answers(later)] == [f"still here {i}" for i in range(3)]
    await cp.quiet(0.3)
    assert cp.attempts(odd) == []
    assert odd in cp.handed()


async def test_unknown_fields_are_ignored_and_ids_are_opaque(cp: ScriptedControlPlane) -> None:
    rid = "req/ü ?&=#%2F:{opaque}"
    message = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "o"}},
    }
    cp.enqueue(message, request_id=rid, channel="raw", extra={"future_field": {"nested": [1, 2]}, "priority": 9})
    payload = await cp.answer(rid)
    assert payload["request_id"] == rid
    assert payload["resp_json"]["id"] == 7
    assert payload_text(payload) == "o"


async def test_notification_is_acknowledged_with_notify_ack(cp: ScriptedControlPlane) -> None:
    rid = cp.notify("notifications/roots/list_changed")
    payload = await cp.answer(rid)
    assert payload["resp_type"] == "notify_ack"
    assert "resp_json" not in payload or payload["resp_json"] is None
    assert 200 <= payload["resp_code"] < 300
    assert len(cp.attempts(rid)) == 1


async def test_session_termination_of_an_unknown_session_on_a_stdio_channel_is_404(cp: ScriptedControlPlane) -> None:
    rid = cp.enqueue(command_type="session_termination", headers={"Mcp-Session-Id": ["abc"]})
    payload = await cp.answer(rid)
    assert payload["resp_type"] == "session_termination_response"
    assert payload["resp_code"] == 404
    assert payload.get("resp_json") is None
    assert await whoami(cp) > 0


# --------------------------------------------------------------------------- identity


SERVER_INFO = {
    "version": 1,
    "channels": [{"name": "main", "proc_affinity": True}, {"name": "raw", "proc_affinity": True}, {"name": "web"}],
}


def check_server_info(value: str, expected: dict[str, Any]) -> None:
    assert len(value.encode()) <= 4096
    info = json.loads(value)
    assert info == expected
    assert value == json.dumps(info, separators=(",", ":")), "not compact JSON"
    names = [c["name"] for c in info["channels"]]
    assert len(names) == len(set(names)) <= 32
    for entry in info["channels"]:
        assert set(entry) <= {"name", "proc_affinity"}
        assert entry.get("proc_affinity", True) is True, "proc_affinity: false must be omitted"
    assert not re.search(r"https?:|127\.0\.0\.1|python|\.py", value), "the declaration leaks a target"


async def test_identity_headers_on_every_poll_and_post(cp: ScriptedControlPlane) -> None:
    await cp.answer(cp.call("echo", {"text": "who"}, channel="raw"))
    assert cp.polls
    assert cp.posts
    instance_ids = set()
    for record in [*cp.polls, *cp.posts]:
        headers = record.headers
        assert headers["X-Tunnel-Client-Name"] == "mcp-tunnel-gateway"
        assert headers["X-Tunnel-Client-Version"]
        assert headers["Authorization"] == f"Bearer {KEY}"
        instance_ids.add(headers["X-Tunnel-Client-Instance-Id"])
        check_server_info(headers["X-Tunnel-MCP-Server-Info"], SERVER_INFO)
    assert len(instance_ids) == 1, "X-Tunnel-Client-Instance-Id changed within one process"
    for post in cp.posts:
        assert post.headers["X-Tunnel-Shard-Token"] == cp.commands[str(post.request_id)].shard_token


# --------------------------------------------------------------------------- gateways of their own


async def test_server_info_limits_are_enforced_before_sending(tmp_path: Path) -> None:
    """33 channels: more than v1 allows, so the declaration is left out rather than sent invalid."""
    channels = {f"ch{i:02d}": "main" for i in range(33)}
    async with ScriptedControlPlane(hold_s=0.2) as cp:
        async with run_gateway(routes({"main": stdio("raw_stdio.py")}, channels), tmp_path, *cli_args(cp)):
            await cp.answer(cp.call("echo", {"text": "many"}, channel="ch32"))
            for record in [*cp.polls, *cp.posts]:
                value = record.headers.get("X-Tunnel-MCP-Server-Info")
                if value is not None:
                    info = json.loads(value)
                    assert len(value.encode()) <= 4096
                    assert len(info["channels"]) <= 32
                    assert info["version"] == 1
        assert cp.violations == []


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_credentials_back_off_hard(status: int, tmp_path: Path) -> None:
    async with ScriptedControlPlane(hold_s=0.2) as cp:
        if status == 401:
            cp.keys["poll"] = set()
        else:
            cp.fail_polls(*([403] * 50))
        refused = rf"^waiting: control_plane \(control plane refused poll: HTTP {status}\)$"
        async with run_gateway(routes({"main": stdio("raw_stdio.py")}), tmp_path, *cli_args(cp), ready=refused) as gw:
            await cp.polls_after(0, 1)
            await cp.quiet(3.0)
            assert [p.status for p in cp.polls] == [status], "polled again within 3 s of a credential rejection"
            errors = [line for line in gw.stderr if " ERROR " in line and str(status) in line]
            assert len(errors) == 1, "a credential rejection is reported once, loudly"
            assert KEY not in "\n".join(gw.stderr)


async def test_401_on_a_response_post_rereads_the_rotated_key(tmp_path: Path) -> None:
    """The key file is rotated in place (same size, same mtime): only the 401 can reveal it."""
    old, new = KEY, KEY[:-4] + "9999"
    key_file = tmp_path / "key"
    key_file.write_text(old)
    stamp = key_file.stat()
    control_plane = {"api_key": f"file:{key_file}"}
    async with ScriptedControlPlane(hold_s=0.3) as cp:
        cp.keys["poll"] = {old, new}
        control_plane |= {"url": cp.url, "tunnel_id": cp.tunnel_id}
        document = routes({"main": stdio("raw_stdio.py")}, control_plane=control_plane)
        async with run_gateway(document, tmp_path, env=gateway_env()):
            assert await cp.answer(cp.call("echo", {"text": "old key"}))
            key_file.write_text(new)
            os.utime(key_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
            cp.keys["post"] = {new}
            rid = cp.call("echo", {"text": "new key"})
            assert payload_text(await cp.answer(rid)) == "new key"
            attempts = cp.attempts(rid)
            assert [(a.status, a.key) for a in attempts] == [(401, old), (200, new)]
            assert attempts[0].body == attempts[1].body
            since = len(cp.polls)
            await cp.polls_after(since, 2)
            assert {p.key for p in cp.polls[since + 1 :]} == {new}, "polls kept the rejected key"
        assert cp.violations == []


async def test_limit_never_exceeds_free_capacity(tmp_path: Path) -> None:
    """max_inflight 3: no poll asks for more than the free slots, and none is sent while full."""
    async with ScriptedControlPlane(hold_s=0.3) as cp:
        document = routes({"main": stdio()}, max_inflight=3, poll_timeout_ms=5000)
        async with run_gateway(document, tmp_path, *cli_args(cp)):
            await cp.answer(cp.call("echo", {"text": "warm"}))
            ids = [cp.call("sleep_ms", {"ms": 100 + 300 * (i % 3)}) for i in range(12)]
            await cp.answers(ids)
            checked = [p for p in cp.polls if set(p.handed) & set(ids)]
            assert sum(len(p.handed) for p in checked) == 12
            for poll in cp.polls:
                assert poll.limit is not None
                free = 3 - poll.outstanding
                assert free >= 1, f"poll {poll.index} sent with all 3 slots busy"
                assert poll.limit <= free, f"poll {poll.index} asked for {poll.limit} with {free} free"
            assert any((p.limit or 0) < 3 for p in checked), "the limit never followed the free capacity"
            assert all(len(cp.terminals(r)) == 1 for r in ids)
        assert cp.violations == []


async def test_several_polls_in_flight_never_ask_together_for_more_than_free(tmp_path: Path) -> None:
    """polls_in_flight 3, max_inflight 6: at each poll's arrival, its limit, the limits of the
    polls still out, and the commands still running fit in the 6 slots; all are served once."""
    async with ScriptedControlPlane(hold_s=0.3) as cp:
        document = routes({"main": stdio()}, max_inflight=6, poll_timeout_ms=2000, polls_in_flight=3)
        async with run_gateway(document, tmp_path, *cli_args(cp)):
            await cp.answer(cp.call("echo", {"text": "warm"}))
            ids = [cp.call("sleep_ms", {"ms": 50 + 100 * (i % 4)}) for i in range(30)]
            await cp.answers(ids)
            assert all(len(cp.terminals(r)) == 1 for r in ids)
            overlapping = 0
            for poll in cp.polls:
                assert poll.limit is not None
                out = [
                    p
                    for p in cp.polls
                    if p.index != poll.index
                    and p.arrived < poll.arrived
                    and (p.replied is None or p.replied > poll.arrived)
                ]
                overlapping += bool(out)
                asked = poll.limit + sum(p.limit or 0 for p in out)
                assert asked + poll.outstanding <= 6, (
                    f"poll {poll.index}: {asked} asked with {poll.outstanding} running"
                )
            assert overlapping, "no two polls were ever out at once"
        assert cp.violations == []
