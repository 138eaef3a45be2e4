"""Tool allow-lists in gateway.channels.rules with plain calls: per channel and per tenant (the `tenant_header`
value, `*` for any other), checked before any routing rule, deciding a refusal exactly as a `deny` rule does."""

from __future__ import annotations

from gateway.channels.rules import NOT_ALLOWED, Allowed, Router
from gateway.config import routing as config

TENANT = "X-Tenant"


def _router(
    channels: dict[str, list[str] | None], tenants: dict[str, list[str] | None] | None = None, **routes: str
) -> Router:
    specs = [config.RouteSpec(match=config.RouteMatch(name=name), to=to) for name, to in routes.items()]
    return Router(specs, Allowed.compile(channels, tenants or {}, TENANT if tenants else None))


def test_a_channel_list_refuses_other_tools_like_a_deny_rule() -> None:
    router = _router({"main": ["echo", "db_*"]})
    assert router.decide("main", "tools/call", "echo", {}).deny is None
    assert router.decide("main", "tools/call", "db_query", {}).deny is None
    assert router.decide("main", "tools/call", "crash", {}) is NOT_ALLOWED
    assert router.decide("main", "tools/call", "echo_more", {}).deny is not None  # a glob matches the whole name
    assert router.decide("main", "tools/call", None, {}).deny is not None  # no name: not on the list
    assert router.decide("other", "tools/call", "crash", {}).deny is None  # only that channel
    assert router.decide("main", "prompts/get", "crash", {}).deny is None  # tools only
    assert router.reshapes("main")
    assert router.filters("main")
    assert not router.reshapes("other")
    assert not router.filters("other")


def test_the_allow_list_wins_over_a_to_rule() -> None:
    router = _router({"main": ["echo"]}, crash="s2")
    assert router.decide("main", "tools/call", "crash", {}).deny is not None
    assert router.decide("other", "tools/call", "crash", {}).to == "s2"


def test_tenant_lists_by_header_with_a_default_entry() -> None:
    router = _router({}, {"acme": ["echo", "add"], "*": ["echo"]})
    acme = {"x-tenant": ["acme"]}
    assert router.decide("main", "tools/call", "add", acme).deny is None
    assert router.decide("main", "tools/call", "add", {"X-Tenant": ["beta"]}).deny is not None  # `*` applies
    assert router.decide("main", "tools/call", "add", {}).deny is not None  # no header: `*` too
    assert router.decide("main", "tools/call", "echo", {}).deny is None
    assert router.filters("any-channel")  # tenants apply on every channel


def test_a_tenant_without_an_entry_and_no_default_is_not_restricted() -> None:
    router = _router({}, {"acme": ["echo"]})
    assert router.decide("main", "tools/call", "crash", {"X-Tenant": ["beta"]}).deny is None
    assert router.decide("main", "tools/call", "crash", {"X-Tenant": ["acme"]}).deny is not None


def test_channel_and_tenant_lists_both_apply() -> None:
    router = _router({"main": ["echo", "add"]}, {"acme": ["add", "crash"]})
    acme = {"X-Tenant": ["acme"]}
    assert router.decide("main", "tools/call", "add", acme).deny is None
    assert router.decide("main", "tools/call", "echo", acme).deny is not None  # not the tenant's
    assert router.decide("main", "tools/call", "crash", acme).deny is not None  # not the channel's


def test_the_router_from_a_config_and_its_specs_for_reloads() -> None:
    document = b"""
limits: {tenant_header: X-Tenant}
servers: {a: {stdio: {command: x}}}
channels:
  main: {servers: [a], allow_tools: ["echo"]}
tenants:
  acme: {allow_tools: ["e*"]}
"""
    routes = config.parse(document, "routing.yaml")
    router = Router.for_config(routes)
    assert router.decide("main", "tools/call", "echo", {"X-Tenant": ["acme"]}).deny is None
    assert router.decide("main", "tools/call", "add", {"X-Tenant": ["acme"]}).deny is not None
    assert Router.for_config(routes).specs == router.specs
    changed = config.parse(document.replace(b'["e*"]', b'["a*"]'), "routing.yaml")
    assert Router.for_config(changed).specs != router.specs  # a reload rebuilds the channels
