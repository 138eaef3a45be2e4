#!/usr/bin/env bash
# Install what the benchmark needs; quiet and idempotent (each step is skipped when already done):
#   .venv                      the project (scripts/bootstrap.sh test) plus py-spy for the profile
#   .tools/                    Node 22 and @modelcontextprotocol/server-everything (scripts/conformance-tools.sh)
#   bench/.venv-mcp-proxy/     the peer mcp-proxy (PyPI), in its own venv because it needs mcp<2
#   bench/.node/               the peer supergateway (npm)
# Peer versions are pinned here so a full run is comparable with the last one; bump them on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."

MCP_PROXY_VERSION=0.13.0
SUPERGATEWAY_VERSION=4.0.0
PY_SPY_VERSION=0.4.3

bash scripts/bootstrap.sh test
if ! .venv/bin/python -c "import importlib.metadata as m; assert m.version('py-spy') == '$PY_SPY_VERSION'" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --quiet "py-spy==$PY_SPY_VERSION" \
        || echo "setup: py-spy did not install: the profile step will say 'not available'" >&2
fi
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
