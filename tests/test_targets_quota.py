"""Who may name and un-name backdoor targets, over sockets: names sent from outside (`PUT /targets/{label}`,
Alertmanager's webhook) share one cap and cannot crowd out the gateway's own alarm, and un-naming, which
lowers protection, is refused on a gateway without an API key."""

from __future__ import annotations

from pathlib import Path

import httpx

from service.loopback import serve_asgi
from tests.backdoored_vendor import TARGET, BackdooredVendor, TriggerRemover, backdoor_png
from tests.gateway_servers import (
    alert_target,
    delete_target,
    gateway_settings,
    metric_value,
    named_series,
    named_targets,
    put_target,
    running_gateway,
    unpurified_gateway,
    wait_until,
)

KEY = "quota-key"


def _labels(url: str, **headers: str) -> dict[str, str]:
    """The named targets, label → source."""
    return {label: source for label, (source, _) in named_targets(url, **headers).items()}


def test_names_from_outside_cannot_crowd_out_the_alarms_target(tmp_path: Path) -> None:
    vendor = BackdooredVendor()
    with serve_asgi(vendor.app) as vendor_url:
        settings = gateway_settings(tmp_path, vendor_url, policy="on_alarm", shadow_max_labels=2)
        with running_gateway(settings, purifier_factory=lambda device: TriggerRemover()) as url:
            # Without an API key anyone can name: junk fills the outside sources' two slots.
            filled = [put_target(url, "junk-1"), alert_target(url, "junk-2")]
            refused, skipped = put_target(url, "junk-3"), alert_target(url, "junk-4")
            # Triggered traffic until the alarm names the attack's target (judged at most every 0.25 s): bounded
            # by a deadline, not a count of requests (how many fit in the judging interval depends on the machine).
            seeds = iter(range(10**6))

            def alarm_named() -> bool:
                files = [("image", ("0.png", backdoor_png(True, next(seeds)), "image/png"))]
                answered = httpx.post(f"{url}/predict", files=files, timeout=30.0)
                assert answered.status_code == 200, answered.text
                return TARGET in _labels(url)

            wait_until(alarm_named, 120.0, "the alarm naming the target")
            named = _labels(url)
            still_refused = put_target(url, "junk-3")  # the alarm's name takes no slot of theirs, nor frees one
            metrics = httpx.get(f"{url}/metrics", timeout=10.0).text
    assert [answer.status_code for answer in filled] == [200, 200]
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "targets_full"
    assert skipped.status_code == 200 and skipped.json()["not_named"] == ["junk-4"]
    assert named == {"junk-1": "operator", "junk-2": "alertmanager", TARGET: "alarm"}
    assert still_refused.status_code == 409
    assert metric_value(metrics, "zipgate_named_target", raw_label=TARGET, source="alarm") == 1


def test_without_an_api_key_no_one_un_names_a_target() -> None:
    with unpurified_gateway(suspected_targets="9") as url:
        assert put_target(url, "7").status_code == 200  # naming only adds protection: open without a key
        refused = {label: delete_target(url, label) for label in ("7", "9", "5")}  # "5" is not named: still 403
        named = _labels(url)
        operations = httpx.get(f"{url}/openapi.json", timeout=10.0).json()["paths"]["/targets/{label}"]
        metrics = httpx.get(f"{url}/metrics", timeout=10.0).text
    for label, answer in refused.items():
        assert answer.status_code == 403, (label, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "api_key_required" and error["request_id"] == answer.headers["x-request-id"]
        assert "set API_KEY to un-name targets" in error["message"] and "restart" in error["message"]
    assert named == {"9": "setting", "7": "operator"}  # nothing changed
    assert metric_value(metrics, "zipgate_named_target", raw_label="7", source="operator") == 1
    assert "403" in operations["delete"]["responses"] and "403" not in operations["put"]["responses"]


def test_with_an_api_key_the_key_un_names_a_target() -> None:
    auth = {"X-API-Key": KEY}
    with unpurified_gateway(api_key=KEY) as url:
        assert put_target(url, "7", **auth).status_code == 200
        anonymous = delete_target(url, "7")
        cleared = delete_target(url, "7", **auth)
        missing = delete_target(url, "7", **auth)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    assert cleared.status_code == 200 and cleared.json()["targets"] == []
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "target_not_named"


def test_an_operator_and_alertmanager_name_at_most_shadow_max_labels_together_and_a_delete_frees_a_slot() -> None:
    auth = {"X-API-Key": KEY}
    with unpurified_gateway(api_key=KEY, shadow_max_labels=2, suspected_targets="1") as url:
        second, third = put_target(url, "2", **auth), alert_target(url, "3", **auth)  # the setting's "1" takes no slot
        full = put_target(url, "4", **auth)
        again = put_target(url, "2", **auth)  # named already: still a no-op, full or not
        metrics = httpx.get(f"{url}/metrics", timeout=10.0).text
        setting_cleared = delete_target(url, "1", **auth)
        still_full = put_target(url, "4", **auth)  # the setting's name held no slot of theirs
        operator_cleared = delete_target(url, "2", **auth)
        freed = put_target(url, "4", **auth)
        schema = httpx.get(f"{url}/openapi.json", headers=auth, timeout=10.0).json()
    assert second.status_code == third.status_code == again.status_code == 200, again.text
    assert third.json()["named"] == ["3"]
    assert full.status_code == 409 and full.json()["error"]["code"] == "targets_full"
    message = full.json()["error"]["message"]
    assert "'4' cannot be named" in message and "holds 2 named targets from operators and Alertmanager," in message
    assert len(named_series(metrics)) == 3
    assert setting_cleared.status_code == operator_cleared.status_code == 200
    assert still_full.status_code == 409
    assert freed.status_code == 200 and [t["label"] for t in freed.json()["targets"]] == ["3", "4"]
    operations = schema["paths"]["/targets/{label}"]
    assert "409" in operations["put"]["responses"] and "409" not in operations["delete"]["responses"]
