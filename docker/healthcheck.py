"""Container health check: exit 0 when the server's health URL answers 200, else 1.

The images have no curl or wget; the standard library is enough and starts in ~30 ms.
The image's HEALTHCHECK runs it without a URL for whatever command the container runs, so it
probes the port that command listens on: `--port` of the container's command (PID 1), else the
demo vendor's default port for `demo-vendor`, else ZIPGATE_PORT (8080 unless set).

Usage:
    python healthcheck.py                                  # http://127.0.0.1:<the server's port>/healthz
    python healthcheck.py http://127.0.0.1:9000/healthz    # any URL (the demo vendor, /readyz)
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

DEFAULT_PORT = "8080"
DEMO_VENDOR_PORT = "9000"  # `zipgate demo-vendor`'s default --port (a test keeps them equal)
CONTAINER_COMMAND = Path("/proc/1/cmdline")  # exec-form ENTRYPOINT: PID 1 is the zipgate command
TIMEOUT_S = 2.0


def container_command(path: Path = CONTAINER_COMMAND) -> list[str]:
    """The container's command line (PID 1's arguments), or [] where it cannot be read."""
    try:
        return [arg for arg in path.read_bytes().decode("utf-8", "replace").split("\0") if arg]
    except OSError:
        return []


def default_url(command: list[str], env: Mapping[str, str]) -> str:
    """The liveness URL of the server `command` runs: its --port, else its command's default port.

    Args:
        command: the container's command line, e.g. ["zipgate", "demo-vendor", "--port", "9000"].
        env: the environment (ZIPGATE_PORT is the gateway's port unless --port overrides it).

    Returns:
        http://127.0.0.1:<port>/healthz.
    """
    port = None
    for index, arg in enumerate(command):
        if arg == "--port" and index + 1 < len(command):
            port = command[index + 1]
        elif arg.startswith("--port="):
            port = arg.removeprefix("--port=")
    if port is None:
        port = DEMO_VENDOR_PORT if "demo-vendor" in command else env.get("ZIPGATE_PORT") or DEFAULT_PORT
    return f"http://127.0.0.1:{port}/healthz"


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
    url = argv[1] if len(argv) > 1 else default_url(container_command(), os.environ)
    healthy = check(url)
    if not healthy:
        print(f"unhealthy: {url}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
