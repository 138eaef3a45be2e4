"""What the relay remembers per value gives what computing it gives: `HostGuard.host_allowed` per `Host`
value (past its bound too), the front door's `accepts_sse` per single `Accept` value (several `Accept`
headers are judged together, never from one remembered value), the lean server's rendered answer heads,
its request and header line readings (none of a line that carries a credential or a session id), and the
enqueue times rendered once a millisecond."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.wire import Codec
from gateway.relay import build_relay_app
from gateway.relay.app import LEAN
from gateway.relay.exchange import Reply
from gateway.relay.front import FrontDoor, accepts_sse
from gateway.relay.guard import HOSTS_KEPT, HostGuard, host_name
from gateway.relay.lean_http import LINE_KEPT_MAX, LINES_KEPT, LeanServer, _head
from gateway.relay.queue import MemoryQueue, Stamps, rfc3339_ms
from gateway.relay.settings import LiveSettings, build_settings
from tests.support.fuzz_budget import FUZZ
from tests.support.relay_harness import RFC3339_UTC, HeadOf, relay_config

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


def _lean_server() -> LeanServer:
    config = relay_config()
    return build_relay_app(config, backend=MemoryQueue(config.tunnels, queue_max=1, client_seen_grace_s=1))[LEAN]


def _read(server: LeanServer, lines: list[str]) -> object:
    """What `read_head` makes of a head, in plain values (a Head's multidict and mapping as lists)."""
    read = server.read_head(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape"))
    if read is None:
        return None
    kind, head, keep_alive, length = read
    headers = list(head.headers.items())
    return kind, head.method, head.path, head._query_string, headers, dict(head.match_info), keep_alive, length


_REQUEST_LINES = st.sampled_from(
    [
        "POST /v1/mcp/t1 HTTP/1.1",
        "POST /v1/mcp/t1/docs HTTP/1.1",
        "GET /v1/tunnels/t1/poll?limit=25&timeout_ms=30000 HTTP/1.1",
        "POST /v1/tunnels/t1/response HTTP/1.1",
        "GET /v1/mcp/t1 HTTP/1.1",
        "POST /v1/mcp/t1#x HTTP/1.1",
        "POST /v1/mcp/%74 HTTP/1.1",
        "POST /v1/mcp/t1 HTTP/1.0",
        "POST  /v1/mcp/t1 HTTP/1.1",
    ]
)
_HEADER_LINES = st.sampled_from(
    [
        "Host: 127.0.0.1",
        "Host:127.0.0.1 ",
        "Accept: application/json, text/event-stream",
        "Content-Type: application/json",
        "Content-Length: 2",
        "content-length: 0",
        "Content-Length:  17 ",
        "Content-Length: 1x",
        "Transfer-Encoding: chunked",
        "Expect: 100-continue",
        "Connection: close",
        "Connection: keep-alive",
        "Authorization: Bearer gateway-key",
        "Mcp-Session-Id: s-1",
        "X-Tunnel-Shard-Token: shard",
        "User-Agent: probe/1",
        " folded",
    ]
)


@FUZZ
@given(st.lists(st.tuples(_REQUEST_LINES, st.lists(_HEADER_LINES | st.text(max_size=20), max_size=8)), max_size=12))
def test_kept_line_readings_give_the_heads_a_fresh_reading_gives(heads: list[tuple[str, list[str]]]) -> None:
    """`LeanServer.read_head` with the request and header lines of earlier heads remembered reads every
    head as a server that never saw a line before (repeated Content-Length, obs-fold, chunked, the routes
    aiohttp keeps all included)."""
    warm = _lean_server()
    for request_line, header_lines in heads + heads:
        lines = [request_line, *header_lines]
        assert _read(warm, lines) == _read(_lean_server(), lines)


def test_kept_lines_hold_no_credential_and_stay_bounded() -> None:
    server = _lean_server()
    secret_lines = [
        "Authorization: Bearer gateway-key",
        "Mcp-Session-Id: s-secret",
        "X-Tunnel-Shard-Token: shard-secret",
        "X-Client-Token: client-secret",
        "Cookie: a=b",
    ]
    lines = ["POST /v1/mcp/t1 HTTP/1.1", "Host: 127.0.0.1", "Content-Length: 0", *secret_lines]
    first = server.read_head(("\r\n".join(lines) + "\r\n\r\n").encode())
    second = server.read_head(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert first is not None
    assert second is not None
    assert second[1].match_info is not first[1].match_info  # each request has its own path parameters
    kept = set(server.fields)
    assert {"Host: 127.0.0.1", "Content-Length: 0"} <= kept
    assert not kept & set(secret_lines)
    assert not any("secret" in line or "gateway-key" in line for line in kept)
    server.read_head(f"POST /v1/mcp/t1 HTTP/1.1\r\nUser-Agent: {'u' * LINE_KEPT_MAX}\r\n\r\n".encode())
    assert all(len(line) <= LINE_KEPT_MAX for line in server.fields)  # a long line is read, not kept
    for index in range(LINES_KEPT * 2 + 3):
        server.read_head(f"POST /v1/mcp/t1 HTTP/1.1\r\nUser-Agent: agent-{index}\r\n\r\n".encode())
        assert len(server.fields) <= LINES_KEPT
        assert len(server.targets) <= LINES_KEPT


@FUZZ
@given(st.integers(min_value=0, max_value=253_402_300_799_999))  # through 9999-12-31T23:59:59.999Z
def test_enqueue_times_render_as_rfc3339_utc_milliseconds(ms: int) -> None:
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)  # exact: no float seconds
    expected = at.isoformat(timespec="milliseconds")[:-6] + "Z"
    assert rfc3339_ms(ms) == expected


def test_enqueue_times_keep_their_second_across_milliseconds_and_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Stamps` renders a second's part once: every stamp still reads as `rfc3339_ms` of the clock,
    across a second's, a day's and a year's end, and when the clock steps back."""
    clock = [1_798_761_599_998, 1_798_761_599_999, 1_798_761_600_000, 1_798_761_600_001, 1_798_761_599_500, 5]
    ticks = iter(clock)
    monkeypatch.setattr(time, "time_ns", lambda: next(ticks) * 1_000_000)
    stamps = Stamps()
    assert [stamps.now() for _ in clock] == [rfc3339_ms(ms) for ms in clock]


def test_enqueue_times_are_rendered_once_a_millisecond_and_follow_the_clock() -> None:
    stamps = Stamps()
    seen = [stamps.now() for _ in range(2000)]
    assert all(RFC3339_UTC.fullmatch(stamp) for stamp in seen)
    assert seen == sorted(seen)
    assert len({id(stamp) for stamp in seen}) == len(set(seen))  # one rendering per millisecond seen
