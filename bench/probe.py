"""`python -m bench.probe GATEWAY-ARGS...`: runs `gateway.cli` unchanged and, on SIGUSR2, writes what the process holds.

Owns only the look inside a process under test: asyncio tasks counted by coroutine, threads, open fds, and
(with `BENCH_TRACEMALLOC=FRAMES`) tracemalloc snapshots diffed against the first one, written as JSON to the
file `BENCH_PROBE_OUT` names. A benchmark's debug switch; changes nothing the gateway does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import tracemalloc
from collections import Counter
from types import FrameType
from typing import Any

import uvloop


class Probe:
    """Holds the gateway's loop (caught from the loop factory) and the first tracemalloc snapshot."""

    def __init__(self, out: str, frames: int) -> None:
        self.out = out
        self.loop: asyncio.AbstractEventLoop | None = None
        self.first: tracemalloc.Snapshot | None = None
        self.writes = 0
        if frames:
            tracemalloc.start(frames)

    def loop_factory(self) -> asyncio.AbstractEventLoop:
        self.loop = _new_loop()
        return self.loop

    def dump(self, _signum: int, _frame: FrameType | None) -> None:
        tasks = asyncio.all_tasks(self.loop) if self.loop is not None else set()
        kinds = Counter(getattr(t.get_coro(), "__qualname__", "?") for t in tasks)
        report: dict[str, Any] = {
            "seq": self.writes,
            "tasks": len(tasks),
            "task_kinds": dict(kinds.most_common()),
            "threads": threading.active_count(),
            "fds": len(os.listdir("/proc/self/fd")),
        }
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [
                    tracemalloc.Filter(False, tracemalloc.__file__),
                    tracemalloc.Filter(False, "<frozen importlib._bootstrap*"),
                ]
            )
            current, _peak = tracemalloc.get_traced_memory()
            report["traced_kib"] = round(current / 1024)
            report["largest"] = [
                {"kib": round(stat.size / 1024, 1), "blocks": stat.count, "where": str(stat.traceback[0])}
                for stat in snapshot.statistics("lineno")[:40]
            ]
            if self.first is None:
                self.first = snapshot
            else:
                diff = snapshot.compare_to(self.first, "traceback")[:25]
                report["growth_since_first"] = [
                    {"kib": round(d.size_diff / 1024, 1), "blocks": d.count_diff, "where": d.traceback.format()[-6:]}
                    for d in diff
                ]
        self.writes += 1
        tmp = self.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=1)
        os.replace(tmp, self.out)


_new_loop = uvloop.new_event_loop


def main() -> int:
    probe = Probe(os.environ.get("BENCH_PROBE_OUT", "probe.json"), int(os.environ.get("BENCH_TRACEMALLOC", "0")))
    signal.signal(signal.SIGUSR2, probe.dump)
    uvloop.new_event_loop = probe.loop_factory  # gateway.cli reads the attribute when it starts its loop
    from gateway import cli

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
