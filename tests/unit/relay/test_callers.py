"""Whose budget a token request spends behind trusted proxies (gateway/relay/callers.py): the walk of
`X-Forwarded-For` (the de facto format RFC 7239 section 1 describes: comma-separated addresses, each
proxy appending the one it heard from) from the right, over the proxies `identity.trusted_proxies` names.

Plain calls: the walk is sans-IO. The relay using it is in test_token_rate.py.
"""

from __future__ import annotations

import pytest

from gateway.relay.callers import TrustedProxies, caller_key

INGRESS = TrustedProxies(["10.0.0.0/8", "192.0.2.10", "2001:db8:1::/48"])
"""An ingress network, one load balancer's address, an IPv6 ingress network."""


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "caller"),
    [
        pytest.param("10.0.0.2", ["203.0.113.7"], "203.0.113.7", id="one hop"),
        pytest.param("10.0.0.2", ["203.0.113.7, 10.0.0.9"], "203.0.113.7", id="a chain of trusted hops"),
        pytest.param("192.0.2.10", ["203.0.113.7,10.1.2.3 ,  10.0.0.9"], "203.0.113.7", id="spacing"),
        pytest.param("10.0.0.2", ["203.0.113.7", "10.0.0.9"], "203.0.113.7", id="the header sent twice"),
        pytest.param("10.0.0.2", ["198.51.100.1, 10.0.0.5, 203.0.113.7"], "203.0.113.7", id="spoofed left entries"),
        pytest.param("10.0.0.2", ["10.0.0.5, 10.0.0.6"], "10.0.0.5", id="every hop trusted: the left-most"),
        pytest.param("10.0.0.2", [], "10.0.0.2", id="no header: the peer"),
        pytest.param("203.0.113.50", ["198.51.100.1"], "203.0.113.50", id="an untrusted peer's header is ignored"),
        pytest.param("192.0.2.11", ["198.51.100.1"], "192.0.2.11", id="next to a trusted address"),
        pytest.param("::ffff:10.0.0.2", ["203.0.113.7"], "203.0.113.7", id="an IPv4-mapped trusted peer"),
        pytest.param("10.0.0.2", ["::ffff:203.0.113.7"], "203.0.113.7", id="an IPv4-mapped caller"),
        pytest.param("2001:db8:1::5", ["2001:db8:ff::1, 2001:db8:1::9"], "2001:db8:ff::1", id="IPv6"),
        pytest.param("2001:db8:2::5", ["2001:db8:ff::1"], "2001:db8:2::5", id="IPv6 untrusted peer"),
    ],
)
def test_the_caller_is_the_right_most_address_no_trusted_proxy_holds(
    peer: str, forwarded_for: list[str], caller: str
) -> None:
    assert INGRESS.caller(peer, forwarded_for) == caller


@pytest.mark.parametrize(
    "forwarded_for",
    [
        pytest.param(["203.0.113.7, not-an-address"], id="a name"),
        pytest.param(["203.0.113.7:4711"], id="a port"),
        pytest.param(["[2001:db8:ff::1]"], id="brackets"),
        pytest.param([""], id="an empty header"),
        pytest.param(["203.0.113.7, , 10.0.0.9"], id="an empty entry among trusted hops"),
        pytest.param(["unknown"], id="RFC 7239's obfuscated `unknown`"),
    ],
)
def test_an_entry_that_is_not_an_address_ends_the_walk_at_the_peer(forwarded_for: list[str]) -> None:
    assert INGRESS.caller("10.0.0.2", forwarded_for) == "10.0.0.2"


def test_garbage_left_of_the_caller_is_never_reached() -> None:
    assert INGRESS.caller("10.0.0.2", ["garbage, 203.0.113.7, 10.0.0.9"]) == "203.0.113.7"


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    nobody = TrustedProxies([])
    assert nobody.caller("10.0.0.2", ["203.0.113.7"]) == "10.0.0.2"
    assert nobody.caller(None, ["203.0.113.7"]) is None
    assert INGRESS.caller(None, ["203.0.113.7"]) is None  # no peer (a Unix socket): nothing vouches for it
    assert INGRESS.caller("not-an-address", ["203.0.113.7"]) == "not-an-address"


def test_the_forwarded_caller_keeps_caller_keys_normal_form() -> None:
    """The key of a forwarded caller is made as a peer's is: IPv4-mapped as IPv4, IPv6 by its /64."""
    assert caller_key(INGRESS.caller("10.0.0.2", ["2001:db8:ff:7::1"])) == "2001:db8:ff:7::/64"
    assert caller_key(INGRESS.caller("10.0.0.2", ["2001:db8:ff:7:ab::9"])) == "2001:db8:ff:7::/64"
    assert caller_key(INGRESS.caller("10.0.0.2", ["::ffff:203.0.113.7"])) == "203.0.113.7"
