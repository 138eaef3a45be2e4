"""Regression tests for the input defects of issue 14, each reproduced the way the campaign found it.

Gateway side: the real gateway process polls `tests.scripted_cp.ScriptedControlPlane` (its
`main` channel is the SDK test server over stdio, a 2026-07-28 server, so handshake-era
requests are bridged). Relay side: a real `Relay` on loopback, spoken to with raw HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from gateway.config import routing as routing_config
from gateway.dispatch.dispatcher import Dispatcher
from gateway.observe.ops import Readiness
from gateway.protocol.errors import ConfigError
from gateway.protocol.wire import Codec, PolledCommand, TunnelClientMetadata
from gateway.relay import Relay
from gateway.tunnel.client import Poller
from tests.support.raw_http import Closed, connection, read_response, request
from tests.support.scripted_cp import (
    GatewayProcess,
    ScriptedControlPlane,
    cli_args,
    gateway_env,
    routes,
    run_gateway,
    stdio,
)
from tests.unit.relay.test_front_door import GATEWAY, KEY, TUNNEL, relay_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEEP = b"[" * 1000 + b"]" * 1000
LEGACY = {"Mcp-Protocol-Version": ["2025-11-25"]}


@dataclass
class Rig:
    cp: ScriptedControlPlane
    gw: GatewayProcess


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with (
        ScriptedControlPlane(hold_s=0.5) as cp,
        run_gateway(routes({"main": stdio()}), tmp_path_factory.mktemp("defects"), *cli_args(cp)) as gw,
    ):
        yield Rig(cp, gw)


@pytest.fixture
def cp(rig: Rig) -> Iterator[ScriptedControlPlane]:
    """The shared control plane; afterwards no contract violation and no traceback from the gateway."""
    yield rig.cp
    assert rig.cp.violations == []
    assert not [line for line in rig.gw.stderr if "Traceback" in line]


def ping(id: int | str = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id, "method": "ping"}


def error_of(payload: dict[str, Any]) -> tuple[int, int, Any]:
    """(resp_code, JSON-RPC error code, id) of a terminal JSON-RPC error frame."""
    body = payload["resp_json"]
    return payload["resp_code"], body["error"]["code"], body["id"]


# --------------------------------------------------------------------------- 1, 2: one bad command, one answer


async def test_a_command_nested_1000_deep_is_answered_and_polling_goes_on(cp: ScriptedControlPlane) -> None:
    """Defect 1: the decoder's RecursionError escaped the poll loop and polling stopped for good.
    Now the command gets its own -32600 answer, its neighbour in the batch runs, and later polls go on."""
    deep = cp.enqueue_raw(b'"jsonrpc":{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"x":%s}}' % DEEP)
    neighbour = cp.enqueue(ping("n"), headers=LEGACY)
    cp.force_batch = 2
    answers = await cp.answers([deep, neighbour])
    assert error_of(answers[0]) == (400, -32600, None)
    assert answers[1]["resp_json"] == {"jsonrpc": "2.0", "id": "n", "result": {}}
    later = cp.enqueue(ping("later"), headers=LEGACY)
    assert (await cp.answer(later))["resp_code"] == 200


async def test_a_message_deeper_than_servers_survive_is_refused(cp: ScriptedControlPlane) -> None:
    """A client message nested 200 levels decodes, but the official Python SDK server drops it
    unanswered: the gateway refuses messages nested past 128 levels itself (-32600)."""
    nested = b"[" * 200 + b"]" * 200
    deep = cp.enqueue_raw(b'"jsonrpc":{"jsonrpc":"2.0","id":8,"method":"tools/list","params":{"x":%s}}' % nested)
    shallow = cp.enqueue_raw(b'"jsonrpc":{"jsonrpc":"2.0","id":9,"method":"tools/list","params":{"x":[[1]]}}')
    refused, served = await cp.answers([deep, shallow])
    assert error_of(refused) == (400, -32600, None)
    assert served["resp_json"]["id"] == 9


async def test_a_deep_value_in_any_field_spares_the_batch(cp: ScriptedControlPlane) -> None:
    """Depth in `headers` or `response_timeout`, or a whole command that is one deep array."""
    bad_headers = cp.enqueue_raw(b'"headers":{"x":%s},"jsonrpc":{"jsonrpc":"2.0","id":1,"method":"ping"}' % DEEP)
    bad_timeout = cp.enqueue_raw(b'"response_timeout":%s,"jsonrpc":{"jsonrpc":"2.0","id":2,"method":"ping"}' % DEEP)
    hopeless = cp.enqueue_raw(DEEP, envelope=False)
    good = cp.enqueue(ping("g"), headers=LEGACY)
    cp.force_batch = 4
    payloads = await cp.answers([bad_headers, bad_timeout, good])
    assert error_of(payloads[0]) == (400, -32600, None)
    assert payloads[1]["resp_json"]["result"] == {}  # a deep response_timeout is malformed: no deadline
    assert payloads[2]["resp_code"] == 200
    assert cp.attempts(hopeless) == []


async def test_a_lone_surrogate_spoils_only_its_own_command(cp: ScriptedControlPlane) -> None:
    """Defect 2: `"\\ud800"` in one command made the whole poll body undecodable."""
    spoiled = cp.enqueue_raw(b'"jsonrpc":{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\ud800"}}')
    in_headers = cp.enqueue_raw(
        b'"headers":{"Mcp-Session-Id":["\\udfff"]},"jsonrpc":{"jsonrpc":"2.0","id":2,"method":"ping"}'
    )
    unanswerable = cp.enqueue_raw(b'{"request_id":"\\ud800","shard_token":"s"}', envelope=False)
    first, second = cp.enqueue(ping("a"), headers=LEGACY), cp.enqueue(ping("b"), headers=LEGACY)
    cp.force_batch = 5
    payloads = await cp.answers([spoiled, in_headers, first, second])
    assert [error_of(p) for p in payloads[:2]] == [(400, -32600, None)] * 2
    assert [p["resp_json"]["id"] for p in payloads[2:]] == ["a", "b"]
    assert cp.attempts(unanswerable) == []


# --------------------------------------------------------------------------- 3: era bridge


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, 200),
        ([1, 2], -32602),
        ("text", -32602),
        (7, -32602),
        ({"_meta": None}, 200),
        ({"_meta": [1]}, -32602),
        ({"_meta": "x"}, -32602),
    ],
)
async def test_bridged_requests_are_answered_whatever_their_params(
    cp: ScriptedControlPlane, params: Any, expected: int
) -> None:
    """Defect 3 (MCP 2025-11-25 basic/index "Requests": params, when present, is an object; the
    2026-07-28 request `_meta` envelope): a handshake-era `tools/list` bridged to a 2026-07-28
    server with null, array, string or number params, or a `_meta` that is null or not an
    object, is answered: null is taken as absent, anything else is -32602 with the request's id."""
    rid = cp.enqueue({"jsonrpc": "2.0", "id": 41, "method": "tools/list", "params": params}, headers=LEGACY)
    payload = await cp.answer(rid)
    if expected == 200:
        assert payload["resp_code"] == 200
        assert isinstance(payload["resp_json"]["result"]["tools"], list)
    else:
        assert error_of(payload) == (400, expected, 41)


async def test_params_of_any_shape_reach_no_crash_on_the_way_to_a_server(cp: ScriptedControlPlane) -> None:
    """Found by the live fuzzer: a `_meta` that is not an object next to a `progressToken` crashed the
    stdio progress-token rewrite (answered only by the safety net, with a traceback), and array
    params went to the server, which drops them unanswered (MCP 2025-11-25 basic/index: params is
    an object). Now: -32602 for array params, and the server's own answer for the odd `_meta`."""
    modern = {"Mcp-Protocol-Version": ["2026-07-28"]}
    odd_meta = cp.enqueue(
        {"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"_meta": ["progressToken"]}}, headers=modern
    )
    array = cp.enqueue({"jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": [1]}, headers=modern)
    odd, refused = await cp.answers([odd_meta, array])
    assert odd["resp_json"]["id"] == 5
    assert error_of(refused) == (400, -32602, 6)


# --------------------------------------------------------------------------- 4, 5: response_timeout


@pytest.mark.parametrize("value", [5, 1.5, True, ["30s"], {"s": 1}])
async def test_a_non_string_response_timeout_means_no_deadline(cp: ScriptedControlPlane, value: Any) -> None:
    """Defect 4: a number, boolean, list or object `response_timeout` dropped the command unanswered;
    the contract says a malformed value means no deadline."""
    rid = cp.enqueue(ping("t"), headers=LEGACY, extra={"response_timeout": value}, contract=False)
    assert (await cp.answer(rid))["resp_json"] == {"jsonrpc": "2.0", "id": "t", "result": {}}


async def test_sub_millisecond_deadlines_have_passed_on_arrival(cp: ScriptedControlPlane) -> None:
    """Defect 5: `1ns`, `100ns`, `1us` (and `999us`) deadlines were not treated as expired, so
    frames were posted for them. Commands the gateway answers locally show it: no I/O to wait on."""
    values = ("1ns", "100ns", "1us", "999us")
    expired = [cp.enqueue(ping(v), headers=LEGACY, response_timeout=v) for v in values]
    expired += [cp.enqueue(None, response_timeout=v, contract=False) for v in values]  # no jsonrpc: a local 400
    alive = cp.enqueue(ping("alive"), headers=LEGACY, response_timeout="30s")
    await cp.answers([cp.enqueue(ping(n), headers=LEGACY) for n in range(len(expired))])  # warm response connections
    cp.force_batch = len(expired) + 1
    await cp.answer(alive)
    polls = len(cp.polls)
    await cp.polls_after(polls, 2)
    assert {r: cp.attempts(r) for r in expired} == {r: [] for r in expired}


class FrozenClockLoop(asyncio.SelectorEventLoop):
    """A loop whose clock stands still, like uvloop's millisecond clock within one tick."""

    def time(self) -> float:
        return 1000.0


class RecordingResponder:
    """Our `Responder`: records each frame as it is posted (a pooled connection writes at once)."""

    def __init__(self) -> None:
        self.posted: list[bytes] = []

    async def post(self, body: bytes, shard_token: str, *, terminal: bool) -> bool:
        self.posted.append(body)
        return True


async def test_a_deadline_inside_one_clock_tick_has_passed() -> None:
    """Defect 5 at its cause: with a clock that counts milliseconds (uvloop's), a `1ns` deadline
    received in the current tick compared as not passed, so the command ran and posted a frame."""

    async def run() -> list[bytes]:
        responder = RecordingResponder()
        dispatcher = Dispatcher({}, responder, Codec(), 8)
        received = asyncio.get_running_loop().time()
        for n, value in enumerate(("1ns", "100ns", "1us", "999us", "1ms", "2ms")):
            dispatcher.submit(PolledCommand(request_id=f"r{n}", shard_token="s", response_timeout=value), received)
        await dispatcher.drain(5.0)
        return responder.posted

    def on_frozen_loop() -> list[bytes]:
        loop = FrozenClockLoop()
        try:
            return loop.run_until_complete(run())
        finally:
            loop.close()

    posted = await asyncio.to_thread(on_frozen_loop)  # its own loop, in a thread of its own
    assert [json.loads(body)["request_id"] for body in posted] == ["r4", "r5"]


# --------------------------------------------------------------------------- 1: the poll loop is supervised


class FakeControlPlane:
    """Our `ControlPlane` poll interface: one command per poll, then nothing for a moment."""

    def __init__(self) -> None:
        self.polls = 0
        self.last_poll_ok: float | None = None
        self.problem: str | None = None

    async def metadata(self) -> TunnelClientMetadata:
        return TunnelClientMetadata(id="t", name="fake", description="")

    async def poll(self, limit: int, timeout_ms: int) -> tuple[float, list[Any]]:
        self.polls += 1
        await asyncio.sleep(0)
        self.last_poll_ok = asyncio.get_running_loop().time()
        raw = json.dumps({"request_id": f"r{self.polls}", "shard_token": "s"}).encode()
        return self.last_poll_ok, [raw]

    def credentials_rejected(self) -> None:
        raise AssertionError("not expected")


@dataclass
class FailingSink:
    """Our `CommandSink`: refuses its first `failures` commands with an unexpected error."""

    failures: int
    submitted: list[str] = field(default_factory=list)
    free: int = 10

    async def wait_capacity(self, reserved: int) -> None:
        return None

    def capacity_changed(self) -> None:
        return None

    def submit(self, command: PolledCommand, received_at: float) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a bug below the poll loop")
        self.submitted.append(command.request_id)


@dataclass
class _Runtime:
    control_plane: FakeControlPlane
    poller: Poller
    config: routing_config.RoutingConfig = field(
        default_factory=lambda: routing_config.parse(b"servers: {a: {stdio: {command: x}}}\nchannels: {c: [a]}\n", "r")
    )
    upstreams: dict[str, Any] = field(default_factory=dict)


async def test_no_exception_ends_the_poll_loop_and_readyz_shows_it(caplog: pytest.LogCaptureFixture) -> None:
    """Defect 1 at its root: any exception below the poll loop ended it silently. Now the loop logs
    once, reports the fault on `/readyz`, backs off and polls again; the fault clears after a clean poll."""
    cp, sink = FakeControlPlane(), FailingSink(failures=3)
    poller = Poller(cp, sink, Codec(), 1000)  # type: ignore[arg-type]
    readiness = Readiness(max_poll_age_s=60)
    readiness.runtime = _Runtime(cp, poller)  # type: ignore[assignment]
    faults: list[str | None] = []
    with caplog.at_level(logging.ERROR, logger="gateway.tunnel"):
        task = asyncio.create_task(poller.run())
        try:
            while not sink.submitted:
                await asyncio.sleep(0.01)
                faults.append(readiness.report()[1]["checks"]["control_plane"] if poller.fault else None)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert cp.polls >= 4
    assert sink.submitted[0] == "r4"  # the first three polls' commands met the bug
    assert any(f and "poll loop failed (RuntimeError)" in f for f in faults)
    assert poller.fault is None
    assert len([r for r in caplog.records if "poll loop failed" in r.getMessage()]) == 1


async def test_readiness_fails_while_the_poll_loop_backs_off() -> None:
    cp = FakeControlPlane()
    cp.last_poll_ok = 0.0
    poller = Poller(cp, FailingSink(0), Codec(), 1000)  # type: ignore[arg-type]
    readiness = Readiness(max_poll_age_s=60, clock=lambda: 1.0)
    readiness.runtime = _Runtime(cp, poller)  # type: ignore[assignment]
    assert readiness.report()[0]
    poller.fault = "the poll loop failed (RecursionError); retrying"
    ready, body = readiness.report()
    assert not ready
    assert body["not_ready"] == ["control_plane"]
    assert body["checks"]["control_plane"] == poller.fault


# --------------------------------------------------------------------------- 7, 10: the relay


@pytest_asyncio.fixture(loop_scope="module")
async def relay() -> AsyncIterator[tuple[Relay, int]]:
    async with Relay(relay_config(read_timeout_s=0.5)) as relay:
        yield relay, int(relay.url.rsplit(":", 1)[1])


async def exchange(port: int, data: bytes) -> int:
    async with connection(port) as (reader, writer):
        writer.write(data)
        return (await read_response(reader)).status


async def test_relay_answers_deep_json_400_without_a_traceback(
    relay: tuple[Relay, int], caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 7: a body nested 1,000 levels was a 500 with a logged traceback; it is a parse error.
    JSON-RPC 2.0 §5.1: -32700 for a body that is not valid JSON."""
    _, port = relay
    deep = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":%s}}' % DEEP
    mcp = f"/v1/mcp/{TUNNEL}"
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    with caplog.at_level(logging.DEBUG):
        async with connection(port) as (reader, writer):
            writer.write(request("POST", mcp, body=deep, headers=headers))
            answer = await read_response(reader)
            assert answer.status == 400
            assert json.loads(answer.body)["error"]["code"] == -32700
            writer.write(
                request(
                    "POST",
                    f"/v1/tunnels/{TUNNEL}/response",
                    body=deep,
                    headers={**GATEWAY, "X-Tunnel-Shard-Token": "s"},
                )
            )
            answer = await read_response(reader)
            assert (answer.status, json.loads(answer.body)["error"]["code"]) == (400, "invalid_json_payload")
            info = '{"version":1,"channels":' + "[" * 1500 + "]" * 1500 + "}"
            writer.write(
                request(
                    "GET",
                    f"/v1/tunnels/{TUNNEL}/poll?timeout_ms=1",
                    headers={**GATEWAY, "X-Tunnel-MCP-Server-Info": info},
                )
            )
            assert (await read_response(reader)).status == 204
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/mcp/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
    ],
)
async def test_malformed_http_is_400_and_logs_no_error(
    relay: tuple[Relay, int], caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    """Defect 7: every malformed request logged an ERROR traceback (a log-flooding lever)."""
    with caplog.at_level(logging.DEBUG):
        assert await exchange(relay[1], data) == 400
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


async def test_incomplete_requests_are_not_held(relay: tuple[Relay, int]) -> None:
    """Defect 7: a request whose headers or body never finish was held with no read timeout.
    The relay (read_timeout_s 0.5 here) closes a connection stuck in its headers and answers 408
    to a body that stops short. (The 30 s bound only guards a regression: it is not a speed check.)"""
    _, port = relay
    async with asyncio.timeout(30), connection(port) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        with pytest.raises(Closed):
            await read_response(reader)
    async with asyncio.timeout(30), connection(port) as (reader, writer):
        shard = {**GATEWAY, "X-Tunnel-Shard-Token": "s"}
        writer.write(request("POST", f"/v1/tunnels/{TUNNEL}/response", body=b"x" * 100, headers=shard)[:-90])
        answer = await read_response(reader)
    assert (answer.status, json.loads(answer.body)["error"]["code"]) == (408, "request_timeout")


async def test_unknown_and_known_tunnels_look_alike_without_a_key(relay: tuple[Relay, int]) -> None:
    """Defect 10: without a key an unknown tunnel answered 404 and a known one 401 (enumeration)."""
    _, port = relay
    answers = []
    for tunnel in (TUNNEL, "tunnel_nope"):
        for path in ("", "/poll", "/response"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}"}):
                if tunnel == TUNNEL and headers.get("Authorization") == f"Bearer {KEY}":
                    continue
                method = "POST" if path == "/response" else "GET"
                async with connection(port) as (reader, writer):
                    writer.write(request(method, f"/v1/tunnels/{tunnel}{path}", headers=headers))
                    answer = await read_response(reader)
                answers.append((answer.status, answer.body))
    assert {status for status, _ in answers} == {401}
    assert len({body for _, body in answers}) == 1


# --------------------------------------------------------------------------- 9: secrets in output


@pytest.mark.parametrize(
    "url",
    ["ftp://user:SECRET-pw-1@host/x", "http://user:SECRET-pw-1@[::1", "SECRET-pw-1@nothing", "http://:SECRET-pw-1@/"],
)
async def test_url_errors_do_not_echo_a_password(url: str) -> None:
    """Defect 9: `expected an absolute http(s) URL (got 'ftp://user:SECRET@…')`."""
    for document in (
        {"servers": {"a": {"http": {"url": url}}}, "channels": {"c": ["a"]}},
        {"servers": {"a": {"stdio": {"command": "x"}}}, "channels": {"c": ["a"]}, "telemetry": {"endpoint": url}},
        {"servers": {"a": {"http": {"url": "http://h/", "proxy": url}}}, "channels": {"c": ["a"]}},
    ):
        with pytest.raises(ConfigError) as caught:
            routing_config.parse(json.dumps(document).encode(), "routing.yaml")
        assert "SECRET" not in str(caught.value)
        assert "URL" in caught.value.expected


async def test_the_embedded_relay_never_prints_a_configured_client_token(tmp_path: Path) -> None:
    """Defect 9: the embedded relay printed its client token on stdout (journals keep it)."""
    token = "SECRET-client-token-0042"
    document = {
        "servers": {"main": stdio()},
        "channels": {"main": ["main"]},
        "relay": {"listen": "127.0.0.1:0", "client_token": "env:MCP_CLIENT_TOKEN"},
    }
    async with run_gateway(json.dumps(document), tmp_path, env=gateway_env(MCP_CLIENT_TOKEN=token)) as gw:
        await gw.wait_for(r"^clients send: Authorization: Bearer <")
    assert not [line for line in gw.stdout + gw.stderr if token in line]
