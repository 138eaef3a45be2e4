#!/usr/bin/env bash
# The long fuzz run (issue 14), outside CI: the hypothesis and live fuzz suites with every budget
# multiplied by GATEWAY_FUZZ_SCALE (default 20: 500,000 generated commands through a real gateway,
# 100,000 generated HTTP requests at a real relay, 6,000 examples per core property), with a fresh
# seed (GATEWAY_FUZZ_SEED, printed), then each atheris target (scripts/fuzz_atheris.py) for
# ATHERIS_SECONDS (default 300) with its corpus and any crash input kept in FUZZ_DIR (default: a new
# temporary folder, printed). Prints the counts (pytest's "fuzz counts" summary) and libFuzzer's
# final figures; exits non-zero when anything failed.
#   bash scripts/soak.sh
#   GATEWAY_FUZZ_SCALE=4 ATHERIS_SECONDS=60 bash scripts/soak.sh      # a shorter soak
set -uo pipefail
cd "$(dirname "$0")/.."

scale="${GATEWAY_FUZZ_SCALE:-20}"
seed="${GATEWAY_FUZZ_SEED:-$RANDOM}"
seconds="${ATHERIS_SECONDS:-300}"
dir="${FUZZ_DIR:-$(mktemp -d -t gateway-fuzz.XXXXXX)}"
mkdir -p "$dir"

bash scripts/bootstrap.sh test || exit 1
# atheris comes from the lock's `fuzz` extra (a wheel; no compiler needed). Where that fails,
# `pip install atheris` into .venv does the same; the atheris stage is skipped without it.
UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never \
    .tools/uv/bin/uv sync --locked --quiet --extra test --extra fuzz \
    || echo "soak: could not install atheris from the lock (try: .venv/bin/python -m pip install atheris)" >&2

echo "soak: GATEWAY_FUZZ_SCALE=$scale GATEWAY_FUZZ_SEED=$seed ATHERIS_SECONDS=$seconds FUZZ_DIR=$dir"
failed=()
GATEWAY_FUZZ_SCALE="$scale" GATEWAY_FUZZ_SEED="$seed" \
    .venv/bin/pytest -q -p no:cacheprovider tests/unit/protocol/test_fuzz_core.py tests/e2e/test_fuzz_live.py \
    || failed+=("pytest")

if .venv/bin/python -c "import atheris" 2>/dev/null; then
    for target in wire timeout eras routing sse framing; do
        echo "== atheris $target: ${seconds}s"
        mkdir -p "$dir/corpus-$target"
        .venv/bin/python scripts/fuzz_atheris.py "$target" -max_total_time="$seconds" -print_final_stats=1 \
            -artifact_prefix="$dir/$target-" "$dir/corpus-$target" >"$dir/$target.log" 2>&1
        rc=$?
        grep -E '^(Done |stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)' "$dir/$target.log"
        if [ "$rc" -ne 0 ]; then
            failed+=("atheris $target")
            echo "soak: atheris $target failed (exit $rc); see $dir/$target.log and $dir/$target-*" >&2
            tail -30 "$dir/$target.log" >&2
        fi
    done
else
    echo "soak: atheris is not installed; the atheris stage was skipped" >&2
    failed+=("atheris (not installed)")
fi

if [ "${#failed[@]}" -ne 0 ]; then
    echo "soak: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "soak: OK"
