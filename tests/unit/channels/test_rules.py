"""gateway.channels.rules with plain calls: the first matching rule decides (deny, `to:`, `limit_key`), and which
channels the rules reshape."""

from __future__ import annotations

import msgspec

from gateway.channels.rules import Router
from gateway.config import routing as config


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
