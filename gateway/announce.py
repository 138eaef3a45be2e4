"""Readiness said out loud: `PROG: ready`, `waiting: PART (why), …`, `PROG: NOT ready: …` on stdout.

Owns when those lines are said (once per change), not what readiness is: the gateway and the relay
each pass their own check. Imports nothing of ours, so both can use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping


async def announce(
    prog: str,
    problems: Callable[[], Awaitable[Mapping[str, str]]],
    say: Callable[[str], None],
    *,
    ready_detail: str = "",
    interval_s: float = 0.25,
    settle_s: float = 1.0,
) -> None:
    """Tell a person (and a supervisor reading stdout) when readiness changes, until cancelled.

    `PROG: ready` once nothing is failing; `waiting: PART (why), …` while something is (after
    `settle_s`, so a start that takes a moment says nothing but `ready`); `PROG: NOT ready: …`
    when readiness is lost. Each line is said once per change of the failing parts or reasons.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    said: Mapping[str, str] | None = None
    ready = False
    while True:
        now = await problems()
        if not now:
            if not ready:
                say(f"{prog}: ready{ready_detail}")
                ready, said = True, {}
        elif ready:
            say(f"{prog}: NOT ready: {_reasons(now)}")
            ready, said = False, now
        elif now != said and (said is not None or loop.time() - started >= settle_s):
            say(f"waiting: {_reasons(now)}")
            said = now
        await asyncio.sleep(interval_s)


def _reasons(problems: Mapping[str, str]) -> str:
    return ", ".join(f"{part} ({why})" for part, why in problems.items())
