"""Loopback ports for the processes the tests start (Prometheus, Alertmanager, chromedriver, `zipgate serve`)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a process that binds it itself.

    The probe socket is closed before the port is handed out, so another process could take it first;
    the tests accept that small race (in-process servers bind port 0 themselves: service.loopback).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
