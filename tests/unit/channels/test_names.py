"""gateway.channels.names with plain calls: names prefixed per server (always, conditional, renames) and resolved
back to their owner, resources owned by the first server that lists them, then templates."""

from __future__ import annotations

from gateway.channels.names import namespace, resource_table, template_regex

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
