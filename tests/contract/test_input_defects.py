"""Regression tests for the input defects of issue 14 on the gateway side, each reproduced the way the campaign
found it: the real gateway process polls `ScriptedControlPlane` (its `main` channel is the SDK test server over
stdio, a 2026-07-28 server, so handshake-era requests are bridged).

The same defects at their root, with plain calls: unit/dispatch/test_dispatcher.py, unit/tunnel/test_poller.py;
on the relay side: unit/relay/test_input_defects.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio

from tests.support.gateway_process import GatewayProcess, cli_args, routes, run_gateway, stdio
from tests.support.scripted_cp import ScriptedControlPlane

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
