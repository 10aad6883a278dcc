"""`zipgate_ready` has one writer, the app: it follows /readyz, loading and draining included."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from service.api import create_app
from service.loopback import serve_asgi, wait_for_http
from service.metrics import GatewayMetrics
from service.workers import PoolConfig, WorkerPool
from tests.fault_servers import StaticApp
from tests.gateway_servers import FakePurifier, gateway_settings, metric_value

LOAD_WAIT_S = 60.0


def _scrape(url: str) -> tuple[int, float]:
    """(/readyz status, zipgate_ready) as a load balancer and Prometheus see them."""
    ready = httpx.get(f"{url}/readyz", timeout=5.0).status_code
    gauge = metric_value(httpx.get(f"{url}/metrics", timeout=5.0).text, "zipgate_ready")
    return ready, gauge


def test_the_ready_gauge_follows_readiness_through_loading_serving_and_draining() -> None:
    loaded = threading.Event()

    def slow_to_load(device: str) -> FakePurifier:
        assert loaded.wait(LOAD_WAIT_S), "the test never let the model load"
        return FakePurifier()

    with serve_asgi(StaticApp(200, b'{"label": 1}')) as upstream_url:
        app = create_app(gateway_settings(Path("unused"), upstream_url), purifier_factory=slow_to_load)
        with serve_asgi(app) as url:
            try:
                assert _scrape(url) == (503, 0.0)  # loading: the pool has not started
            finally:
                loaded.set()
            wait_for_http(f"{url}/readyz", timeout_s=LOAD_WAIT_S)
            assert _scrape(url) == (200, 1.0)
            # Draining begins in the lifespan's state, before the pool hears of it: the pool alone
            # would still say ready here.
            app.state.lifecycle.begin_drain()
            assert _scrape(url) == (503, 0.0)


async def test_the_pool_leaves_the_ready_gauge_to_the_app() -> None:
    metrics = GatewayMetrics()
    metrics.ready.set(7)  # a value nobody else would write
    pool = WorkerPool(PoolConfig(devices=("cpu",)), lambda device: FakePurifier(), metrics)
    await pool.start()
    assert pool.ready
    await pool.drain(timeout_s=1.0)
    await pool.close()
    assert metrics.registry.get_sample_value("zipgate_ready") == 7
