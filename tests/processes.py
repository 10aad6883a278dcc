"""Stopping the processes the tests start (servers, drivers): politely first, then for sure."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM, up to `grace_s` to exit, then SIGKILL; reaped either way, so no test leaves one behind."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
