"""`front.forwarded_headers` in one pass gives what its definition gives: the caller's headers grouped by
name (first spelling kept, values in order), then `wire.strip_hop_by_hop`, then minus `Authorization` when
it held the relay's credential, then minus the `drop` header. Property-tested against that definition, on
aiohttp's request (a multidict) and on the lean server's `Head` (its header lines as sent) alike."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.wire import Headers, strip_hop_by_hop
from gateway.relay.exchange import Head
from gateway.relay.front import forwarded_headers
from tests.support.fuzz_budget import FUZZ
from tests.support.relay_harness import HeadOf


def _definition(fields: list[tuple[str, str]], drop_authorization: bool, drop: str | None) -> Headers:
    grouped: Headers = {}
    spelling: dict[str, str] = {}
    for name, value in fields:
        key = spelling.setdefault(name.lower(), name)
        grouped.setdefault(key, []).append(value)
    out = strip_hop_by_hop(grouped)
    if drop_authorization:
        out = {name: values for name, values in out.items() if name.lower() != "authorization"}
    if drop is not None:
        out = {name: values for name, values in out.items() if name.lower() != drop.lower()}
    return out


_NAMES = st.sampled_from(
    [
        "Accept",
        "accept",
        "Mcp-Session-Id",
        "MCP-SESSION-ID",
        "Authorization",
        "authorization",
        "X-Client-Token",
        "x-client-token",
        "Connection",
        "connection",
        "Keep-Alive",
        "Host",
        "Content-Length",
        "TE",
        "Upgrade",
        "X-Custom",
        "x-custom",
        "Proxy-Connection",
    ]
)
_VALUES = st.sampled_from(
    ["a", "b, c", "keep-alive", "Keep-Alive", "Upgrade", "X-Custom", "x-custom, Accept", " close ", "Bearer t", ""]
)


@FUZZ
@given(
    st.lists(st.tuples(_NAMES, _VALUES), max_size=12),
    st.booleans(),
    st.none() | st.sampled_from(["X-Client-Token", "x-client-token", "Accept"]),
)
def test_one_pass_equals_the_definition(
    fields: list[tuple[str, str]], drop_authorization: bool, drop: str | None
) -> None:
    want = _definition(fields, drop_authorization, drop)
    # aiohttp's request (a multidict's `istr` names) and the lean server's head (its lines as sent)
    for head in (HeadOf(fields), Head("POST", "/v1/mcp/t", "", list(fields), {})):
        got = forwarded_headers(head, drop_authorization=drop_authorization, drop=drop)
        assert got == want
        assert list(got) == list(want), "names in the order the caller first sent them"
        assert all(type(name) is str for name in got)


def test_connection_names_what_else_is_dropped() -> None:
    fields = [("Connection", "X-Custom, keep-alive"), ("X-Custom", "1"), ("Accept", "a"), ("accept", "b")]
    assert forwarded_headers(HeadOf(fields), drop_authorization=False) == {"Accept": ["a", "b"]}
    # a second Connection line naming a header, after one that names only hop-by-hop ones
    fields = [("Connection", "keep-alive"), ("Connection", "X-Custom"), ("X-Custom", "1"), ("Accept", "a")]
    for head in (HeadOf(fields), Head("POST", "/v1/mcp/t", "", fields, {})):
        assert forwarded_headers(head, drop_authorization=False) == {"Accept": ["a"]}
