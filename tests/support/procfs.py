"""Processes seen through /proc (Linux): alive, a zombie, or reaped; a process's children."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pid_exists(pid: int) -> bool:
    """True while `pid` is in the process table, a zombie included (not yet reaped by its parent)."""
    return Path(f"/proc/{pid}").exists()


def children(pid: int) -> list[int]:
    """Every child of `pid` (zombies too), read from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):  # the process (or one of its threads) may exit while it is read
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found
