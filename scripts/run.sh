#!/usr/bin/env bash
# Run the gateway with the default routing.yaml (demo servers, embedded relay on loopback).
# Extra arguments go to the gateway: `bash scripts/run.sh --log-level debug`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh demo
exec .venv/bin/gateway --routes routing.yaml "$@"
