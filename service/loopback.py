"""Loopback servers: an ASGI app under uvicorn in a thread on a free 127.0.0.1 port, for the demo, bench and tests.

Usage:
    with serve_asgi(create_vendor_app(path), ready_path="/healthz") as base_url:
        httpx.get(f"{base_url}/predict")

The socket is bound before the server starts and handed to it, so there is no race for the port;
start-up is polled with a deadline, never slept on.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import uvicorn

POLL_S = 0.02  # between readiness checks
GRACE_S = 1  # uvicorn's wait for in-flight requests on leaving the block (whole seconds, as uvicorn types it)


def bound_socket() -> socket.socket:
    """A TCP socket bound to a free 127.0.0.1 port, to hand to a server (in this process or a child)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL of a bound socket, e.g. "http://127.0.0.1:43117" (no trailing slash)."""
    host, port = sock.getsockname()
    return f"http://{host}:{port}"


def wait_for_http(
    url: str,
    *,
    timeout_s: float = 10.0,
    expect_status: int = 200,
    alive: Callable[[], bool] | None = None,
    hopeless: Callable[[httpx.Response], bool] | None = None,
) -> None:
    """Poll `url` with GET until it answers `expect_status`.

    Args:
        url: what to poll.
        timeout_s: deadline in seconds.
        expect_status: the status that means ready.
        alive: checked before each poll; False means the server is gone (its process or thread ended).
        hopeless: an answer for which waiting longer will not help (e.g. start-up failed).

    Raises:
        RuntimeError: `alive` said the server is gone, or `hopeless` matched an answer.
        TimeoutError: no such answer before the deadline (the last status or error is named).
    """
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise RuntimeError(f"the server behind {url} exited before it was ready (last: {last})")
            try:
                response = client.get(url)
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == expect_status:
                    return
                last = f"status {response.status_code}: {response.text[:500]}"
                if hopeless is not None and hopeless(response):
                    raise RuntimeError(f"{url} will not become ready: {last}")
            time.sleep(POLL_S)
    raise TimeoutError(f"{url} did not answer {expect_status} within {timeout_s} s (last: {last})")


def wait_started(ready: Callable[[], bool], thread: threading.Thread, timeout_s: float, what: str) -> None:
    """Poll `ready` until true, failing fast if the server thread died or the deadline passed."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not thread.is_alive():
            raise RuntimeError(f"{what} exited during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout_s} s")
        time.sleep(POLL_S / 2)


@contextlib.contextmanager
def serve_uvicorn(
    server: uvicorn.Server,
    *,
    ready_path: str | None = None,
    startup_timeout_s: float = 10.0,
    shutdown_timeout_s: float = 5.0,
    name: str = "uvicorn",
    sock: socket.socket | None = None,
) -> Iterator[str]:
    """Run a configured uvicorn server (any subclass) on a free loopback port in a background thread.

    Args:
        server: the server, not yet running; its config's host and port are ignored.
        ready_path: if given, also poll GET `ready_path` until it answers 200 (apps that load
            models in their lifespan answer 503 until then).
        startup_timeout_s: deadline for accepting connections (`server.started`), and again for `ready_path`.
        shutdown_timeout_s: how long to wait for the thread to end after `should_exit` is set on
            leaving the block (the caller may have stopped it already, e.g. with `handle_exit`).
        name: the server's name in the thread name and in errors.
        sock: a socket bound already (`bound_socket`), e.g. so that servers can be told each other's URLs before
            any starts; None: a new one. Closed on leaving the block either way.

    Yields:
        The base URL, e.g. "http://127.0.0.1:43117" (no trailing slash).

    Raises:
        RuntimeError: the server thread died during start-up, or had not stopped in time.
        TimeoutError: not ready before the deadline.
    """
    sock = bound_socket() if sock is None else sock
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"{name}-server")
    thread.start()
    try:
        wait_started(lambda: server.started, thread, startup_timeout_s, name)
        if ready_path is not None:
            wait_for_http(f"{url_of(sock)}{ready_path}", timeout_s=startup_timeout_s, alive=thread.is_alive)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(shutdown_timeout_s)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"{name} did not stop within {shutdown_timeout_s} s")


@contextlib.contextmanager
def serve_asgi(
    app: Any,
    *,
    ready_path: str | None = None,
    startup_timeout_s: float = 10.0,
    shutdown_timeout_s: float = 5.0,
    sock: socket.socket | None = None,
) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free loopback port in a background thread.

    Its lifespan start-up runs before the block and its shutdown after it. In-flight requests
    are cancelled after a short grace period, so a slow handler cannot stall the teardown.

    Args:
        app: the ASGI application (lifespan events are sent; an app without them is fine).
        ready_path, startup_timeout_s, shutdown_timeout_s, sock: as for `serve_uvicorn`.

    Yields:
        The base URL, e.g. "http://127.0.0.1:43117".
    """
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="auto", timeout_graceful_shutdown=GRACE_S
    )
    with serve_uvicorn(
        uvicorn.Server(config),
        ready_path=ready_path,
        startup_timeout_s=startup_timeout_s,
        shutdown_timeout_s=shutdown_timeout_s,
        sock=sock,
    ) as base_url:
        yield base_url
