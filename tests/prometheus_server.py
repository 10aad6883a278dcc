"""A real Prometheus for the tests: docker/prometheus.yml moved to loopback, run as a process until ready.

Usage:
    port = free_port()
    with running_prometheus(loopback_config(gateway_url, port), port, tmp_path) as prometheus_url:
        poll("gateway target up", lambda: ...)

Prometheus comes from the Debian package (`scripts/setup.sh` installs it).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy_support import PROMETHEUS_CONFIG
from tests.processes import stop_process

SCRAPE_INTERVAL = "1s"
DEADLINE_S = 30.0


def loopback_config(gateway_url: str, prometheus_port: int) -> dict[str, Any]:
    """docker/prometheus.yml with its targets moved to loopback and a 1 s scrape interval."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL)
    targets = {"zipgate": gateway_url.removeprefix("http://"), "prometheus": f"127.0.0.1:{prometheus_port}"}
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [targets[job["job_name"]]]
    return config


@contextlib.contextmanager
def running_prometheus(config: dict[str, Any], port: int, workdir: Path) -> Iterator[str]:
    """Prometheus on 127.0.0.1:`port` with `config`, ready (GET /-/ready = 200); stopped after."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus is not installed; run scripts/setup.sh (Debian package 'prometheus')")
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "prometheus.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(f"{url}/-/ready", process, log_path)
            yield url
        finally:
            stop_process(process)


def _wait_ready(url: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"prometheus not ready within {DEADLINE_S} s: {log_path.read_text()[-2000:]}")


def poll(what: str, condition: Any, timeout_s: float = DEADLINE_S) -> Any:
    """Call `condition()` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout_s} s (last: {value!r})")
        time.sleep(0.2)
