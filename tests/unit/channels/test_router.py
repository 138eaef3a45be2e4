"""gateway.channels.router with plain calls: routing rules, exposed names and their owners, resources, pages and
cursors, merged capabilities."""

from __future__ import annotations

import msgspec
import pytest
from msgspec import Raw

from gateway.channels.router import (
    InvalidCursor,
    Router,
    decode_cursor,
    encode_cursor,
    merge_capabilities,
    namespace,
    page,
    resource_table,
    split_page,
    template_regex,
)
from gateway.config import routing as config
from gateway.protocol.wire import Codec

CODEC = Codec()

# --------------------------------------------------------------------------- rules


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


# --------------------------------------------------------------------------- names


LISTED = {"a": ["echo", "add", "only_a"], "b": ["echo", "only_b"], "c": ["echo", "add"]}


def test_always_prefixes_every_name() -> None:
    table, warnings = namespace(LISTED, separator="__", mode="always")
    assert not warnings
    assert table.exposed("a", "echo") == "a__echo"
    assert table.exposed("b", "only_b") == "b__only_b"
    owner = table.resolve("c__add")
    assert owner is not None
    assert (owner.server, owner.name) == ("c", "add")
    assert table.resolve("echo") is None


def test_conditional_prefixes_only_collisions_and_renames_are_exact() -> None:
    table, _ = namespace(
        LISTED, separator=".", mode="conditional", rename={"a": {"echo": "shout"}, "c": {"add": "plus"}}
    )
    assert table.exposed("a", "echo") == "shout"
    assert table.exposed("b", "echo") == "b.echo"
    assert table.exposed("c", "echo") == "c.echo"
    assert table.exposed("a", "add") == "add"  # c's add is renamed: no collision left
    assert table.exposed("c", "add") == "plus"
    assert table.exposed("a", "only_a") == "only_a"
    owner = table.resolve("shout")
    assert owner is not None
    assert (owner.server, owner.name) == ("a", "echo")


def test_a_name_not_listed_resolves_by_its_prefix() -> None:
    table, _ = namespace({"a": ["x"]}, separator="__", mode="always", servers=["a", "down"])
    owner = table.resolve("down__tool")
    assert owner is not None
    assert (owner.server, owner.name) == ("down", "tool")
    assert table.resolve("down__") is None
    assert table.resolve("nobody__x") is None


def test_duplicate_exposed_names_keep_the_first_server() -> None:
    table, warnings = namespace({"a": ["x"], "b": ["y"]}, separator="__", mode="none", rename={"b": {"y": "x"}})
    owner = table.resolve("x")
    assert owner is not None
    assert owner.server == "a"
    assert len(warnings) == 1
    assert "left out" in warnings[0]


def test_resources_belong_to_the_first_server_then_templates() -> None:
    table = resource_table({"a": ["test://info"], "b": ["test://info", "b://x"]}, {"c": ["notes://{id}"]})
    assert table.owner("test://info") == "a"
    assert table.owner("b://x") == "b"
    assert table.owner("notes://42") == "c"
    assert table.owner("notes://42/deeper") is None
    assert table.owner("other://1") is None
    assert template_regex("file:///{+path}").fullmatch("file:///a/b/c")
    assert template_regex("search{?q,lang}").fullmatch("search?q=x&lang=en")


# --------------------------------------------------------------------------- pages and cursors


def test_pages_walk_the_list_and_cursors_are_bound_to_it() -> None:
    items = list(range(7))
    first, cursor = page(items, "f1", None, 3)
    assert list(first) == [0, 1, 2]
    assert cursor is not None
    second, cursor = page(items, "f1", cursor, 3)
    assert list(second) == [3, 4, 5]
    assert cursor is not None
    last, cursor = page(items, "f1", cursor, 3)
    assert list(last) == [6]
    assert cursor is None
    assert page(items, "f1", None, None) == (items, None)
    with pytest.raises(InvalidCursor):
        page(items, "changed", encode_cursor("f1", 3), 3)
    for bad in ("", "garbage", encode_cursor("f1", 3)[:-2] + "!!"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)


def test_split_page_reads_items_and_next_cursor() -> None:
    items, cursor = split_page(CODEC, "tools/list", Raw(b'{"tools":[{"name":"a"},{"name":"b"}],"nextCursor":"2"}'))
    assert [bytes(i) for i in items] == [b'{"name":"a"}', b'{"name":"b"}']
    assert cursor == "2"
    items, cursor = split_page(CODEC, "resources/templates/list", Raw(b'{"resourceTemplates":[]}'))
    assert items == []
    assert cursor is None


def test_capabilities_merge_feature_by_feature() -> None:
    merged = msgspec.json.decode(
        merge_capabilities(
            CODEC,
            [
                Raw(b'{"tools":{"listChanged":false},"logging":{}}'),
                Raw(b'{"prompts":{},"resources":{"subscribe":true},"experimental":{"x":{"a":1}}}'),
                Raw(b'{"tools":{},"experimental":{"y":{}}}'),
            ],
        )
    )
    assert merged == {
        "tools": {"listChanged": True},
        "logging": {},
        "prompts": {"listChanged": True},
        "resources": {"subscribe": True, "listChanged": True},
        "experimental": {"x": {"a": 1}, "y": {}},
    }
