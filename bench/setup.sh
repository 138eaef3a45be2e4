#!/usr/bin/env bash
# Install what the benchmark needs; quiet and idempotent (each step is skipped when already done):
#   .venv                      the project with its test and bench extras (py-spy), from uv.lock
#   .tools/                    Node 22 and @modelcontextprotocol/server-everything (scripts/conformance-tools.sh)
#   bench/.venv-mcp-proxy/     the peer mcp-proxy (PyPI), in its own venv because it needs mcp<2
#   bench/.node/               the peer supergateway (npm)
# Peer versions are pinned here so a full run is comparable with the last one; bump them on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."

MCP_PROXY_VERSION=0.13.0
SUPERGATEWAY_VERSION=4.0.0

bash scripts/bootstrap.sh bench  # the test extra and py-spy, from the lock
bash scripts/conformance-tools.sh

if ! bench/.venv-mcp-proxy/bin/python -c "import importlib.metadata as m; assert m.version('mcp-proxy') == '$MCP_PROXY_VERSION'" 2>/dev/null; then
    rm -rf bench/.venv-mcp-proxy
    python3 -m venv bench/.venv-mcp-proxy
    bench/.venv-mcp-proxy/bin/python -m pip install --quiet --quiet "mcp-proxy==$MCP_PROXY_VERSION" "mcp<2" \
        || { echo "setup: mcp-proxy did not install: its scenarios will fail" >&2; rm -rf bench/.venv-mcp-proxy; }
fi

if [ ! -f bench/.node/node_modules/supergateway/package.json ] \
    || ! grep -q "\"version\": \"$SUPERGATEWAY_VERSION\"" bench/.node/node_modules/supergateway/package.json; then
    mkdir -p bench/.node
    [ -f bench/.node/package.json ] || echo '{"private": true}' > bench/.node/package.json
    npm install --prefix bench/.node --save-exact --no-audit --no-fund --loglevel=error \
        "supergateway@$SUPERGATEWAY_VERSION" >/dev/null \
        || echo "setup: supergateway did not install: its scenarios will fail" >&2
fi
