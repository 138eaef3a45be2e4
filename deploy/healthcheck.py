"""Container health check: exit 0 when HEALTHCHECK_URL (default: the ops listener's /healthz) answers 2xx.

Used by the image's HEALTHCHECK (slim images have no curl). Standard library only; never follows
redirects off the host and never prints response bodies.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9090/healthz"
TIMEOUT_S = 4.0


def main() -> int:
    url = os.environ.get("HEALTHCHECK_URL") or DEFAULT_URL
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        return 0
    print(f"healthcheck: {url}: HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
