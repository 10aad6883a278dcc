"""The alert rules (docker/alerts.yml, and the same groups as a PrometheusRule in k8s/): valid for
promtool, unit-tested with `promtool test rules` (tests/prometheus/alerts_test.yml), built only on
metrics the gateway exports, and loaded by the compose Prometheus.

promtool comes with the Debian package `prometheus` (scripts/setup.sh installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_support import (
    ALERT_RULES,
    PROMETHEUS_CONFIG,
    REPO,
    gateway_metric_names,
    promql_metric_names,
    render,
)
from tools import prometheus_rule

ALERT_TESTS = REPO / "tests" / "prometheus" / "alerts_test.yml"
COMPOSE = REPO / "docker-compose.yml"
OVERLAYS = ("cpu", "gpu", "gpu-keda")
# What operators must hear about: each entry's metrics must appear in some alert.
REQUIRED_SIGNALS = {
    "readiness": {"zipgate_ready", "up"},
    "answers (5xx, 429, 503, 504)": {"zipgate_requests_total"},
    "deadline drops": {"zipgate_dropped_images_total"},
    "queue near its limit": {"zipgate_queue_depth", "zipgate_queue_limit"},
    "upstream errors": {"zipgate_upstream_requests_total"},
    "batch failures": {"zipgate_batch_failures_total"},
    "OOM splits": {"zipgate_oom_splits_total"},
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(binary).exists():
        pytest.fail("promtool is not installed; run scripts/setup.sh (Debian package 'prometheus')")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    # The unit tests can fail: with the queue alert's threshold moved they do.
    (tmp_path / "docker").mkdir()
    (tmp_path / "tests" / "prometheus").mkdir(parents=True)
    broken = ALERT_RULES.read_text().replace("> 0.8", "> 0.95")
    assert broken != ALERT_RULES.read_text()
    (tmp_path / "docker" / "alerts.yml").write_text(broken)
    copy = tmp_path / "tests" / "prometheus" / "alerts_test.yml"
    copy.write_text(ALERT_TESTS.read_text())
    result = promtool("test", "rules", str(copy))
    assert result.returncode != 0 and "ZipgateQueueNearLimit" in result.stdout + result.stderr


def test_every_alert_has_a_case_where_it_fires_and_one_where_it_stays_silent() -> None:
    cases = [
        case for group in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in group.get("alert_rule_test", [])
    ]
    for alert in alerts():
        name = alert["alert"]
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == name]
        assert any(expected), f"{name}: no test case where it fires"
        assert any(not alerts_ for alerts_ in expected), f"{name}: no test case where it stays silent"


def test_alerts_use_only_metrics_the_gateway_exports_and_cover_what_operators_need() -> None:
    # `up` is Prometheus's own, per scrape target; a recorded series counts once a rule before it records it.
    known = gateway_metric_names() | {"up"}
    used: set[str] = set()
    for rule in rules():
        name = rule.get("alert") or rule["record"]
        names = promql_metric_names(rule["expr"])
        assert names, f"{name}: no metric in {rule['expr']!r}"
        assert names <= known, f"{name}: {sorted(names - known)} are neither exported nor recorded before"
        used |= names
        if "record" in rule:
            known.add(rule["record"])
            continue
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description"} <= set(rule["annotations"])
    for signal, metrics in REQUIRED_SIGNALS.items():
        assert metrics <= used, f"no alert on {signal}"


def test_kubernetes_prometheus_rule_holds_the_same_groups() -> None:
    assert prometheus_rule.main(["--check"]) == 0, "run python -m tools.prometheus_rule"
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    for overlay in OVERLAYS:
        (rule,) = [o for o in render(REPO / "k8s" / "overlays" / overlay) if o["kind"] == "PrometheusRule"]
        assert rule["spec"]["groups"] == groups, overlay


def test_compose_prometheus_loads_the_rules_beside_its_config() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == [ALERT_RULES.name]  # relative to the config file
    prometheus = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in prometheus["volumes"] if volume.startswith("./"))
    config_in_container = Path(mounts[f"./{PROMETHEUS_CONFIG.relative_to(REPO).as_posix()}"])
    rules_in_container = Path(mounts[f"./{ALERT_RULES.relative_to(REPO).as_posix()}"])
    assert rules_in_container == config_in_container.parent / ALERT_RULES.name
    assert f"--config.file={config_in_container}" in prometheus["command"]


def test_every_alert_is_in_the_deployment_guides_table() -> None:
    rows = [
        line for line in (REPO / "docs" / "deployment.md").read_text().splitlines() if line.startswith("| `Zipgate")
    ]
    documented = {line.split("`")[1] for line in rows}
    assert documented == {alert["alert"] for alert in alerts()}
