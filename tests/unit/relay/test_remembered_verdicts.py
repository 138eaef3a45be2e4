"""What the relay remembers per value gives what computing it gives: `HostGuard.host_allowed` per `Host`
value (past its bound too), the front door's `accepts_sse` per single `Accept` value (several `Accept`
headers are judged together, never from one remembered value), and the lean server's rendered answer heads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.wire import Codec
from gateway.relay import build_relay_app
from gateway.relay.app import LEAN
from gateway.relay.exchange import Reply
from gateway.relay.front import FrontDoor, accepts_sse
from gateway.relay.guard import HOSTS_KEPT, HostGuard, host_name
from gateway.relay.lean_http import _head
from gateway.relay.queue import MemoryQueue
from gateway.relay.settings import LiveSettings, build_settings
from tests.support.fuzz_budget import FUZZ
from tests.support.relay_harness import HeadOf, relay_config

_HOSTS = st.sampled_from(["relay.example", "RELAY.example:443", "[::1]:8780", "evil.example", " relay.example ", ""])


@FUZZ
@given(st.lists(_HOSTS | st.text(max_size=12), max_size=30))
def test_host_verdicts_are_the_computed_ones(hosts: list[str]) -> None:
    guard = HostGuard(["relay.example", "[::1]"], [])
    for host in hosts + hosts:  # every value twice: the second answer is the remembered one
        assert guard.host_allowed(host) == (host_name(host) in {"relay.example", "[::1]"})


def test_host_verdicts_past_the_bound() -> None:
    guard = HostGuard(["relay.example"], [])
    for index in range(HOSTS_KEPT * 2 + 3):
        assert not guard.host_allowed(f"other-{index}.example")
        assert guard.host_allowed("relay.example:8080")
    assert guard.host_allowed(None) is False


_ACCEPTS = st.sampled_from(
    ["application/json", "application/json, text/event-stream", "TEXT/EVENT-STREAM;q=0.5", "*/*", "", "text/html"]
)


@FUZZ
@given(st.lists(st.lists(_ACCEPTS, max_size=3), max_size=12))
def test_sse_verdicts_are_the_computed_ones(requests: list[list[str]]) -> None:
    config = relay_config()
    queue = MemoryQueue(config.tunnels, queue_max=1, client_seen_grace_s=1)
    front = FrontDoor(LiveSettings(build_settings(config)), queue, Codec())
    for values in requests + requests:
        head = HeadOf([("Accept", value) for value in values])
        assert front._accepts_sse(head) == accepts_sse(head)


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def test_answer_heads_are_rendered_as_before_and_told_apart() -> None:
    """`LeanServer.heads` keeps each rendered head: the bytes are `_head`'s, a closing answer is never
    given a kept-alive one's head (or the reverse), and a head that would split is refused, not kept."""
    config = relay_config()
    server = build_relay_app(config, backend=MemoryQueue(config.tunnels, queue_max=1, client_seen_grace_s=1))[LEAN]
    connection = server()
    transport = _Transport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    json_headers = [("Content-Type", "application/json"), ("Mcp-Session-Id", "s-1")]
    for close in (False, True, False, True):
        assert connection._write_reply(Reply(200, b"{}", list(json_headers)), close) is close
        head = transport.out.pop().split(b"\r\n\r\n")[0] + b"\r\n"
        assert head.startswith(_head(200, json_headers, close)[0])
        assert (b"Connection: close\r\n" in head) is close
    assert len(server.heads) == 2
    with pytest.raises(ValueError, match="line break"):
        connection._write_reply(Reply(200, b"{}", [("Mcp-Session-Id", "s\r\nX: y")]), False)
    assert len(server.heads) == 2
    assert transport.out == []
