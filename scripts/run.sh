#!/usr/bin/env bash
# Set up .venv from the lock, then run `gateway --routes routing.yaml` (extra arguments go to it).
# The shipped routing.yaml starts everything it needs: the embedded relay, the clock demo (stdio)
# and the notes demo (HTTP, spawned by the gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh run
exec .venv/bin/gateway --routes routing.yaml "$@"
