#!/usr/bin/env bash
# The browser the console's acceptance test drives: Debian's `chromium` (/usr/bin/chromium), driven
# by the `playwright` Python package from the test extra. Idempotent: instant once installed; never
# downloads a browser build of Playwright's own. Needs root (apt-get) only when chromium is missing.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "browser-tools.sh: /usr/bin/chromium is missing and apt-get is not available" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends chromium >/dev/null
[ -x /usr/bin/chromium ] || { echo "browser-tools.sh: chromium did not install" >&2; exit 1; }
