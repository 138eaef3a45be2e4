#!/usr/bin/env bash
# Run the default setup: the HTTP demo server (notes, on 127.0.0.1:8781 as routing.yaml expects),
# then the gateway with routing.yaml (embedded relay on loopback; clock demo over stdio).
# Extra arguments go to the gateway. Ctrl-C or SIGTERM stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh demo

NOTES_PORT=8781  # must match servers.notes.http.url in routing.yaml
# routing.yaml spawns `python3 -m gateway.demo.clock`: let python3 be the venv's, which has `mcp`.
export PATH="$PWD/.venv/bin:$PATH"

exec 3< <(exec python3 -m gateway.demo.notes --host 127.0.0.1 --port "$NOTES_PORT")
notes_pid=$!
gateway_pid=""
stop() {
    [ -z "$gateway_pid" ] || kill -TERM "$gateway_pid" 2>/dev/null || true
    kill -TERM "$notes_pid" 2>/dev/null || true
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

if ! IFS= read -r -t 30 ready <&3; then
    echo "run.sh: the notes demo server did not start (is port $NOTES_PORT free?)" >&2
    exit 1
fi
echo "$ready"

gateway --routes routing.yaml "$@" &
gateway_pid=$!
wait "$gateway_pid"
