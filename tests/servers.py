"""Shared loopback-server fixtures: run any ASGI app under uvicorn for a test, on a real socket.

Usage:
    with running_server(create_vendor_app(path)) as base_url:
        httpx.get(f"{base_url}/healthz")

    with running_server(app, ready_path="/readyz") as base_url:  # also wait for HTTP readiness
        ...

The uvicorn thread and its start-up deadline come from `tests/fault_servers.serve_asgi`; this
module adds the optional HTTP readiness poll, which apps that load models in their lifespan
(and answer 503 until ready) need.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx

from tests.fault_servers import serve_asgi


def wait_for_http(url: str, *, timeout_s: float = 10.0, expect_status: int = 200) -> None:
    """Poll `url` with GET until it answers `expect_status`.

    Raises:
        TimeoutError: no such answer before the deadline (the last status or error is named).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                status = client.get(url).status_code
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if status == expect_status:
                    return
                last = f"status {status}"
            time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer {expect_status} within {timeout_s} s (last: {last})")


@contextlib.contextmanager
def running_server(app: Any, *, ready_path: str | None = None, startup_timeout_s: float = 10.0,
                   shutdown_timeout_s: float = 5.0) -> Iterator[str]:
    """Serve an ASGI app on a free 127.0.0.1 port in a background thread for the `with` block.

    Args:
        app: any ASGI application; its lifespan start-up runs before the block and its
            shutdown after it.
        ready_path: if given, also poll GET `ready_path` until it answers 200.
        startup_timeout_s: deadline for the socket to accept connections (and for `ready_path`).
        shutdown_timeout_s: how long to wait for the server thread to stop.

    Yields:
        The base URL, e.g. "http://127.0.0.1:43117" (no trailing slash).

    Raises:
        RuntimeError: the server thread died during start-up.
        TimeoutError: not ready before the deadline.
    """
    with serve_asgi(app, startup_timeout_s=startup_timeout_s, shutdown_timeout_s=shutdown_timeout_s) as base_url:
        if ready_path is not None:
            wait_for_http(f"{base_url}{ready_path}", timeout_s=startup_timeout_s)
        yield base_url
