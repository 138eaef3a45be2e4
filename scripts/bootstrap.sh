#!/usr/bin/env bash
# Make .venv hold this project and its extra: `bash scripts/bootstrap.sh [test|demo]` (default: test).
# Creates .venv with the system python3 if missing (Debian's python refuses pip outside a venv),
# then installs the project editable. Quiet and idempotent: it reinstalls only when pyproject.toml
# is newer than the last successful install of that extra. Any failure stops it with a message.
set -euo pipefail
cd "$(dirname "$0")/.."

extra="${1:-test}"
case "$extra" in
    test | demo) ;;
    *) echo "bootstrap: unknown extra '$extra' (use: test or demo)" >&2; exit 2 ;;
esac

if [ ! -x .venv/bin/python ]; then
    if ! python3 -m venv .venv; then
        echo "bootstrap: 'python3 -m venv .venv' failed (on Debian: apt-get install python3-venv)" >&2
        rm -rf .venv
        exit 1
    fi
fi

stamp=".venv/.bootstrap-$extra"
if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
    exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -m pip install --quiet --quiet --upgrade pip; then
    echo "bootstrap: upgrading pip in .venv failed" >&2
    exit 1
fi
if ! .venv/bin/python -m pip install --quiet --quiet -e ".[$extra]"; then
    echo "bootstrap: 'pip install -e .[$extra]' failed" >&2
    exit 1
fi
touch "$stamp"
