"""Graceful drain: SIGTERM → /readyz 503, new work refused, queued and running work finishes, exit 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api import create_app
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import (
    gateway_settings,
    get,
    metric_value,
    png_bytes,
    post,
    tiny_ddpm_dir,
    wait_until,
)
from tests.servers import running_server, wait_for_http

# Serves `run_gateway` on a socket the test bound and passed down (so the port is known up front).
SERVE_SCRIPT = """
import socket, sys
from service.api.server import run_gateway
from service.config import load_settings
sys.exit(run_gateway(load_settings(), sockets=[socket.socket(fileno=int(sys.argv[1]))]))
"""
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_ddpm_dir(tmp_path_factory.mktemp("models"))


def _files(seed: int) -> list:
    return [("image", ("x.png", png_bytes(seed=seed), "image/png"))]


def test_draining_turns_readyz_503_and_refuses_new_work_but_probes_answer(ddpm: Path) -> None:
    with serve_asgi(StaticApp(200, b'{"label": 1}')) as upstream_url:
        app = create_app(gateway_settings(ddpm, upstream_url))
        with running_server(app, ready_path="/readyz", startup_timeout_s=60) as url:
            app.state.lifecycle.begin_drain()
            ready = get(f"{url}/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            refused = post(f"{url}/predict", files=_files(1))
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
            assert get(f"{url}/healthz").status_code == 200
            metrics = get(f"{url}/metrics")
            assert metrics.status_code == 200 and metric_value(metrics.text, "zipgate_ready") == 0.0


@pytest.fixture
def bound_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def _start_gateway(sock: socket.socket, env_settings: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """The gateway in a subprocess serving `sock`; its logs go to a file (a pipe could fill up and stall it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **{f"ZIPGATE_{k.upper()}": v for k, v in env_settings.items()}}
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, str(sock.fileno())], pass_fds=[sock.fileno()],
                                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()
    return f"http://{host}:{port}"


def _stop(process: subprocess.Popen[bytes], log_path: Path) -> tuple[int, str]:
    """Wait for the (signalled) gateway to exit; its exit code and its log."""
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the gateway did not exit within 30 s of SIGTERM: {log_path.read_text()[-2000:]}")
    return process.returncode, log_path.read_text()


@pytest.mark.slow
def test_sigterm_finishes_queued_and_running_work_then_exits_0(ddpm: Path, bound_socket: socket.socket,
                                                              tmp_path: Path) -> None:
    log_path = tmp_path / "gateway.log"
    upstream = StaticApp(200, b'{"label": 7}')
    with serve_asgi(upstream) as upstream_url:
        # Enough steps that one image keeps the only worker busy for a while, one image per batch.
        process = _start_gateway(bound_socket, {
            "model_path": str(ddpm), "upstream_url": upstream_url, "steps": "10", "max_batch_size": "1",
            "max_wait_ms": "1", "devices": "cpu", "dtype": "fp32", "drain_timeout_s": "200",
            "request_timeout_s": "200"}, log_path)
        url = _url(bound_socket)
        try:
            wait_for_http(f"{url}/readyz", timeout_s=120)
        except TimeoutError:
            process.kill()
            process.wait()
            pytest.fail(f"gateway never ready: {log_path.read_text()[-2000:]}")
        # Warm torch up first (the first batch is many times slower), so the timing below is about the drain.
        assert post(f"{url}/predict", files=_files(9), timeout=200).status_code == 200
        statuses: dict[int, int] = {}

        def send(seed: int) -> None:
            response = post(f"{url}/predict", files=_files(seed), headers={"X-Request-ID": f"drain-{seed}"},
                            timeout=200)
            statuses[seed] = response.status_code

        threads = [threading.Thread(target=send, args=(seed,)) for seed in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda: metric_value(get(f"{url}/metrics").text, "zipgate_queue_depth") >= 1,
                   timeout_s=30, what="images queued behind the running batch")
        process.send_signal(signal.SIGTERM)
        try:
            after = get(f"{url}/readyz", timeout=5).status_code
        except httpx.TransportError:
            after = None  # the listener is already closed: as good as 503 for a load balancer
        assert after in (503, None)
        for thread in threads:
            thread.join(200)
        code, stderr = _stop(process, log_path)
    assert statuses == {0: 200, 1: 200, 2: 200}, stderr[-3000:]
    assert code == 0, stderr[-3000:]
    assert len(upstream.requests) == 4
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "zipgate.access" and line.get("endpoint") == "/predict"]
    assert sorted(line["request_id"] for line in access if line["request_id"].startswith("drain-")) == [
        "drain-0", "drain-1", "drain-2"]
    assert all(line["status"] == 200 for line in access)
    assert any("draining" in line["message"] for line in lines)


@pytest.mark.slow
def test_drain_gives_up_after_drain_timeout_and_still_exits_0(ddpm: Path, bound_socket: socket.socket,
                                                              tmp_path: Path) -> None:
    log_path = tmp_path / "gateway.log"
    slow_vendor = StaticApp(200, b'{"label": 7}', delay_s=30.0)
    with serve_asgi(slow_vendor) as upstream_url:
        process = _start_gateway(bound_socket, {
            "model_path": str(ddpm), "upstream_url": upstream_url, "steps": "2", "devices": "cpu",
            "dtype": "fp32", "drain_timeout_s": "1", "upstream_timeout_s": "60"}, log_path)
        url = _url(bound_socket)
        wait_for_http(f"{url}/readyz", timeout_s=120)
        outcome: list[object] = []

        def send() -> None:
            try:
                outcome.append(post(f"{url}/predict", files=_files(0), timeout=60).status_code)
            except httpx.TransportError as exc:
                outcome.append(type(exc).__name__)

        thread = threading.Thread(target=send)
        thread.start()
        wait_until(lambda: len(slow_vendor.requests) == 1, timeout_s=30, what="request waiting on the vendor")
        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code, stderr = _stop(process, log_path)
        stopped_in = time.monotonic() - sent_at
        thread.join(10)
    assert code == 0, stderr[-3000:]
    assert stopped_in < 10.0  # drain_timeout_s = 1 (+ start-up of the shutdown), not the vendor's 30 s
    assert outcome and outcome[0] != 200
