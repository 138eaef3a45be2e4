#!/usr/bin/env bash
# Make .venv hold exactly what the lock pins: `bash scripts/bootstrap.sh [test|bench|run|uv]` (default: test).
#   test: the package (editable) with its test tools; bench: those and the profiler bench/ uses;
#   run: the package and its runtime dependencies (keeping anything else .venv holds);
#   uv: only install the pinned uv into .tools/uv (scripts/lock.sh uses it).
# uv itself comes from requirements/uv.txt (pinned, hash-checked, with pip); then `uv sync --locked`
# installs uv.lock hash-checked. It refuses, naming the command to run, when pyproject.toml, uv.lock
# and requirements/runtime.txt disagree. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${1:-test}"
case "$profile" in
    test) sync_args=(--extra test) ;;
    bench) sync_args=(--extra test --extra bench) ;;
    run) sync_args=(--inexact) ;;  # keeps the test tools a developer may already have in .venv
    uv) ;;
    *) echo "bootstrap: unknown profile '$profile' (use: test, bench, run or uv)" >&2; exit 2 ;;
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
[ "$profile" != uv ] || exit 0

export UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON="${UV_PYTHON:-python3}" UV_PYTHON_DOWNLOADS=never
stale() {
    echo "bootstrap: $1" >&2
    echo "  Run 'bash scripts/lock.sh' (the smallest change that fits pyproject.toml) or" >&2
    echo "  'bash scripts/upgrade.sh' (the newest releases, then the whole suite on them); commit what it writes." >&2
    exit 1
}
"$uv" lock --check --quiet 2>/dev/null \
    || stale "pyproject.toml and uv.lock disagree (a dependency was added, removed or its range changed)."
exported="$("$uv" export --quiet --frozen --no-header --no-emit-project --format requirements-txt)"
[ "$exported" = "$(cat requirements/runtime.txt)" ] \
    || stale "requirements/runtime.txt is not the runtime half of uv.lock."
if ! "$uv" sync --locked --quiet "${sync_args[@]}"; then
    echo "bootstrap: 'uv sync --locked ${sync_args[*]}' failed (see above)" >&2
    exit 1
fi
