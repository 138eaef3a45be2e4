#!/usr/bin/env bash
# Make .venv hold exactly what uv.lock pins: `bash scripts/bootstrap.sh [test|run]` (default: test).
#   test: the package (editable) with its test tools; run: the package and its runtime dependencies only.
# First installs uv itself into .tools/uv from requirements/uv.txt (pinned, hash-checked), then
# `uv sync --locked`, which installs the lock hash-checked and refuses when pyproject.toml and uv.lock
# disagree. Idempotent and quick when nothing changed. Any failure stops it with a message.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-test}"
case "$profile" in
    test) sync_args=(--extra test) ;;
    run) sync_args=(--inexact) ;;  # keeps test tools a developer already has in .venv
    *) echo "bootstrap: unknown profile '$profile' (use: test or run)" >&2; exit 2 ;;
esac

uv=.tools/uv/bin/uv
want="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' requirements/uv.txt)"
if [ ! -x "$uv" ] || [ "$("$uv" --version 2>/dev/null | cut -d' ' -f2)" != "$want" ]; then
    rm -rf .tools/uv
    if ! python3 -m venv .tools/uv; then
        echo "bootstrap: 'python3 -m venv .tools/uv' failed (on Debian: apt-get install python3-venv)" >&2
        rm -rf .tools/uv
        exit 1
    fi
    if ! PIP_DISABLE_PIP_VERSION_CHECK=1 .tools/uv/bin/python -m pip install --quiet --require-hashes \
        --no-deps -r requirements/uv.txt; then
        echo "bootstrap: installing uv $want from requirements/uv.txt failed" >&2
        rm -rf .tools/uv
        exit 1
    fi
fi

export UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON="${UV_PYTHON:-python3}" UV_PYTHON_DOWNLOADS=never
if ! "$uv" lock --check --quiet 2>/dev/null; then
    echo "bootstrap: pyproject.toml and uv.lock disagree (a dependency was added, removed or its range changed)." >&2
    echo "  Run 'bash scripts/upgrade.sh' to move the lock to the newest releases and run the suite on them," >&2
    echo "  or '$uv lock' for the smallest change that fits pyproject.toml; then commit uv.lock." >&2
    exit 1
fi
if ! "$uv" sync --locked --quiet "${sync_args[@]}"; then
    echo "bootstrap: 'uv sync --locked ${sync_args[*]}' failed (see above)" >&2
    exit 1
fi
