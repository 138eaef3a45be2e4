"""`request_timeout_s`: a server's upper bound for one call, end to end over stdio.

A call that runs past it is answered with the tunnel contract's synthesized `-32603` and a
`timeout` failure; the shared process keeps serving (its JSON-RPC id is retired, the server
told `notifications/cancelled`, a late answer discarded). A command's own earlier deadline
still wins: it is abandoned without an answer. (The HTTP transport's abort is checked in
`tests/unit/upstream/test_http_sdk.py`.)
"""

from __future__ import annotations

from pathlib import Path

from tests.support.cp_records import exactly_once, payload_text, tunnel_failure
from tests.support.gateway_process import cli_args, routes, run_gateway, stdio
from tests.support.scripted_cp import ScriptedControlPlane

TIMEOUT_FAILURE = {
    "version": 1,
    "source": "timeout",
    "transport_error_kind": "timeout",
    "upstream_response_received": False,
}


async def test_a_stdio_call_past_request_timeout_is_answered_with_a_timeout_and_the_process_keeps_serving(
    tmp_path: Path,
) -> None:
    """MCP 2025-11-25, Cancellation: the abandoned request is cancelled with `notifications/cancelled`
    and the server keeps serving others; the late answer is never delivered."""
    document = routes({"main": stdio(request_timeout_s=0.5)})
    async with (
        ScriptedControlPlane(hold_s=0.3) as cp,
        run_gateway(document, tmp_path, *cli_args(cp)) as gw,
    ):
        pid = payload_text(await cp.answer(cp.call("whoami")))
        slow = [cp.call("sleep_ms", {"ms": 30_000}) for _ in range(3)]
        later_deadline = cp.call("sleep_ms", {"ms": 30_000}, response_timeout="60s")
        own_deadline = cp.call("sleep_ms", {"ms": 30_000}, response_timeout="200ms")
        quick = [cp.call("echo", {"text": f"q{i}"}) for i in range(10)]

        for payload in await cp.answers([*slow, later_deadline]):
            assert payload["resp_code"] == 502
            assert payload["resp_json"]["error"]["message"] == "Bad Gateway"
            assert tunnel_failure(payload) == TIMEOUT_FAILURE
        assert [payload_text(p) for p in await cp.answers(quick)] == [f"q{i}" for i in range(10)]
        assert payload_text(await cp.answer(cp.call("whoami"))) == pid, "the timeout restarted the process"
        assert not cp.answered(own_deadline), "a command past its own deadline was answered"
        assert not [line for line in gw.stderr if "Traceback" in line]
        exactly_once(cp, [*slow, later_deadline, *quick])
