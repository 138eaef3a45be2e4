#!/usr/bin/env bash
# The benchmark in one command: install what it needs, then run every scenario.
#   bash bench/run.sh            full run in 3 rounds (about an hour on 2 cores), rewrites the generated part of bench/RESULTS.md
#   bash bench/run.sh --quick    short runs to check the harness (~6 min); numbers are provisional
# Any other arguments go to `python -m bench` (see bench/README.md). Run it on a quiet machine.
# Then the memory checks (bench/README.md, "Memory and scale"): the soak's short mode (BENCH_SOAK_MINUTES=10
# runs the full 10-minute soak) and BENCH_SCALE_SERVERS (default 1000) idle stdio servers behind one gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/setup.sh
status=0
.venv/bin/python -m bench --results "$@" || status=$?
if [[ -n "${BENCH_SOAK_MINUTES:-}" ]]; then
  .venv/bin/python -m bench.soak --minutes "$BENCH_SOAK_MINUTES" || status=$?
else
  .venv/bin/python -m bench.soak --short || status=$?
fi
.venv/bin/python -m bench.scale --servers "${BENCH_SCALE_SERVERS:-1000}" || status=$?
exit "$status"
