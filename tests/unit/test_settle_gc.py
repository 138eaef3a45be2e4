"""gateway.cli's collector settings once serving: start-up objects frozen out of the collector's sight and young
objects collected less often (what `gateway` and `gateway relay` call when ready)."""

from __future__ import annotations

import gc

from gateway.cli import GC_THRESHOLDS, settle_gc


def test_settle_gc_freezes_start_up_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        built_at_start_up = [object() for _ in range(10)]
        settle_gc()
        assert gc.get_freeze_count() > len(built_at_start_up)
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
