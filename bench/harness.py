"""Shared benchmark plumbing: servers in their own processes on loopback, and a load generator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.loopback import bound_socket, url_of, wait_for_http

REPO = Path(__file__).resolve().parents[1]
GATEWAY_SCRIPT = """
import socket, sys
from service.api.server import run_gateway
from service.config import load_settings
sys.exit(run_gateway(load_settings(), sockets=[socket.socket(fileno=int(sys.argv[1]))]))
"""


@dataclass(frozen=True)
class Round:
    """One measured round: throughput, latency percentiles, and answers by status."""

    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    statuses: dict[int, int] = field(default_factory=dict)


def spawn(script: str, sock: socket.socket, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Run `python -c script <fd>` serving on `sock`, with extra environment variables."""
    return subprocess.Popen(
        [sys.executable, "-c", script, str(sock.fileno())],
        pass_fds=[sock.fileno()],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    """Poll `url` until it answers 200, failing fast (with its stderr) if the process died."""
    try:
        wait_for_http(url, timeout_s=timeout_s, alive=lambda: process.poll() is None)
    except RuntimeError:
        stderr = process.stderr.read().decode()[-2000:] if process.stderr is not None else ""
        raise RuntimeError(f"{url} exited: {stderr}") from None


def stop(*processes: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the gateway drains), then wait; kill what does not exit in 60 s."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def gateway_server(env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `zipgate serve` process with ZIPGATE_* overrides; yields its URL and process once /readyz is 200."""
    sock = bound_socket()
    # As `zipgate serve` does (service/cli.py): OpenMP waits passively unless the environment says otherwise.
    openmp = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    process = spawn(GATEWAY_SCRIPT, sock, {"ZIPGATE_LOG_LEVEL": "warning", **openmp, **env})
    try:
        wait_ready(f"{url_of(sock)}/readyz", process)
        yield url_of(sock), process
    finally:
        stop(process)
        sock.close()


@contextlib.contextmanager
def gateway_process(env: dict[str, str]) -> Iterator[str]:
    """`gateway_server` when only the URL matters."""
    with gateway_server(env) as (url, _process):
        yield url


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc/<pid>/stat), in seconds.

    The process's own threads only (not its children): the gateway's cost, whoever else shares the cores.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces: utime and stime
    # are fields 14 and 15 of the line, i.e. 11 and 12 after the closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[int, tuple[float, float]]:
    """Per thread of a process: (seconds on a CPU, seconds runnable but waiting for one), from schedstat.

    Time in neither is time asleep: waiting for I/O, a lock or the GIL.
    """
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread may end while it is read
            on_cpu_ns, waiting_ns, _slices = (int(v) for v in (task / "schedstat").read_text().split())
            times[int(task.name)] = (on_cpu_ns / 1e9, waiting_ns / 1e9)
    return times


def percentile_ms(ordered: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of sorted latencies in seconds, in ms."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else float("nan")


async def load(
    url: str, body: bytes, requests: int, concurrency: int, content_type: str = "image/png", timeout_s: float = 300.0
) -> Round:
    """Send `requests` POSTs from `concurrency` workers on one pooled client; latencies of 200s only."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def worker() -> None:
            for _ in remaining:
                started = time.perf_counter()
                response = await client.post(url, content=body, headers={"Content-Type": content_type})
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return Round(
        len(latencies) / elapsed,
        percentile_ms(ordered, 0.5),
        percentile_ms(ordered, 0.95),
        percentile_ms(ordered, 0.99),
        requests - statuses[200],
        dict(statuses),
    )


def median_round(rounds: list[Round]) -> Round:
    """Field-wise median of rounds (errors summed)."""

    def median(name: str) -> float:
        return statistics.median(getattr(r, name) for r in rounds)

    return Round(
        rps=median("rps"),
        p50_ms=median("p50_ms"),
        p95_ms=median("p95_ms"),
        p99_ms=median("p99_ms"),
        errors=sum(r.errors for r in rounds),
    )
