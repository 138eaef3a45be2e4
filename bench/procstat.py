"""Per-process cost from /proc: CPU seconds (utime + stime) and peak RSS (VmHWM).

Owns reading `/proc/<pid>/stat` and `/proc/<pid>/status` and nothing else; a
process that is gone reads as None. Linux only, no dependencies.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (not its children), in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` line of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = current RSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mib(pid: int) -> float | None:
    kib = status_kib(pid, "VmHWM")
    return None if kib is None else kib / 1024


def rss_mib(pid: int) -> float | None:
    kib = status_kib(pid, "VmRSS")
    return None if kib is None else kib / 1024


def children(pid: int) -> list[int]:
    """Direct and indirect children of `pid` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def snapshot(roles: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds per role (the sum over its processes; gone processes count 0)."""
    return {role: sum(cpu_seconds(pid) or 0.0 for pid in pids) for role, pids in roles.items()}


def peaks(roles: dict[str, list[int]]) -> dict[str, float]:
    """Peak RSS per role in MiB (summed over the role's processes)."""
    out: dict[str, float] = {}
    for role, pids in roles.items():
        values = [v for pid in pids if (v := peak_rss_mib(pid)) is not None]
        if values:
            out[role] = round(sum(values), 1)
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (from the first line of /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _TICKS
