"""A real Prometheus scrapes a running gateway with a loopback copy of docker/prometheus.yml; after
traffic, every query of the Grafana dashboard returns data through Prometheus's HTTP API.

Prometheus comes from the Debian package (`scripts/setup.sh` installs it). The gateway runs a tiny
random ε-model in front of a random-weight demo vendor, both under uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy_support import dashboard_queries, load_dashboard, to_promql
from tests.gateway_servers import (
    gateway_settings,
    png_bytes,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
)
from tests.ports import free_port
from tests.prometheus_server import loopback_config, poll, running_prometheus
from tools.dashboard_snapshot import fetch_panels, plot

pytestmark = pytest.mark.slow

# Grafana's $__rate_interval for the test: long enough that rates stay non-zero while we poll.
RATE_INTERVAL = "1m"
# Panels on recorded series that need history older than their 30-minute window (the baseline alarm's z,
# judged against up to a day before it): no test waits for that. Their PromQL is checked by promtool on
# synthetic history instead (tests/prometheus/alerts_test.yml).
NEEDS_HISTORY = frozenset({"job_raw_label:zipgate_shadow_disagreement_rate:excess_z30m"})
ALERT_TESTS = Path(__file__).parent / "prometheus" / "alerts_test.yml"


def _needs_history(expr: str) -> bool:
    return any(name in expr for name in NEEDS_HISTORY)


def test_panels_left_out_for_history_are_unit_tested_with_promtool() -> None:
    exprs = [q.expr for q in dashboard_queries() if _needs_history(q.expr)]
    assert exprs, "no panel needs history: drop NEEDS_HISTORY"
    tested = {
        case["expr"]
        for group in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in group.get("promql_expr_test", [])
    }
    assert all(any(name in expr for expr in tested) for name in NEEDS_HISTORY)


def instant_query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    """Evaluate `promql` now; the result vector (an error from Prometheus fails the test)."""
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=5.0)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


class Traffic:
    """Client traffic of every kind a dashboard panel shows, one round at a time: predictions,
    a purification, one bad image, and bursts that overflow the gateway's 2-image queue (429).

    Rounds repeat while Prometheus is polled: a labelled series (say status="429") appears at its
    first event, and `rate()` only counts increases after Prometheus's first sample of it.
    """

    def __init__(self, gateway_url: str) -> None:
        self.client = httpx.Client(base_url=gateway_url, timeout=30.0)
        self.statuses: dict[int, int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def _count(self, response: httpx.Response) -> None:
        with self._lock:
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1

    def round(self, seed: int) -> None:
        """Send one round of traffic and count the answers by status."""
        self._count(self.client.post("/predict", files=[("image", png_bytes(seed=seed))]))
        self._count(self.client.post("/purify", files=[("image", png_bytes(seed=seed + 1))]))
        self._count(self.client.post("/predict", files=[("image", ("x.png", b"not an image", "image/png"))]))

        def burst(offset: int) -> None:
            images = [("image", png_bytes(seed=seed + offset + s)) for s in range(2)]
            self._count(self.client.post("/predict", files=images))

        threads = [threading.Thread(target=burst, args=(2 * i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def test_prometheus_scrapes_the_gateway_and_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    vendor_dir, model_dir = tiny_vendor_dir(tmp_path), tiny_ddpm_dir(tmp_path)
    # A 2-image queue and batches of one, so concurrent requests overflow it and get 429.
    with (
        running_vendor(vendor_dir) as vendor_url,
        running_gateway(
            gateway_settings(model_dir, vendor_url, queue_limit=2, max_batch_size=1, shadow_rate=1.0)
        ) as gateway_url,
    ):
        port = free_port()
        with running_prometheus(loopback_config(gateway_url, port), port, tmp_path) as prometheus_url:
            # Traffic after the first scrape, so every counter rises between two samples.
            poll("gateway target up", lambda: [r for r in instant_query(prometheus_url, 'up{job="zipgate"} == 1')])
            traffic = Traffic(gateway_url)
            queries = dashboard_queries()
            rate = f"[{RATE_INTERVAL}]"
            # Beyond "some series": the traffic must show up as numbers.
            positive = [
                f"sum(rate(zipgate_images_purified_total{rate}))",
                f'sum(rate(zipgate_requests_total{{status="429"}}{rate}))',
                f'sum(rate(zipgate_upstream_requests_total{{status="200"}}{rate}))',
                f'sum(rate(zipgate_dropped_images_total{{reason="overload"}}{rate}))',
                f'sum(rate(zipgate_requests_total{{endpoint="/purify", status="200"}}{rate}))',
                f"sum(rate(zipgate_shadow_comparisons_total{rate}))",
            ]
            stage_p95 = (
                f"histogram_quantile(0.95, sum by (le, stage) (rate(zipgate_stage_duration_seconds_bucket{rate})))"
            )
            missing: list[str] = []

            def dashboard_complete() -> bool:
                traffic.round(seed=sum(traffic.statuses.values()))
                missing[:] = [
                    f"{q.panel} [{q.ref_id}]: {q.expr}"
                    for q in queries
                    if not _needs_history(q.expr)
                    and not instant_query(prometheus_url, to_promql(q.expr, RATE_INTERVAL))
                ]
                missing.extend(expr for expr in positive if not _first_value(prometheus_url, expr) > 0)
                stages = {s["metric"]["stage"]: float(s["value"][1]) for s in instant_query(prometheus_url, stage_p95)}
                missing.extend(
                    f"p95 of stage {stage}"
                    for stage in ("decode", "queue", "purify", "upstream")
                    if not math.isfinite(stages.get(stage, math.nan))
                )
                return not missing

            try:
                poll("every dashboard query returning data", dashboard_complete)
            except pytest.fail.Exception:
                pytest.fail(f"without data after traffic {traffic.statuses}: {missing}")
            finally:
                traffic.close()
            bad_input = sum(n for status, n in traffic.statuses.items() if 400 <= status < 500 and status != 429)
            assert traffic.statuses.get(200, 0) >= 3 and bad_input >= 1 and traffic.statuses.get(429, 0) >= 1
            assert _first_value(prometheus_url, "sum(zipgate_ready)") == 1

            # The snapshot tool (docs/dashboard.png) draws every panel from the same server.
            now = time.time()
            panels = fetch_panels(prometheus_url, load_dashboard(), now - 120, now, RATE_INTERVAL)
            assert [p.title for p in panels] == [p["title"] for p in load_dashboard()["panels"]]
            waiting = {q.panel for q in queries if _needs_history(q.expr)}
            assert all(p.series or p.title in waiting for p in panels), [p.title for p in panels if not p.series]
            png = plot(panels, tmp_path / "dashboard.png")
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def _first_value(prometheus_url: str, promql: str) -> float:
    """The value of the first series `promql` returns (NaN when it returns none)."""
    result = instant_query(prometheus_url, promql)
    return float(result[0]["value"][1]) if result else math.nan
