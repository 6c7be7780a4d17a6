#!/usr/bin/env python3
"""Container health check: GET $NOPORTS_HEALTH_URL (default the srvd metrics port's /healthz).

Exit 0 when it answers 200 within 4 s, 1 otherwise (the Docker HEALTHCHECK contract)."""

import os
import sys
import urllib.error
import urllib.request

URL = os.environ.get("NOPORTS_HEALTH_URL", "http://127.0.0.1:9464/healthz")


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=4) as r:  # noqa: S310 - loopback URL
            ok = r.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {URL}: {exc}", file=sys.stderr)
        return 1
    print(("healthy: " if ok else "unhealthy: ") + URL)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
