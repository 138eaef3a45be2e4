#!/usr/bin/env bash
# Move the lock to the newest releases, install them, and run the whole test command on them:
#   bash scripts/upgrade.sh [pytest arguments]
# Upgrades are a reviewed change: read `git diff uv.lock requirements/`, then commit the lock with
# the fixes the new releases needed. Nothing is committed for you.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/lock.sh --upgrade
git --no-pager diff --stat -- uv.lock requirements/ || true
exec bash scripts/test.sh "$@"
