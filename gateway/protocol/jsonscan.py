"""Tolerant, non-recursive scans of JSON text: top-level members for salvage, nesting depth.
Never decodes a value and never recurses; sans-IO (callers decode strictly themselves).

Owns splitting a JSON object or array into its members' raw bytes without
validating them, so that one member a strict decoder refuses (nested too deep,
a lone surrogate escape, a wrong type) cannot hide its neighbours, and measuring
whether a document nests deeper than a bound.
"""

from __future__ import annotations

import re
from typing import Final

_TOKEN: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.DOTALL)
"""A string (escapes skipped, not checked) or one structural character."""
_OPEN: Final = frozenset(b"[{")
_CLOSE: Final = frozenset(b"]}")
_SPACE: Final = b" \t\r\n"

_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")

Member = tuple[bytes | None, bytes]
"""(the raw key including its quotes, or None inside an array; the raw value)."""


def members(data: bytes) -> list[Member] | None:
    """The members of the JSON object or array `data` holds, as raw bytes; None when its top level
    is not one well-bracketed object or array. Values are not checked (the caller decodes them)."""
    text = bytes(data)
    start = len(text) - len(text.lstrip(_SPACE))
    if start == len(text) or text[start] not in _OPEN:
        return None
    is_object = text[start] == ord("{")
    depth = 0
    found: list[Member] = []
    key: bytes | None = None
    value_start = start + 1
    end = -1
    for match in _TOKEN.finditer(text, start):
        token = match[0]
        first = token[0]
        if first in _OPEN:
            depth += 1
        elif first in _CLOSE:
            depth -= 1
            if depth == 0:
                end = match.end()
                _member(found, key, text[value_start : match.start()], is_object)
                break
        elif depth == 1 and first == ord(","):
            if not _member(found, key, text[value_start : match.start()], is_object):
                return None
            key, value_start = None, match.end()
        elif depth == 1 and first == ord(":") and is_object and key is None:
            key = text[value_start : match.start()].strip(_SPACE)
            value_start = match.end()
    if end < 0 or text[end:].strip(_SPACE):
        return None
    return found


def _member(found: list[Member], key: bytes | None, value: bytes, is_object: bool) -> bool:
    """Record one member; False when it is empty where a value was due (`[1,,2]`)."""
    value = value.strip(_SPACE)
    if not value:
        return not found and key is None  # `{}` / `[]`: nothing between the brackets
    if is_object and key is None:
        return False
    found.append((key, value))
    return True


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays and objects more than `limit` levels deep.

    Free for most documents (fewer brackets than `limit`); otherwise strings are cut out and
    innermost `[]` pairs removed one level per pass, so a document costs as many passes as it is
    deep (at most `limit`), each a C-speed scan. Unbalanced text is not judged (False)."""
    text = bytes(data)
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", text).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        inner = brackets.replace(b"[]", b"")
        if not inner or len(inner) == len(brackets):
            return False
        brackets = inner
    return True
