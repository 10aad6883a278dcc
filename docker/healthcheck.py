"""Container health check: exit 0 when the server's health URL answers 200, else 1.

The images have no curl or wget; the standard library is enough and starts in ~30 ms.

Usage:
    python healthcheck.py                                  # http://127.0.0.1:$ZIPGATE_PORT/healthz
    python healthcheck.py http://127.0.0.1:9000/healthz    # any URL (the demo vendor, /readyz)
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = "8080"
TIMEOUT_S = 2.0


def default_url() -> str:
    """The gateway's liveness URL on this container's port (ZIPGATE_PORT, else 8080)."""
    return f"http://127.0.0.1:{os.environ.get('ZIPGATE_PORT') or DEFAULT_PORT}/healthz"


def check(url: str, timeout_s: float = TIMEOUT_S) -> bool:
    """True when GET `url` answers 200 within `timeout_s`.

    Args:
        url: the health endpoint.
        timeout_s: connect and read timeout.

    Returns:
        Whether the server is healthy.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (a fixed local URL)
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):  # HTTPError (4xx/5xx) is a URLError
        return False


def main(argv: list[str]) -> int:
    """Check the URL in argv[1] (or the default) and return the exit code."""
    url = argv[1] if len(argv) > 1 else default_url()
    healthy = check(url)
    if not healthy:
        print(f"unhealthy: {url}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
