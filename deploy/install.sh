#!/bin/sh
# Install mcp-tunnel-gateway from a source tree into a fresh virtual environment, from the lock.
#
#   sh deploy/install.sh VENV       (run from the source tree's root)
#
# VENV must not exist yet. Every dependency comes from requirements/runtime.txt (the runtime half of
# uv.lock, pinned with hashes; pip refuses anything else), then the package itself without resolving
# anything more. The container image's build stage and the systemd setup (deploy/README.md) run exactly
# this, and tests/deploy/test_dockerfile.py runs it in a temporary directory. pip settings come from the
# environment (the image sets PIP_NO_CACHE_DIR=1).
set -eu

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "usage: sh deploy/install.sh VENV" >&2
    exit 2
fi
venv=$1
python=${PYTHON:-python3}

if [ -e "$venv" ]; then
    echo "install.sh: $venv already exists; give a new directory" >&2
    exit 2
fi
if [ ! -f requirements/runtime.txt ]; then
    echo "install.sh: requirements/runtime.txt not found: run this from the source tree's root" >&2
    exit 2
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet --require-hashes --no-deps \
    -r requirements/runtime.txt
"$venv/bin/python" -m pip install --disable-pip-version-check --quiet --no-deps .
"$venv/bin/gateway" --version
