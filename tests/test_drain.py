"""Graceful drain: SIGTERM → /readyz 503, new work refused, queued and running work finishes, exit 0."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import select
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
import torch

from service import loopback
from service.api import create_app
from service.errors import DRAINING_RETRY_AFTER_S, LOADING_RETRY_AFTER_S, NotReady
from service.loopback import wait_for_http
from service.metrics import GatewayMetrics
from service.workers.pool import PoolConfig, WorkerPool
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import (
    FakePurifier,
    GatedPurifier,
    gateway_settings,
    get,
    metric_value,
    png_bytes,
    post,
    serving_gateway_server,
    tiny_ddpm_dir,
    wait_until,
)

# Serves `run_gateway` on a socket the test bound and passed down (so the port is known up front).
SERVE_SCRIPT = """
import socket, sys
from service.api.server import run_gateway
from service.config import load_settings
sys.exit(run_gateway(load_settings(), sockets=[socket.socket(fileno=int(sys.argv[1]))]))
"""
# The same with a GatedPurifier instead of the model, injected through gateway_server's purifier_factory
# (run_gateway has none): each batch that reaches the gate writes a byte to the arrivals pipe; the test
# closing its end of the gate pipe opens the gate.
GATED_SERVE_SCRIPT = """
import functools, os, socket, sys, threading
import service.api.server as server
from service.config import load_settings
from tests.gateway_servers import GatedPurifier

sock, gate, arrivals = (int(fd) for fd in sys.argv[1:4])

class ReportingGate(GatedPurifier):
    def __call__(self, batch, steps, generators, variant=None):
        os.write(arrivals, b".")
        return super().__call__(batch, steps, generators, variant)

purifier = ReportingGate()

def open_at_end_of_file():
    while os.read(gate, 1):
        pass
    purifier.open()

threading.Thread(target=open_at_end_of_file, daemon=True).start()
server.gateway_server = functools.partial(server.gateway_server, purifier_factory=lambda device: purifier)
sys.exit(server.run_gateway(load_settings(), sockets=[socket.socket(fileno=sock)]))
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
        with serve_asgi(app, ready_path="/readyz", startup_timeout_s=60) as url:
            app.state.lifecycle.begin_drain()
            ready = get(f"{url}/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            refused = post(f"{url}/predict", files=_files(1))
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
            assert int(refused.headers["retry-after"]) >= 1  # another replica can take it now
            assert get(f"{url}/healthz").status_code == 200
            # The v2 probes answer for themselves: still live, no longer ready (the vendor says yes to both).
            live, v2_ready = get(f"{url}/v2/health/live"), get(f"{url}/v2/health/ready")
            assert (live.status_code, live.json()) == (200, {"live": True})
            assert (v2_ready.status_code, v2_ready.json()) == (503, {"ready": False})
            metrics = get(f"{url}/metrics")
            assert metrics.status_code == 200 and metric_value(metrics.text, "zipgate_ready") == 0.0


@pytest.fixture(name="bound_socket")
def bound_socket_fixture() -> Iterator[socket.socket]:
    with loopback.bound_socket() as sock:
        yield sock


def _start_gateway(
    sock: socket.socket,
    env_settings: dict[str, str],
    log_path: Path,
    *,
    script: str = SERVE_SCRIPT,
    fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """The gateway in a subprocess serving `sock` (`script` gets its fd, then `fds`); its logs go to a
    file (a pipe could fill up and stall it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **{f"ZIPGATE_{k.upper()}": v for k, v in env_settings.items()}}
    passed = (sock.fileno(), *fds)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", script, *map(str, passed)],
            pass_fds=passed,
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _start_gated_gateway(
    sock: socket.socket, ddpm: Path, upstream_url: str, gate: SubprocessGate, log_path: Path
) -> subprocess.Popen[bytes]:
    """GATED_SERVE_SCRIPT with one image per batch, each held at `gate`, and budgets (200 s) no test reaches."""
    settings = {
        "model_path": str(ddpm),
        "upstream_url": upstream_url,
        "max_batch_size": "1",
        "max_wait_ms": "1",
        "devices": "cpu",
        "dtype": "fp32",
        "drain_timeout_s": "200",
        "request_timeout_s": "200",
    }
    return _start_gateway(sock, settings, log_path, script=GATED_SERVE_SCRIPT, fds=gate.child_fds)


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


class SubprocessGate:
    """The test's end of GATED_SERVE_SCRIPT's gate: two pipes, one to let batches through, one on
    which the gateway reports each batch that reached the gate."""

    def __init__(self) -> None:
        self._gate_read, self._gate_write = os.pipe()
        self._arrivals_read, self._arrivals_write = os.pipe()
        self._open_fds = {self._gate_read, self._gate_write, self._arrivals_read, self._arrivals_write}

    @property
    def child_fds(self) -> tuple[int, int]:
        """The gateway's ends (gate, arrivals), in the order GATED_SERVE_SCRIPT reads them."""
        return self._gate_read, self._arrivals_write

    def started(self) -> None:
        """The gateway holds its own copies of its ends now: close ours."""
        self._close(self._gate_read, self._arrivals_write)

    def batches_arrived(self, timeout_s: float) -> int:
        """Batches that reached the gate since the last call, waiting up to `timeout_s` for the first."""
        readable, _, _ = select.select([self._arrivals_read], [], [], timeout_s)
        return len(os.read(self._arrivals_read, 64)) if readable else 0

    def open(self) -> None:
        """Let every batch through from now on (the gateway reads end-of-file)."""
        self._close(self._gate_write)

    def close(self) -> None:
        self._close(*self._open_fds)

    def _close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._open_fds:  # never twice: the number may belong to another file by then
                self._open_fds.discard(fd)
                os.close(fd)


@pytest.fixture
def gate() -> Iterator[SubprocessGate]:
    gate = SubprocessGate()
    yield gate
    gate.close()


@pytest.mark.slow
def test_sigterm_finishes_queued_and_running_work_then_exits_0(
    ddpm: Path, bound_socket: socket.socket, gate: SubprocessGate, tmp_path: Path
) -> None:
    log_path = tmp_path / "gateway.log"
    upstream = StaticApp(200, b'{"label": 7}')
    with serve_asgi(upstream) as upstream_url:
        # One image per batch, each held at the gate until this test lets it through: at SIGTERM one
        # batch is running and two images are queued behind it, however loaded the machine is.
        process = _start_gated_gateway(bound_socket, ddpm, upstream_url, gate, log_path)
        gate.started()
        url = _url(bound_socket)
        statuses: dict[int, int] = {}

        def send(seed: int) -> None:
            response = post(
                f"{url}/predict", files=_files(seed), headers={"X-Request-ID": f"drain-{seed}"}, timeout=200
            )
            statuses[seed] = response.status_code

        threads = [threading.Thread(target=send, args=(seed,)) for seed in range(3)]
        try:
            try:
                wait_for_http(f"{url}/readyz", timeout_s=120)
            except TimeoutError:
                pytest.fail(f"gateway never ready: {log_path.read_text()[-2000:]}")
            for thread in threads:
                thread.start()
            assert gate.batches_arrived(timeout_s=60) == 1, log_path.read_text()[-2000:]  # the others queue
            # Nothing leaves the queue while the only worker waits at the gate: this stays true until we act.
            wait_until(
                lambda: metric_value(get(f"{url}/metrics").text, "zipgate_queue_depth") == len(threads) - 1,
                timeout_s=60,
                what="the other images queued behind the batch at the gate",
            )
            process.send_signal(signal.SIGTERM)
            try:
                after = get(f"{url}/readyz", timeout=5).status_code
            except httpx.TransportError:
                after = None  # the listener is already closed: as good as 503 for a load balancer
            assert after in (503, None)
        except BaseException:
            process.kill()  # not left serving after a failure here
            process.wait()
            raise
        finally:
            gate.open()  # the running batch and the queued ones finish during the drain
            for thread in threads:
                if thread.ident is not None:  # started
                    thread.join(200)
        code, stderr = _stop(process, log_path)
    assert statuses == {0: 200, 1: 200, 2: 200}, stderr[-3000:]
    assert code == 0, stderr[-3000:]
    assert len(upstream.requests) == len(threads)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "zipgate.access" and line.get("endpoint") == "/predict"]
    assert sorted(line["request_id"] for line in access) == ["drain-0", "drain-1", "drain-2"]
    assert all(line["status"] == 200 for line in access)
    assert any("draining" in line["message"] for line in lines)


def _connect_outcome(address: tuple[str, int]) -> str:
    """What a new connection meets now: "refused", or the status of a GET /readyz on it ("closed": no answer)."""
    try:
        conn = http.client.HTTPConnection(*address, timeout=10)
        conn.request("GET", "/readyz")
        response = conn.getresponse()
    except ConnectionRefusedError:
        return "refused"
    except (ConnectionError, http.client.HTTPException):
        return "closed"
    try:
        return str(response.status)
    finally:
        conn.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed this idle connection (end of file, or a reset)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True


@pytest.mark.slow
def test_sigterm_refuses_new_connections_closes_idle_ones_and_lets_work_in_flight_finish(
    ddpm: Path, bound_socket: socket.socket, gate: SubprocessGate, tmp_path: Path
) -> None:
    """What a load balancer sees of a drain (docs/deployment.md): the listener closes, so new connections
    are refused (a connect error, safe to retry on another replica); idle keep-alive connections are
    closed; a request already in flight finishes with its answer and `Connection: close`."""
    log_path = tmp_path / "gateway.log"
    with serve_asgi(StaticApp(200, b'{"label": 7}')) as upstream_url:
        process = _start_gated_gateway(bound_socket, ddpm, upstream_url, gate, log_path)
        gate.started()
        url = _url(bound_socket)
        address = bound_socket.getsockname()
        bound_socket.close()  # the gateway's copy is the listener's only one now: its close is the listener's end
        in_flight: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: in_flight.append(post(f"{url}/predict", files=_files(0), timeout=200)), daemon=True
        )
        try:
            try:
                wait_for_http(f"{url}/readyz", timeout_s=120)
            except TimeoutError:
                pytest.fail(f"gateway never ready: {log_path.read_text()[-2000:]}")
            idle = http.client.HTTPConnection(*address, timeout=10)  # a kept-alive connection, idle at SIGTERM
            idle.request("GET", "/healthz")
            assert idle.getresponse().read() and idle.sock is not None
            sender.start()
            assert gate.batches_arrived(timeout_s=60) == 1, log_path.read_text()[-2000:]
            process.send_signal(signal.SIGTERM)
            # New connections: refused once the listener closes (uvicorn sees the signal within its 0.1 s tick;
            # one that slips in before that gets the drain's 503 with Retry-After, or is closed unanswered).
            outcomes: list[str] = []
            wait_until(
                lambda: outcomes.append(_connect_outcome(address)) or outcomes[-1] == "refused",
                timeout_s=30,
                what="new connections refused",
            )
            assert set(outcomes) <= {"refused", "503", "closed"}, outcomes
            wait_until(lambda: _closed_by_peer(idle.sock), timeout_s=30, what="the idle connection closed")
            assert process.poll() is None  # still draining: the request at the gate holds it
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            gate.open()
            if sender.ident is not None:
                sender.join(200)
        code, stderr = _stop(process, log_path)
    assert code == 0, stderr[-3000:]
    (answer,) = in_flight
    assert answer.status_code == 200 and answer.headers["connection"] == "close", answer.text


def test_the_deployment_guide_says_what_a_load_balancer_sees_of_a_drain() -> None:
    guide = (REPO / "docs" / "deployment.md").read_text()
    assert "new connections are refused" in guide and "new requests get 503" not in guide


@pytest.mark.slow
def test_drain_gives_up_after_drain_timeout_and_still_exits_0(
    ddpm: Path, bound_socket: socket.socket, tmp_path: Path
) -> None:
    log_path = tmp_path / "gateway.log"
    # The vendor would answer after 120 s, so only the drain can end this request within _stop's 30 s.
    slow_vendor = StaticApp(200, b'{"label": 7}', delay_s=120.0)
    with serve_asgi(slow_vendor) as upstream_url:
        process = _start_gateway(
            bound_socket,
            {
                "model_path": str(ddpm),
                "upstream_url": upstream_url,
                "steps": "2",
                "devices": "cpu",
                "dtype": "fp32",
                "drain_timeout_s": "1",
                "upstream_timeout_s": "60",
            },
            log_path,
        )
        url = _url(bound_socket)
        wait_for_http(f"{url}/readyz", timeout_s=120)
        outcome: list[httpx.Response | str] = []

        def send() -> None:
            try:
                outcome.append(
                    post(f"{url}/predict", files=_files(0), headers={"X-Request-ID": "on-vendor"}, timeout=60)
                )
            except httpx.TransportError as exc:
                outcome.append(type(exc).__name__)

        thread = threading.Thread(target=send)
        thread.start()
        wait_until(lambda: len(slow_vendor.requests) == 1, timeout_s=30, what="request waiting on the vendor")
        process.send_signal(signal.SIGTERM)
        code, stderr = _stop(process, log_path)  # exits after drain_timeout_s = 1, not the vendor's 120 s
        thread.join(30)
    assert code == 0, stderr[-3000:]
    assert outcome and isinstance(outcome[0], httpx.Response), outcome
    answer = outcome[0]  # cut short while it waited on the vendor: a 503 JSON, not uvicorn's text 500
    assert answer.status_code == 503 and answer.headers["content-type"].startswith("application/json"), answer.text
    assert answer.json()["error"]["request_id"] == "on-vendor" and int(answer.headers["retry-after"]) >= 1


REQUESTS, IMAGES_PER_REQUEST = 8, 16


@pytest.mark.slow
def test_requests_cut_short_by_the_drain_timeout_get_a_503_json_with_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    # One batch per request (16 images), each held at the purifier's gate: after the exit one batch
    # is let through, the next waits there until the 2 s drain has cut every request still open.
    purifier = GatedPurifier()
    with serve_asgi(StaticApp(200, b'{"label": 7}')) as upstream_url:
        settings = gateway_settings(
            Path("unused"), upstream_url, drain_timeout_s=2.0, max_batch_size=IMAGES_PER_REQUEST, request_timeout_s=120
        )
        with serving_gateway_server(settings, purifier_factory=lambda device: purifier) as (server, url):
            answers: dict[str, httpx.Response | str] = {}

            def send(n: int) -> None:
                files = [
                    ("image", (f"{i}.png", png_bytes(seed=n * 100 + i), "image/png")) for i in range(IMAGES_PER_REQUEST)
                ]
                try:
                    answers[f"cut-{n}"] = post(f"{url}/predict", files=files, headers={"X-Request-ID": f"cut-{n}"})
                except httpx.TransportError as exc:  # a connection closed without an answer is a failure too
                    answers[f"cut-{n}"] = repr(exc)

            def all_arrived() -> bool:
                """One request's batch at the gate, the other requests' images queued behind it."""
                queued = metric_value(get(f"{url}/metrics").text, "zipgate_queue_depth")
                return purifier.waiting == 1 and queued >= (REQUESTS - 1) * IMAGES_PER_REQUEST

            clients = [threading.Thread(target=send, args=(n,)) for n in range(REQUESTS)]
            try:
                for client in clients:
                    client.start()
                wait_until(all_arrived, timeout_s=60, what="one batch at the gate, the rest queued")
                server.handle_exit(signal.SIGTERM, None)
                purifier.allow(1)  # the running batch finishes during the drain; the next one does not
                for client in clients:
                    client.join(60)
            finally:
                purifier.open()  # the pool's shutdown waits for the batch at the gate
    statuses = {}
    for request_id, answer in sorted(answers.items()):
        assert isinstance(answer, httpx.Response), f"{request_id}: {answer}"
        statuses[request_id] = answer.status_code
        if answer.status_code == 200:
            continue
        assert answer.status_code == 503, f"{request_id}: {answer.status_code} {answer.text[:200]}"
        assert answer.headers["content-type"].startswith("application/json")
        error = answer.json()["error"]
        assert error["code"] == "not_ready" and error["request_id"] == request_id == answer.headers["x-request-id"]
        assert int(answer.headers["retry-after"]) >= 1
    assert len(statuses) == REQUESTS and 503 in statuses.values(), statuses  # some were cut: the drain ran out
    durations = [record.drain_s for record in caplog.records if hasattr(record, "drain_s")]
    assert durations and all(seconds > 0 for seconds in durations), [r.getMessage() for r in caplog.records]


@pytest.mark.slow
def test_a_body_still_arriving_when_the_drain_runs_out_gets_a_503_json() -> None:
    recorder = StaticApp(200, b"{}")
    with (
        serve_asgi(recorder) as upstream_url,
        serving_gateway_server(gateway_settings(None, upstream_url, drain_timeout_s=1.0, body_read_timeout_s=60.0)) as (
            server,
            url,
        ),
    ):
        host, port = httpx.URL(url).host, httpx.URL(url).port
        assert port is not None
        with socket.create_connection((host, port), timeout=10) as client:
            client.sendall(
                b"POST /predict HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\nX-Request-ID: trickle-1\r\n\r\n" + b'{"images": ['
            )
            wait_until(
                lambda: metric_value(get(f"{url}/metrics").text, "zipgate_inflight_requests") >= 1,
                what="the trickled request in flight (the scrape does not count itself)",
            )
            server.handle_exit(signal.SIGTERM, None)
            client.settimeout(0.1)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # a byte every 0.1 s, past the drain budget, until it answers
                try:
                    first = client.recv(1, socket.MSG_PEEK)
                except TimeoutError:
                    client.sendall(b" ")
                    continue
                assert first, "closed without an answer"
                break
            client.settimeout(10)
            answer = http.client.HTTPResponse(client)
            answer.begin()
            body = answer.read()
    assert answer.status == 503, (answer.status, body[:300])
    assert answer.headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "not_ready" and error["request_id"] == "trickle-1" == answer.headers["x-request-id"]
    assert int(answer.headers["retry-after"]) == DRAINING_RETRY_AFTER_S
    assert recorder.requests == []


def _pool(delay_s: float) -> WorkerPool:
    return WorkerPool(
        PoolConfig(devices=("cpu",), max_batch_size=1, max_wait_ms=0.0),
        lambda device: FakePurifier(delay_s=delay_s),
        GatewayMetrics(),
    )


async def test_the_drain_log_gives_the_time_since_the_drain_began(caplog: pytest.LogCaptureFixture) -> None:
    pool = _pool(delay_s=1.0)
    await pool.start()
    submitted = asyncio.create_task(pool.submit(torch.zeros(1, 1, 16, 16), request_id="r"))
    await asyncio.sleep(0.1)  # the batch is computing
    with caplog.at_level(logging.INFO, logger="service.workers.pool"):
        await pool.drain(timeout_s=0.0, began=time.monotonic() - 2.0)  # the budget was spent before the call
    with pytest.raises(NotReady) as info:
        await submitted
    await pool.close()
    timed_out = [record for record in caplog.records if "timed out" in record.getMessage()]
    assert len(timed_out) == 1, [record.getMessage() for record in caplog.records]
    assert timed_out[0].drain_s >= 2.0, timed_out[0].getMessage()  # not "after 0.00 s"
    assert info.value.retry_after_s == DRAINING_RETRY_AFTER_S


async def test_a_pool_not_started_yet_says_come_back_after_loading() -> None:
    with pytest.raises(NotReady) as info:
        await _pool(delay_s=0.0).submit(torch.zeros(1, 1, 16, 16), request_id="r")
    assert info.value.retry_after_s == LOADING_RETRY_AFTER_S
