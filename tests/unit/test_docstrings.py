"""Every module under `gateway/` opens with a short docstring: a first paragraph of one to three lines
saying what the module owns and what it must not do (shared/style.md, "Modules").

Read with `ast`, nothing imported. Whether the first paragraph states a limit is checked by its
wording ("no", "never", "only", "sans-IO", ...): a nudge, not a proof.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Final

import pytest

import gateway

PACKAGE: Final = Path(gateway.__file__).parent
MAX_LINES: Final = 3
LIMIT_WORDS: Final = re.compile(r"\b(no|not|never|nothing|none|neither|nor|only|nowhere|without)\b|sans-io", re.I)
"""How a sentence says what a module must not do."""


def modules() -> list[str]:
    return sorted(path.relative_to(PACKAGE.parent).as_posix() for path in PACKAGE.rglob("*.py"))


def first_paragraph(source: str) -> str | None:
    """The module docstring's first paragraph (cleaned of indentation), or None without a docstring."""
    doc = ast.get_docstring(ast.parse(source), clean=True)
    if doc is None:
        return None
    return doc.strip().split("\n\n", 1)[0]


def problem(source: str) -> str | None:
    """Why the module's opening docstring breaks the rule, or None."""
    first = first_paragraph(source)
    if first is None:
        return "no module docstring"
    lines = len(first.splitlines())
    if not first or lines > MAX_LINES:
        return f"the first paragraph has {lines} lines (1 to {MAX_LINES}: what it owns, what it must not do)"
    return None


def states_a_limit(source: str) -> bool:
    first = first_paragraph(source)
    return first is not None and LIMIT_WORDS.search(first) is not None


def _read(module: str) -> str:
    return (PACKAGE.parent / module).read_text(encoding="utf-8")


@pytest.mark.parametrize("module", modules())
def test_module_opens_with_a_one_to_three_line_summary(module: str) -> None:
    assert problem(_read(module)) is None, f"{module}: {problem(_read(module))}"


@pytest.mark.parametrize("module", modules())
def test_module_summary_says_what_it_must_not_do(module: str) -> None:
    assert states_a_limit(_read(module)), f"{module}: the first paragraph states no limit ({LIMIT_WORDS.pattern})"


def test_the_checks_fail_on_what_they_look_for() -> None:
    assert modules()  # the package was found
    assert problem("x = 1\n") == "no module docstring"
    assert problem('"""One.\nTwo.\nThree.\nFour.\n\nRest."""\n') is not None
    assert problem('"""  """\n') is not None  # an empty docstring
    assert problem('"""Owns this.\nImports no I/O library.\n\nA long second paragraph\nof\nmany\nlines."""\n') is None
    assert not states_a_limit('"""Owns this and that."""\n')
    assert states_a_limit('"""Owns this; never that."""\n')
    assert not states_a_limit('"""Owns notes and nonces."""\n')  # whole words only
