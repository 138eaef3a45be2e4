"""The readiness a gateway or relay shows operators: the lines it prints (`PROG: ready`, `waiting: …`,
`PROG: NOT ready: …`, once per change) and the head both `/api/status` answers start with (`StatusHead`).
Sans-IO: decides when a line is due; the caller runs its own check and prints.

Owns when a line is due, given the failing parts and the time; knows nothing of what the parts are.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec


class StatusHead(msgspec.Struct, frozen=True, kw_only=True):
    """The fields every `/api/status` starts with, gateway or relay: what it is, its version, now and
    its start (Unix seconds), and whether it is ready (else each failing part and why)."""

    kind: str
    version: str
    time: float
    started: float
    ready: bool
    not_ready: list[str]


class ReadinessLines:
    """Feed it the failing parts (`{part: why}`, empty when ready) as often as you like; it answers the
    line to say now, or None. `waiting:` lines wait `settle_s` after start, so a start that takes a
    moment says nothing but `ready`."""

    def __init__(self, prog: str, *, ready_detail: str = "", settle_s: float = 1.0, started: float) -> None:
        self._prog = prog
        self._detail = ready_detail
        self._settle_until = started + settle_s
        self._said: Mapping[str, str] | None = None
        self._ready = False

    def update(self, problems: Mapping[str, str], now: float) -> str | None:
        if not problems:
            if self._ready:
                return None
            self._ready, self._said = True, {}
            return f"{self._prog}: ready{self._detail}"
        if self._ready:
            self._ready, self._said = False, dict(problems)
            return f"{self._prog}: NOT ready: {_reasons(problems)}"
        if problems == self._said or (self._said is None and now < self._settle_until):
            return None
        self._said = dict(problems)
        return f"waiting: {_reasons(problems)}"


def _reasons(problems: Mapping[str, str]) -> str:
    return ", ".join(f"{part} ({why})" for part, why in problems.items())
