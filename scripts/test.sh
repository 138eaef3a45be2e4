#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run): ruff (lint and format), mypy (strict, on the packages
# named in pyproject.toml), then pytest in PYTEST_WORKERS (default 3) processes with any extra
# arguments. Before them it installs the MCP conformance toolchain into .tools/ (needs npm; instant
# once installed) for the `conformance` test, and Debian's chromium (scripts/browser-tools.sh; needs
# root and apt-get when missing) for the console's browser test.
# Every step runs; the script exits non-zero if any failed, and treats pytest collecting no tests
# (exit 5) as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh test || exit 1

failed=()
bash scripts/conformance-tools.sh || failed+=("conformance-tools")
bash scripts/browser-tools.sh || failed+=("browser-tools")
.venv/bin/ruff check . || failed+=("ruff")
.venv/bin/ruff format --check . || failed+=("ruff format")
.venv/bin/mypy || failed+=("mypy")
# Three workers on two cores: most tests wait on the processes they started (7 min against 13 with two).
# Work stealing keeps the long end-to-end tests from finishing alone on one worker (6.5 min against 8).
.venv/bin/pytest -n "${PYTEST_WORKERS:-3}" --dist worksteal "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests" >&2
fi
[ "$rc" -eq 0 ] || failed+=("pytest (exit $rc)")

if [ "${#failed[@]}" -ne 0 ]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
