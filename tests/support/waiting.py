"""Waiting for a condition that lives in another process or in Redis, where there is no event to wait on:
re-check it until it holds, bounded (the bound is a hang guard, never a timing assertion)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(
    condition: Callable[[], bool | Awaitable[bool]], within_s: float = 60.0, *, every_s: float = 0.02
) -> None:
    """Re-check `condition` (plain or async) every `every_s` until it holds; TimeoutError after `within_s`."""
    async with asyncio.timeout(within_s):
        while True:
            held = condition()
            if inspect.isawaitable(held):
                held = await held
            if held:
                return
            await asyncio.sleep(every_s)
