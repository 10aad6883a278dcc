"""The backdoor alarm end to end: a real Prometheus, loaded with docker/alerts.yml, scrapes a gateway in
shadow mode in front of a backdoored vendor, and fires `ZipgateSuspectedBackdoorTarget` naming the target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.loopback import serve_asgi
from tests.backdoored_vendor import TARGET, BackdooredVendor, TriggerRemover, backdoor_png
from tests.deploy_support import ALERT_RULES
from tests.gateway_servers import gateway_settings, metric_sum, running_gateway, wait_until
from tests.ports import free_port
from tests.prometheus_server import loopback_config, poll, running_prometheus

pytestmark = pytest.mark.slow
MIN_COUNT = 20  # the rule's minimum count of disagreements


def _firing(prometheus_url: str) -> list[dict[str, Any]]:
    alerts = httpx.get(f"{prometheus_url}/api/v1/alerts", timeout=5.0).json()["data"]["alerts"]
    return [
        a for a in alerts if a["labels"]["alertname"] == "ZipgateSuspectedBackdoorTarget" and a["state"] == "firing"
    ]


def test_a_burst_of_triggered_requests_fires_the_alarm_naming_the_target(tmp_path: Path) -> None:
    vendor = BackdooredVendor()
    with (
        serve_asgi(vendor.app) as vendor_url,
        running_gateway(
            gateway_settings(tmp_path, vendor_url, shadow_rate=1.0), purifier_factory=lambda device: TriggerRemover()
        ) as url,
    ):
        port = free_port()
        config = loopback_config(url, port) | {"rule_files": [str(ALERT_RULES)]}
        config["global"]["evaluation_interval"] = "1s"
        with running_prometheus(config, port, tmp_path) as prometheus_url:
            rules = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=5.0).json()["data"]["groups"]
            assert "zipgate-backdoor" in {group["name"] for group in rules}, yaml.safe_dump(rules)
            for seed in range(MIN_COUNT - 1):  # one short of the minimum: no alarm, whatever the share
                assert (
                    httpx.post(
                        f"{url}/predict",
                        files=[("image", ("t.png", backdoor_png(True, seed), "image/png"))],
                        timeout=30.0,
                    ).status_code
                    == 200
                )
            wait_until(
                lambda: (
                    metric_sum(httpx.get(f"{url}/metrics").text, "zipgate_shadow_comparisons_total") == MIN_COUNT - 1
                )
            )
            poll("Prometheus scraping the disagreements", lambda: _sum(prometheus_url) == MIN_COUNT - 1)
            assert not _firing(prometheus_url)
            httpx.post(
                f"{url}/predict", files=[("image", ("t.png", backdoor_png(True, 99), "image/png"))], timeout=30.0
            )
            (alert,) = poll("the backdoor alarm", lambda: _firing(prometheus_url), timeout_s=60.0)
    assert alert["labels"]["raw_label"] == TARGET
    assert alert["annotations"]["summary"] == f"suspected backdoor target: label {TARGET}"


def _sum(prometheus_url: str) -> float:
    result = httpx.get(
        f"{prometheus_url}/api/v1/query",
        timeout=5.0,
        params={"query": 'sum(zipgate_shadow_disagreements_total{job="zipgate"})'},
    ).json()
    values = result["data"]["result"]
    return float(values[0]["value"][1]) if values else 0.0
