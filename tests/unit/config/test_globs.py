"""gateway.config.globs with plain calls: patterns match whole values; a bad pattern is named."""

from __future__ import annotations

import pytest

from gateway.config.globs import GlobError, compile_glob, glob_error


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
