#!/bin/sh
# Install mcp-tunnel-gateway from a source tree into a fresh virtual environment.
#
#   sh deploy/install.sh VENV [EXTRAS]       (run from the source tree's root)
#
# VENV must not exist yet; EXTRAS is empty (the gateway alone) or a comma-separated list of the
# package's extras, e.g. `demo` for the demo MCP servers. The container image's build stage runs
# exactly this (deploy/Dockerfile), and tests/test_deploy.py runs it in a temporary directory.
# pip settings come from the environment (the image sets PIP_NO_CACHE_DIR=1).
set -eu

if [ "$#" -lt 1 ] || [ "$#" -gt 2 ] || [ -z "$1" ]; then
    echo "usage: sh deploy/install.sh VENV [EXTRAS]" >&2
    exit 2
fi
venv=$1
extras=${2:-}
python=${PYTHON:-python3}

if [ -e "$venv" ]; then
    echo "install.sh: $venv already exists; give a new directory" >&2
    exit 2
fi
case "$extras" in
    *[!a-z0-9,_-]*) echo "install.sh: EXTRAS must be names separated by commas (got '$extras')" >&2; exit 2 ;;
esac

"$python" -m venv "$venv"
if [ -n "$extras" ]; then
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet ".[$extras]"
else
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet .
fi
"$venv/bin/gateway" --version
