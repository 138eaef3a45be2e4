#!/usr/bin/env bash
# Write the lock from pyproject.toml: uv.lock (every runtime and test dependency, with hashes) and its
# runtime half as requirements/runtime.txt (what deploy/install.sh, the container image and the
# systemd install read with pip --require-hashes).
#   bash scripts/lock.sh             the smallest change that fits pyproject.toml (keeps pinned versions)
#   bash scripts/lock.sh --upgrade   every package to its newest release that fits (scripts/upgrade.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
upgrade=()
case "${1:-}" in
    "") ;;
    --upgrade) upgrade=(--upgrade) ;;
    *) echo "lock.sh: unknown argument '$1' (use: --upgrade or nothing)" >&2; exit 2 ;;
esac
bash scripts/bootstrap.sh uv
uv=.tools/uv/bin/uv
export UV_PYTHON_DOWNLOADS=never
"$uv" lock --quiet "${upgrade[@]}"
"$uv" export --quiet --frozen --no-header --no-emit-project --format requirements-txt \
    >requirements/runtime.txt
if [ "${#upgrade[@]}" -ne 0 ]; then
    # uv itself moves with the lock: pin its newest release with the hashes of all its wheels.
    newest="$("$uv" pip compile --quiet --no-header --generate-hashes --python-platform linux - <<<"uv" )"
    { sed -n '1,2p' requirements/uv.txt; echo "$newest"; } >requirements/uv.txt.new
    mv requirements/uv.txt.new requirements/uv.txt
fi
echo "lock.sh: uv.lock and requirements/runtime.txt written; review 'git diff' and commit them"
