#!/usr/bin/env bash
# The benchmark in one command: install what it needs, then run every scenario.
#   bash bench/run.sh            full run (~45 min on 2 cores), rewrites the generated part of bench/RESULTS.md
#   bash bench/run.sh --quick    short runs to check the harness (~6 min); numbers are provisional
# Any other arguments go to `python -m bench` (see bench/README.md). Run it on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/setup.sh
exec .venv/bin/python -m bench --results "$@"
