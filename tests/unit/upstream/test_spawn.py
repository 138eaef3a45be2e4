"""A stdio server's stderr reaches the gateway as lines through a callback (gateway.upstream.spawn).

Real child processes (`sh`), no event-loop fakes: lines split across writes, a line longer than
`STDERR_LINE_MAX` cut there, a last line without a newline, and the event that says every line arrived.
"""

from __future__ import annotations

import asyncio

from gateway.upstream.environment import ChildEnvironment
from gateway.upstream.spawn import STDERR_LINE_MAX, spawn_stdio

SCRIPT = (
    "printf 'first\\nsec' >&2; sleep 0.1; printf 'ond\\n' >&2; "
    f"head -c {STDERR_LINE_MAX + 5000} /dev/zero | tr '\\0' x >&2; printf '\\nlast' >&2; "
    "read line; printf '%s\\n' \"$line\""
)


async def test_stderr_arrives_as_bounded_lines_and_stdio_still_works() -> None:
    lines: list[bytes] = []
    proc, stderr_done = await spawn_stdio("sh", ["-c", SCRIPT], on_stderr_line=lines.append, env=None, cwd=None)
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write(b"hello\n")
    await proc.stdin.drain()
    assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"hello\n"
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    await asyncio.wait_for(stderr_done.wait(), 30)
    assert lines == [b"first", b"second", b"x" * STDERR_LINE_MAX, b"last"]


def test_an_unchanged_environment_is_inherited_not_copied() -> None:
    parent = {"PATH": "/bin", "HOME": "/root"}
    assert ChildEnvironment().for_spawn(parent) is None
    assert ChildEnvironment(True, {"A": "1"}).for_spawn(parent) == {**parent, "A": "1"}
    assert ChildEnvironment().for_spawn({**parent, "TUNNEL_API_KEY": "k"}) == parent
    assert ChildEnvironment(withheld=frozenset({"HOME"})).for_spawn(parent) == {"PATH": "/bin"}
    assert ChildEnvironment(False, {}).for_spawn(parent) == {}
