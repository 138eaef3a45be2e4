"""Readiness said out loud on a loop: checks the gateway's (or relay's) readiness every interval and
prints the line `gateway.protocol.readiness` says is due. Owns only the loop, not what readiness is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from gateway.protocol.readiness import ReadinessLines


async def announce(
    prog: str,
    problems: Callable[[], Awaitable[Mapping[str, str]]],
    say: Callable[[str], None],
    *,
    ready_detail: str = "",
    interval_s: float = 0.25,
) -> None:
    """Until cancelled: `problems()` every `interval_s`, and `say(line)` whenever a line is due."""
    loop = asyncio.get_running_loop()
    lines = ReadinessLines(prog, ready_detail=ready_detail, started=loop.time())
    while True:
        line = lines.update(await problems(), loop.time())
        if line is not None:
            say(line)
        await asyncio.sleep(interval_s)
