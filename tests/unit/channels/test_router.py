"""Routing rules and aggregation tables: the sans-IO core with plain calls, then `routes:` end to end.

The first part feeds `gateway.channels.router` and `gateway.config.routing` values directly; the second runs the real
gateway with official-SDK servers and proves deny (hidden and refused), `to:` by header and by glob,
and `limit_key` tagging, and that a bad rule is refused at load time with the file and the key.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import TextContent
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
from gateway.config.globs import GlobError, compile_glob, glob_error
from gateway.protocol.errors import ConfigError
from gateway.protocol.mcp import tag_id, untag_id
from gateway.protocol.wire import Codec
from tests.support.harness import PYTHON, SERVERS, gateway, http_server

CODEC = Codec()


# --------------------------------------------------------------------------- globs


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("tools/*", ["tools/call", "tools/list", "tools/"], ["prompts/get", "xtools/call"]),
        ("*__admin_*", ["s1__admin_reset", "h2__admin_"], ["s1__echo", "admin_x"]),
        ("file://*", ["file:///etc/hosts", "file://a/b/c"], ["https://x"]),
        ("t?st", ["test", "tost"], ["tst", "teest"]),
        ("v[0-9]", ["v1", "v9"], ["va", "v10"]),
        ("v[!0-9]", ["va"], ["v1"]),
        (r"a\*b", ["a*b"], ["axb"]),
        ("[]]x", ["]x"], ["x"]),
        ("beta*", ["beta", "beta-7"], ["alpha", "Beta"]),
    ],
)
def test_globs_match_whole_values(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = compile_glob(pattern)
    assert all(regex.fullmatch(value) for value in matches)
    assert not any(regex.fullmatch(value) for value in misses)


@pytest.mark.parametrize("pattern", ["", "[abc", "x]", "trailing\\", "[!]", "[z-a]"])
def test_bad_globs_are_named(pattern: str) -> None:
    with pytest.raises(GlobError):
        compile_glob(pattern)
    assert glob_error(pattern)


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


def test_tagged_ids_round_trip() -> None:
    for original in (b"7", b'"srv-3"', b'"a~b"'):
        tagged = tag_id(CODEC, "p1", Raw(original))
        found = untag_id(tagged)
        assert found is not None
        assert found[0] == "p1"
        assert bytes(found[1]) == original
    assert untag_id(Raw(b"12")) is None
    assert untag_id(Raw(b'"plain"')) is None


# --------------------------------------------------------------------------- load-time errors


BASE = "servers: {a: {stdio: {command: x}}, b: {stdio: {command: y}}}\nchannels: {main: [a, b], solo: [a]}\n"


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("routes: [{match: {channel: nope}, deny: x}]", "routes[0].match.channel", "a channel defined"),
        ("routes: [{match: {channel: [main, nope]}, deny: x}]", "routes[0].match.channel", "'nope'"),
        ("routes: [{to: ghost}]", "routes[0].to", "a server defined under `servers` (got 'ghost'"),
        ("routes: [{match: {name: 'admin_[x'}, deny: x}]", "routes[0].match.name", "unclosed '['"),
        ("routes: [{match: {method: ''}, deny: x}]", "routes[0].match.method", "an empty pattern"),
        ("routes: [{match: {headers: {x-tenant: 'a]'}}, deny: x}]", "routes[0].match.headers.x-tenant", "glob"),
        ("routes: [{match: {name: x}}]", "routes[0]", "one of `to`, `deny` or `limit_key`"),
        ("routes: [{to: a, deny: nope}]", "routes[0]", "not both"),
        ("routes: [{match: {nam: x}, deny: y}]", "routes[0].match", "unknown field"),
        ("routes: [{limit_key: 3}]", "routes[0].limit_key", "str"),
    ],
)
def test_bad_routes_are_refused_at_load_time(extra: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as failure:
        config.parse((BASE + extra + "\n").encode(), "routing.yaml")
    assert failure.value.file == "routing.yaml"
    assert failure.value.key == key, failure.value
    assert expected in failure.value.expected, failure.value


@pytest.mark.parametrize(
    ("channels", "key", "expected"),
    [
        ("{main: {servers: [a, zz]}}", "channels.main", "'zz'"),
        ("{main: {servers: [a], prefix: sometimes}}", "channels.main.prefix", "'sometimes'"),
        ("{main: {servers: [a], separator: ''}}", "channels.main.separator", "non-empty"),
        ("{main: {servers: [a], rename: {b: {x: y}}}}", "channels.main.rename.b", "a server of this channel"),
        ("{main: {servers: [a], page_size: 0}}", "channels.main.page_size", "at least 1"),
        ("{main: {servers: []}}", "channels.main", "at least one server"),
        ("{main: {serverz: [a]}}", "channels.main", "unknown field"),
    ],
)
def test_bad_channel_options_are_refused_at_load_time(channels: str, key: str, expected: str) -> None:
    document = f"servers: {{a: {{stdio: {{command: x}}}}, b: {{stdio: {{command: y}}}}}}\nchannels: {channels}\n"
    with pytest.raises(ConfigError) as failure:
        config.parse(document.encode(), "routing.yaml")
    assert (failure.value.key, expected in failure.value.expected) == (key, True), failure.value


def test_channels_in_both_forms_load() -> None:
    loaded = config.parse(
        (
            b"servers: {a: {stdio: {command: x}}, b: {stdio: {command: y}}}\n"
            b"channels:\n  short: [a, b]\n  long: {servers: [b], prefix: always, server_info: {name: n}}\n"
            b"routes: [{match: {channel: long, method: 'tools/*'}, limit_key: k}]\n"
        ),
        "routing.yaml",
    )
    assert loaded.channels == {"short": ["a", "b"], "long": ["b"]}
    assert config.channel_spec(loaded, "short").servers == ["a", "b"]
    long = config.channel_spec(loaded, "long")
    assert long.prefix == "always"
    assert long.server_info is not None
    assert long.server_info.name == "n"
    with pytest.raises(ConfigError) as failure:
        config.parse(b"servers: {}\nchannels: {}\nchannel_specs: {}\n", "routing.yaml")
    assert failure.value.key == "channel_specs"


# --------------------------------------------------------------------------- end to end


MUX = SERVERS / "mux_server.py"


def _stdio(*args: str) -> str:
    quoted = ", ".join(f'"{a}"' for a in (str(MUX), *args))
    return f'{{stdio: {{command: "{PYTHON}", args: [{quoted}]}}}}'


def _text(result: Any) -> str:
    assert isinstance(result.content[0], TextContent), result
    return str(result.content[0].text)


@contextlib.asynccontextmanager
async def _client(url: str, mode: str, **headers: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,  # type: ignore[arg-type]
    ):
        yield client


ROUTES = """
routes:
  - match: {channel: main, name: "*__crash"}
    deny: "crashing is not allowed on main"
  - match: {channel: main, method: tools/call, name: "s1__whoami", headers: {X-Tenant: "beta*"}}
    to: s2
  - match: {headers: {x-tenant: blocked}}
    deny: "this tenant is blocked"
  - match: {channel: solo, name: "getenv"}
    deny: "no environment here"
  - match: {channel: main, name: "s1__add"}
    limit_key: adds
"""


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_route_rules_end_to_end(mode: str, tmp_path: Path) -> None:
    async with http_server(name="h1") as h1_url:
        routes = (
            "relay: {listen: '127.0.0.1:0'}\n"
            f"servers:\n  s1: {_stdio('--name', 's1')}\n  s2: {_stdio('--name', 's2', '--legacy')}\n"
            f"  h1: {{http: {{url: '{h1_url}'}}}}\n"
            "channels:\n  main: [s1, h1]\n  solo: [h1]\n" + ROUTES
        )
        async with gateway(routes, tmp_path) as gw:
            async with _client(gw.urls["main"], mode) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert "s1__echo" in names
                assert "h1__echo" in names
                assert not {"s1__crash", "h1__crash"} & names  # denied: hidden
                with pytest.raises(MCPError) as denied:  # and refused
                    await client.call_tool("h1__crash", {})
                assert denied.value.error.code == -32010
                assert denied.value.error.message == "crashing is not allowed on main"
                assert _text(await client.call_tool("s1__about_s1", {})) == "s1"
                assert _text(await client.call_tool("s1__add", {"a": 1, "b": 2})) == "3"  # limit_key only

                own_pid = _text(await client.call_tool("s1__whoami", {}))

            async with _client(gw.urls["main"], mode, **{"X-Tenant": "beta-42"}) as beta:
                # The header sends s1__whoami to s2, a server outside the channel; other calls stay on s1.
                assert _text(await beta.call_tool("s1__whoami", {})) != own_pid
                assert _text(await beta.call_tool("s1__echo", {"text": "hi"})) == "hi"
                assert _text(await beta.call_tool("s1__about_s1", {})) == "s1"

            async with _client(gw.urls["solo"], mode, **{"x-tenant": "blocked"}) as blocked:
                with pytest.raises(MCPError) as refused:
                    await blocked.list_tools()
                assert refused.value.error.message == "this tenant is blocked"

            async with _client(gw.urls["solo"], mode) as solo:
                # A deny rule makes a one-server channel a routed one: names stay unprefixed.
                tools = {tool.name for tool in (await solo.list_tools()).tools}
                assert "echo" in tools
                assert "getenv" not in tools
                with pytest.raises(MCPError) as hidden:
                    await solo.call_tool("getenv", {"variable": "HOME"})
                assert hidden.value.error.code == -32010
                assert solo.server_info is not None
                assert solo.server_info.name == "h1"


async def test_to_rule_reaches_the_named_server(tmp_path: Path) -> None:
    """Proof that a `to:` rule picks the server: s2's `about_s2` answers through an s1 name."""
    routes = (
        "relay: {listen: '127.0.0.1:0'}\n"
        f"servers:\n  s1: {_stdio('--name', 's1')}\n  s2: {_stdio('--name', 's2')}\n"
        "channels:\n  main: [s1]\n"
        "routes:\n  - match: {method: tools/call, name: 'about_*', headers: {x-route: 's2'}}\n    to: s2\n"
    )
    async with gateway(routes, tmp_path) as gw:
        async with _client(gw.urls["main"], "auto") as plain:
            assert _text(await plain.call_tool("about_s1", {})) == "s1"
        async with _client(gw.urls["main"], "auto", **{"x-route": "s2"}) as routed:
            assert _text(await routed.call_tool("about_s2", {})) == "s2"
            missing = await routed.call_tool("about_s1", {})  # s2 has no such tool: its own tool error
            assert missing.is_error
