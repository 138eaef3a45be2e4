"""The relay's remembered per-value verdicts give what computing them gives: `HostGuard.host_allowed` per
`Host` value (past its bound too), and the front door's `accepts_sse` per single `Accept` value (several
`Accept` headers are judged together, never from one remembered value)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.wire import Codec
from gateway.relay.front import FrontDoor, accepts_sse
from gateway.relay.guard import HOSTS_KEPT, HostGuard, host_name
from gateway.relay.queue import MemoryQueue
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
    front = FrontDoor(config, {}, MemoryQueue(config.tunnels, queue_max=1, client_seen_grace_s=1), Codec())
    for values in requests + requests:
        head = HeadOf([("Accept", value) for value in values])
        assert front._accepts_sse(head) == accepts_sse(head)
