"""Alertmanager's webhook names backdoor targets: `POST /targets/alerts` over a real socket, a real
Alertmanager delivering the alert to it, and the shipped Alertmanager configurations (compose, k8s)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.api.logging import RequestIdFilter
from service.api.routes_alerts import MAX_ALERTS, MAX_ALERTS_BODY_BYTES
from service.shadow.labels import bounded_label
from tests.deploy_support import REPO, render_cpu_overlay_with
from tests.gateway_servers import delete_target, metric_value, named_series, put_target, unpurified_gateway
from tests.ports import free_port
from tests.processes import stop_process

KEY = "alerts-key"
ALERT = "ZipgateSuspectedBackdoorTarget"
ALERTMANAGER_CONFIG = REPO / "docker" / "alertmanager.yml"
ALERTMANAGER_BINARY = Path("/usr/bin/prometheus-alertmanager")
DEADLINE_S = 60.0


def alert(raw_label: str | None, status: str = "firing", name: str = ALERT) -> dict[str, Any]:
    labels = {"alertname": name, "severity": "critical"} | ({} if raw_label is None else {"raw_label": raw_label})
    return {"status": status, "labels": labels, "annotations": {}, "startsAt": "2026-12-07T00:00:00Z"}


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    """Alertmanager's webhook payload, version 4, as it sends one."""
    return {
        "version": "4",
        "groupKey": "{}:{}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "zipgate-targets",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def post_alerts(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/targets/alerts", timeout=10.0, **kwargs)


def test_firing_alerts_name_their_raw_labels_and_nothing_else_does(caplog: pytest.LogCaptureFixture) -> None:
    long_label = "x" * 500
    sent = notification(
        alert("7"),
        alert("3", status="resolved"),  # resolved: names nothing
        alert("other"),  # the bucket of labels past the cap: skipped, not an error
        alert(None),  # no raw_label
        alert(""),
        alert("7", name="AnotherRule"),  # named already (by this notification)
        alert("5", name="r" * 500),
        alert(long_label),
    )
    caplog.handler.addFilter(RequestIdFilter())  # as the gateway's own handler: each line gets its request id
    with (
        unpurified_gateway(suspected_targets="9") as url,
        caplog.at_level(logging.INFO, logger="service.api.routes_alerts"),
    ):
        answer = post_alerts(url, json=sent)
        again = post_alerts(url, json=notification(alert("9"), alert("7", status="resolved")))
        state = httpx.get(f"{url}/targets", timeout=10.0).json()
        metrics = httpx.get(f"{url}/metrics", timeout=10.0).text
    assert answer.status_code == 200, answer.text
    assert answer.json()["named"] == ["7", "5", bounded_label(long_label)] and answer.json()["not_named"] == []
    assert answer.json()["targets"] == state["targets"]  # the second notification named nothing
    # A label named before keeps its first source; a resolved alert clears nothing (names latch).
    assert again.status_code == 200 and again.json()["named"] == []
    targets = {t["label"]: t for t in state["targets"]}
    assert set(targets) == {"9", "7", "5", bounded_label(long_label)}
    assert targets["9"]["source"] == "setting"
    assert targets["7"]["source"] == "alertmanager" and targets["7"]["rule"] == ALERT
    assert targets["5"]["rule"] == bounded_label("r" * 500)
    assert metric_value(metrics, "zipgate_named_target", raw_label="7", source="alertmanager") == 1
    assert metric_value(metrics, "zipgate_named_target", raw_label="9", source="setting") == 1
    # One INFO line per label named, with the request id of the notification that named it.
    lines = [r for r in caplog.records if r.name == "service.api.routes_alerts" and r.levelno == logging.INFO]
    assert [getattr(r, "raw_label", None) for r in lines] == answer.json()["named"]
    assert {getattr(r, "request_id", None) for r in lines} == {answer.headers["x-request-id"]}


def test_a_full_board_names_no_more_and_the_answer_says_which_were_not_named(caplog: pytest.LogCaptureFixture) -> None:
    sent = notification(alert("9"), alert("7"), alert("5"), alert("4"), alert("3"), alert("5", name="AnotherRule"))
    auth = {"X-API-Key": KEY}
    gateway = unpurified_gateway(api_key=KEY, shadow_max_labels=2, suspected_targets="9")
    with gateway as url, caplog.at_level(logging.WARNING):
        answer = post_alerts(url, json=sent, headers=auth)
        delete_target(url, "7", **auth)
        freed = post_alerts(url, json=sent, headers=auth)
        metrics = httpx.get(f"{url}/metrics", timeout=10.0).text
    assert answer.status_code == 200, answer.text  # not a 4xx: Alertmanager would retry it forever
    # The setting's "9" takes neither of the two slots that operators and Alertmanager share.
    assert answer.json()["named"] == ["7", "5"] and answer.json()["not_named"] == ["4", "3"]
    assert [t["label"] for t in answer.json()["targets"]] == ["9", "7", "5"]
    # One WARNING per notification that dropped some, naming what it dropped.
    warnings = [r for r in caplog.records if r.name == "service.api.routes_alerts" and r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "2 labels" in warnings[0].getMessage()
    assert [getattr(r, "not_named", None) for r in warnings] == [["4", "3"]] * 2
    assert freed.json()["named"] == ["7"] and freed.json()["not_named"] == ["4", "3"]  # "7" cleared: named again
    assert len(named_series(metrics)) == 3


def test_an_alertmanager_name_holds_until_an_operator_clears_it() -> None:
    auth = {"X-API-Key": KEY}  # un-naming needs the key (tests/test_targets_quota.py)
    with unpurified_gateway(api_key=KEY) as url:
        post_alerts(url, json=notification(alert("4")), headers=auth)
        cleared = delete_target(url, "4", **auth)
        renamed = post_alerts(url, json=notification(alert("4")), headers=auth)
    assert cleared.status_code == 200 and cleared.json()["targets"] == []
    assert renamed.json()["named"] == ["4"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "bad_request"),
        (b"", "application/json", 400, "bad_request"),
        (b"[]", "application/json", 422, "invalid_request"),
        (b'{"version": "4"}', "application/json", 422, "invalid_request"),
        (b'{"alerts": "firing"}', "application/json", 422, "invalid_request"),
        (b'{"alerts": [{"status": "pending", "labels": {}}]}', "application/json", 422, "invalid_request"),
        (b'{"alerts": [{"status": "firing", "labels": {"raw_label": 7}}]}', "application/json", 422, "invalid_request"),
        (b'{"alerts": []}', "text/plain", 415, "unsupported_media_type"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "bad_request"),  # deeper than json can go
    ],
    ids=["not-json", "empty", "array", "no-alerts", "alerts-not-a-list", "bad-status", "int-label", "text", "deep"],
)
def test_a_malformed_notification_is_a_json_4xx(body: bytes, content_type: str, status: int, code: str) -> None:
    with unpurified_gateway() as url:
        answer = post_alerts(url, content=body, headers={"Content-Type": content_type})
        state = httpx.get(f"{url}/targets", timeout=10.0).json()
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["message"] and error["request_id"]
    assert state["targets"] == []


def test_a_notification_of_another_payload_version_is_400_naming_both_versions() -> None:
    with unpurified_gateway() as url:
        answers = {
            version: post_alerts(url, json={**notification(alert("7")), "version": version})
            for version in ("3", "5", "")
        }
        unversioned = {key: value for key, value in notification(alert("7")).items() if key != "version"}
        read_as_4 = post_alerts(url, json=unversioned)
    for version, answer in answers.items():
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "bad_request"
        assert error["message"] == (
            f"Alertmanager webhook payload version {version!r} is not supported; this gateway reads version '4'"
        )
    assert read_as_4.status_code == 200 and read_as_4.json()["named"] == ["7"]  # nothing else named


def test_limits_on_what_the_sender_controls() -> None:
    over_size = b'{"alerts": [], "pad": "' + b"x" * MAX_ALERTS_BODY_BYTES + b'"}'
    many = notification(*[alert(None, status="resolved")] * (MAX_ALERTS + 1))

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit must hold on the stream
        yield over_size[: len(over_size) // 2]
        yield over_size[len(over_size) // 2 :]

    with unpurified_gateway() as url:
        declared = post_alerts(url, content=over_size, headers={"Content-Type": "application/json"})
        streamed = post_alerts(url, content=chunked(), headers={"Content-Type": "application/json"})
        counted = post_alerts(url, json=many)
        at_limit = post_alerts(url, json=notification(*[alert(None, status="resolved")] * MAX_ALERTS))
    for answer in (declared, streamed, counted):
        assert answer.status_code == 413 and answer.json()["error"]["code"] == "payload_too_large", answer.text
    assert "max_alerts" in counted.json()["error"]["message"]
    assert at_limit.status_code == 200 and at_limit.json()["named"] == at_limit.json()["not_named"] == []


def test_the_api_key_guards_the_webhook() -> None:
    with unpurified_gateway(api_key=KEY) as url:
        refused = post_alerts(url, json=notification(alert("7")))
        wrong = post_alerts(url, json=notification(alert("7")), headers={"Authorization": "Bearer nope"})
        state = httpx.get(f"{url}/targets", headers={"X-API-Key": KEY}, timeout=10.0).json()
        accepted = post_alerts(url, json=notification(alert("7")), headers={"Authorization": f"Bearer {KEY}"})
    assert refused.status_code == wrong.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized" and state["targets"] == []
    assert accepted.status_code == 200 and accepted.json()["named"] == ["7"]


def test_the_webhook_shares_its_path_with_put_and_delete_of_a_label_named_alerts() -> None:
    with unpurified_gateway() as url:
        wrong_method = httpx.get(f"{url}/targets/alerts", timeout=10.0)
        put = put_target(url, "alerts")
        schema = httpx.get(f"{url}/openapi.json", timeout=10.0).json()
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"  # as the schema says
    assert put.status_code == 200 and put.json()["targets"][0]["label"] == "alerts"
    operation = schema["paths"]["/targets/alerts"]["post"]
    body = operation["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["alerts"]["maxItems"] == MAX_ALERTS
    assert {"400", "401", "413", "415", "422"} <= set(operation["responses"])


# --- A real Alertmanager --------------------------------------------------------------------------


def loopback_alertmanager_config(gateway_url: str, key_file: Path) -> dict[str, Any]:
    """docker/alertmanager.yml with the webhook at the loopback gateway and the key file in `key_file`."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (route,) = config["route"]["routes"]
    route["group_interval"] = "1s"  # the shipped group_wait is 0s already
    (receiver,) = [r for r in config["receivers"] if r["name"] == route["receiver"]]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["url"].endswith("/targets/alerts")
    webhook["url"] = f"{gateway_url}/targets/alerts"
    webhook["http_config"]["authorization"]["credentials_file"] = str(key_file)
    return config


@contextlib.contextmanager
def running_alertmanager(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """Alertmanager on a free loopback port with `config`, ready (GET /-/ready = 200), no cluster; stopped after."""
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    log_path = workdir / "alertmanager.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(ALERTMANAGER_BINARY),
                f"--config.file={config_path}",
                f"--storage.path={workdir / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
                "--cluster.listen-address=",
                "--log.level=debug",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            poll(lambda: process.poll() is None and _answers(f"{url}/-/ready"), "Alertmanager ready", log_path)
            yield url
        finally:
            stop_process(process)


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(url, timeout=1.0).status_code == 200
    return False


def poll(condition: Any, what: str, log_path: Path) -> None:
    """Call `condition()` until it is true; fail with `what` and Alertmanager's log at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE_S} s; Alertmanager's log: {log_path.read_text()[-3000:]}")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(
    not ALERTMANAGER_BINARY.exists(),
    reason="Alertmanager is not installed (Debian package prometheus-alertmanager; scripts/setup_tests.sh)",
)
def test_a_real_alertmanager_delivers_the_alert_and_the_gateway_names_its_label(tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY)
    auth = {"X-API-Key": KEY}
    with unpurified_gateway(api_key=KEY) as gateway_url:
        config = loopback_alertmanager_config(gateway_url, key_file)
        with running_alertmanager(config, tmp_path) as alertmanager_url:
            posted = httpx.post(
                f"{alertmanager_url}/api/v2/alerts",
                json=[
                    {"labels": {"alertname": ALERT, "raw_label": "7", "job": "zipgate"}},
                    {"labels": {"alertname": "ZipgateOverloaded", "raw_label": "3"}},  # routed elsewhere
                ],
                timeout=10.0,
            )
            assert posted.status_code == 200, posted.text

            def named() -> dict[str, Any]:
                targets = httpx.get(f"{gateway_url}/targets", headers=auth, timeout=10.0).json()["targets"]
                return {t["label"]: t for t in targets}

            poll(lambda: "7" in named(), "the gateway names the alert's raw_label", tmp_path / "alertmanager.log")
            metrics = httpx.get(f"{gateway_url}/metrics", timeout=10.0).text
        targets = named()
    assert targets["7"]["source"] == "alertmanager" and targets["7"]["rule"] == ALERT
    assert "3" not in targets
    assert metric_value(metrics, "zipgate_named_target", raw_label="7", source="alertmanager") == 1


# --- The shipped configurations -------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool is not installed (prometheus-alertmanager)")
def test_the_compose_alertmanager_config_is_valid_and_sends_the_alert_to_the_gateway() -> None:
    result = subprocess.run(
        ["amtool", "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    routed = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", f"alertname={ALERT}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert routed.stdout.strip() == "zipgate-targets", routed.stdout + routed.stderr
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    override = yaml.safe_load((REPO / "docker" / "compose.alertmanager.yml").read_text())
    prometheus = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    (receiver,) = [r for r in config["receivers"] if r["name"] == "zipgate-targets"]
    (webhook,) = receiver["webhook_configs"]
    gateway_port = compose["services"]["gateway"]["ports"][0].rsplit(":", 1)[1]
    assert webhook["url"] == f"http://gateway:{gateway_port}/targets/alerts" and not webhook["send_resolved"]
    assert webhook["max_alerts"] <= MAX_ALERTS
    alertmanager = override["services"]["alertmanager"]
    assert (
        alertmanager["environment"]["ZIPGATE_API_KEY"]
        == compose["services"]["gateway"]["environment"]["ZIPGATE_API_KEY"]
    )
    assert webhook["http_config"]["authorization"]["credentials_file"] in alertmanager["command"][0]
    alertmanager_port = alertmanager["ports"][0].rsplit(":", 1)[1]
    (target,) = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert target == f"alertmanager:{alertmanager_port}"


def test_the_k8s_alertmanager_config_reaches_the_service_with_the_gateways_key(tmp_path: Path) -> None:
    objects = render_cpu_overlay_with("monitoring/alertmanager", tmp_path)
    service = objects[("Service", "zipgate")]
    config = objects[("AlertmanagerConfig", "zipgate-targets")]
    (receiver,) = config["spec"]["receivers"]
    (webhook,) = receiver["webhookConfigs"]
    namespace, port = service["metadata"]["namespace"], service["spec"]["ports"][0]["port"]
    assert webhook["url"] == f"http://{service['metadata']['name']}.{namespace}.svc:{port}/targets/alerts"
    assert config["metadata"]["namespace"] == namespace and webhook["sendResolved"] is False
    assert webhook["maxAlerts"] <= MAX_ALERTS
    assert config["spec"]["route"]["matchers"] == [{"name": "alertname", "value": ALERT}]
    (container,) = objects[("Deployment", "zipgate")]["spec"]["template"]["spec"]["containers"]
    (key_env,) = [e for e in container["env"] if e["name"] == "ZIPGATE_API_KEY"]
    assert webhook["httpConfig"]["authorization"]["credentials"] == key_env["valueFrom"]["secretKeyRef"]
    policy = objects[("NetworkPolicy", "zipgate-alertmanager")]
    assert policy["spec"]["podSelector"] == objects[("NetworkPolicy", "zipgate")]["spec"]["podSelector"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
