"""Glob patterns of routing rules (`routes[].match`): compiled to regexes, and why a pattern is bad.
Sans-IO and pure; imports only the error tree, so the config checks and the router share it.
"""

from __future__ import annotations

import re

from gateway.protocol.errors import GatewayError


class GlobError(GatewayError, ValueError):
    """A pattern that is not a valid glob."""


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A glob as a regex: `*` any run (slashes too), `?` one character, `[a-z]`/`[!a-z]` a class,
    `\\` escapes the next character. Raises GlobError for an empty or malformed pattern."""
    if not pattern:
        raise GlobError("an empty pattern")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\":
            if i + 1 == n:
                raise GlobError("a trailing backslash")
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            negate = pattern[j : j + 1] == "!"
            if negate:
                j += 1
            start = j
            if pattern[j : j + 1] == "]":
                j += 1  # a leading ']' is a member, as in fnmatch
            end = pattern.find("]", j)
            if end < 0:
                raise GlobError(f"an unclosed '[' at position {i}")
            body = pattern[start:end]
            if not body:
                raise GlobError(f"an empty character class at position {i}")
            members = body.replace("\\", "\\\\").replace("^", "\\^").replace("[", "\\[").replace("]", "\\]")
            try:
                re.compile(f"[{members}]")
            except re.error as exc:
                raise GlobError(f"a bad character class at position {i} ({exc.msg})") from None
            out.append(f"[{'^' if negate else ''}{members}]")
            i = end
        elif c == "]":
            raise GlobError(f"an unmatched ']' at position {i}")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.S)


def glob_error(pattern: str) -> str | None:
    """Why `pattern` is not a valid glob, or None when it is."""
    try:
        compile_glob(pattern)
    except GlobError as exc:
        return str(exc)
    return None
