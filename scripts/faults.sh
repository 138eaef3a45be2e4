#!/usr/bin/env bash
# The long fault campaign (issue 14), outside CI: `bash scripts/faults.sh [CALLS] [SESSIONS]`.
#   CALLS     calls per fault in tests/e2e/test_fault_campaign.py (default 10000; CI runs 120): a fault
#             proxy on the control-plane link (reset, drop, stall), server SIGKILL, SIGSTOP/SIGCONT,
#             a restart that dies in its handshake, and a relay restart under MCP SDK clients
#   SESSIONS  per-client sessions in tests/e2e/test_process_hygiene.py (default 5000; CI runs 1000)
# Prints each fault's figures (calls, answered, failed, lost, duplicated, wrong, resent, in transit,
# slowest recovery) and the process-hygiene counts; exits non-zero if any assertion failed.
set -uo pipefail
cd "$(dirname "$0")/.."

calls="${1:-10000}"
sessions="${2:-5000}"
bash scripts/bootstrap.sh test || exit 1
# -o timeout=0: the per-test bound of the CI suite does not apply to a long run.
FAULT_CALLS="$calls" HYGIENE_SESSIONS="$sessions" .venv/bin/pytest -q -o timeout=0 \
    tests/e2e/test_fault_campaign.py tests/e2e/test_process_hygiene.py tests/e2e/test_faults.py
