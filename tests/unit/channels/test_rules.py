"""gateway.channels.rules with plain calls: the first matching rule decides (deny, `to:`, `limit_key`), which
channels the rules reshape or can match, and a one-server channel's decisions by them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
from msgspec import UNSET, Raw

from gateway.channels.channel import Channel
from gateway.channels.rules import Allowed, Route, Router
from gateway.channels.sessions import SessionKeys, SessionStore
from gateway.config import routing as config
from gateway.protocol.eras import Bridge
from gateway.protocol.mcp import Call, Frame, Reply
from gateway.protocol.wire import Codec, Headers, JsonRpcMessage
from gateway.upstream.base import Upstream


def _router(yaml: str) -> Router:
    routes = msgspec.yaml.decode(yaml, type=list[config.RouteSpec])
    return Router(routes)


RULES = """
- match: {channel: main, name: "*__crash"}
  deny: no crashing
- match: {channel: [main, other], method: tools/call, name: "s1__echo", headers: {X-Tenant: "beta*"}}
  to: s2
  limit_key: beta
- match: {method: "prompts/*"}
  limit_key: prompts
- match: {headers: {x-blocked: "?*"}}
  deny: blocked
"""


def test_first_matching_rule_wins() -> None:
    router = _router(RULES)
    assert router.decide("main", "tools/call", "s1__crash", {}).deny == "no crashing"
    assert router.decide("other", "tools/call", "s1__crash", {}).deny is None  # not that channel
    beta = router.decide("main", "tools/call", "s1__echo", {"x-tenant": ["beta-7"]})
    assert (beta.rule, beta.to, beta.limit_key, beta.deny) == (1, "s2", "beta", None)
    assert router.decide("main", "tools/call", "s1__echo", {"X-TENANT": ["alpha"]}).rule is None
    assert router.decide("main", "tools/call", "s1__echo", {"X-Tenant": ["alpha", "beta"]}).to == "s2"
    assert router.decide("x", "prompts/get", "greet", {}).limit_key == "prompts"
    assert router.decide("x", "tools/list", None, {"x-blocked": ["1"]}).deny == "blocked"
    assert router.decide("x", "tools/list", None, {"x-blocked": [""]}).deny is None
    nothing = router.decide("x", "tools/list", None, {})
    assert (nothing.rule, nothing.to, nothing.deny, nothing.limit_key) == (None, None, None, None)


def test_rules_tell_which_channels_they_reshape() -> None:
    router = _router(RULES)
    assert router.reshapes("main")
    assert router.reshapes("anything")
    assert router.targets("main") == ["s2"]
    assert router.targets("third") == []
    assert router.filters("main")
    assert not _router("- {match: {name: x}, limit_key: k}").reshapes("main")


def test_rules_tell_which_channels_they_can_match() -> None:
    router = _router(RULES)
    assert router.concerns("anything")  # the prompts rule names no channel
    scoped = _router("- {match: {channel: [main, other], name: x}, limit_key: k}")
    assert scoped.concerns("main")
    assert scoped.concerns("other")
    assert not scoped.concerns("third")
    assert not Router().concerns("main")
    listed = Router(allowed=Allowed.compile({"main": ["a*"]}, {}, None))
    assert listed.concerns("main")
    assert not listed.concerns("other")
    assert Router(allowed=Allowed.compile({}, {"acme": ["a*"]}, "x-tenant")).concerns("other")  # tenants: every channel


def test_a_one_server_channel_routes_by_its_rules_only() -> None:
    """The channel's decision names its server; a rule for another channel leaves it NO_ROUTE's, and one
    for this channel (or for every channel) decides as it would on its own."""
    rules = """
- {match: {channel: other, name: add}, limit_key: other-adds}
- {match: {channel: main, name: add}, limit_key: adds}
- {match: {method: "prompts/*"}, limit_key: prompts}
"""
    codec = Codec()

    def route(channel: str, method: str, params: bytes | None) -> Route:
        served = Channel(
            channel,
            _Named("s1"),
            Bridge(codec),
            SessionStore(SessionKeys.random(), channel, ttl_s=60),
            router=_router(rules),
        )
        message = JsonRpcMessage(method=method, id=1, params=Raw(params) if params is not None else UNSET)
        return served.route(message, {})

    assert route("main", "tools/call", b'{"name":"add"}') == Route(rule=1, limit_key="adds", server="s1")
    assert route("main", "tools/call", b'{"name":"sub"}') == Route(server="s1")
    assert route("third", "tools/call", b'{"name":"add"}') == Route(server="s1")
    assert route("third", "prompts/get", b'{"name":"greet"}') == Route(rule=2, limit_key="prompts", server="s1")
    answer = JsonRpcMessage(id=1, result=Raw(b"{}"))
    plain = Channel("main", _Named("s1"), Bridge(codec), SessionStore(SessionKeys.random(), "main", ttl_s=60))
    assert plain.route(answer, {}) == Route(server="s1")
    assert plain.route(JsonRpcMessage(method="tools/call", id=1, params=Raw(b'{"name":"add"}')), {}) == Route(
        server="s1"
    )


class _Named(Upstream):
    """An upstream known by name only: routing never calls it."""

    transport = "stdio"

    async def start(self) -> None:
        raise AssertionError("routing starts nothing")

    async def close(self) -> None:
        raise AssertionError("routing closes nothing")

    def exchange(self, call: Call) -> AsyncIterator[Frame]:
        raise AssertionError("routing calls no server")

    async def respond(self, message: JsonRpcMessage, headers: Headers, own_session: bool) -> Reply:
        raise AssertionError("routing calls no server")

    async def end_session(self, headers: Headers) -> Reply:
        raise AssertionError("routing calls no server")
