"""The closed loop through a running gateway: raw answers where the attack failed, purified ones for named targets.

The vendor stand-in answers "7" (the target) for an image with a bright pixel (the trigger), "1"
otherwise; the purifier removes the trigger (tests/backdoored_vendor.py). Everything over sockets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from service.loopback import serve_asgi
from service.shadow.alarm import AlarmRule
from tests.backdoored_vendor import CLEAN_LABEL, TARGET, BackdooredVendor, TriggerRemover, backdoor_png
from tests.gateway_servers import gateway_settings, metric_value, running_gateway

KEY = "loop-key"


def _predict(url: str, flags: list[bool], seed: int = 0, **headers: str) -> httpx.Response:
    files = [("image", (f"{i}.png", backdoor_png(t, seed + i), "image/png")) for i, t in enumerate(flags)]
    return httpx.post(f"{url}/predict", files=files, headers=headers, timeout=30.0)


def _labels(response: httpx.Response) -> list[Any]:
    assert response.status_code == 200, response.text
    return [p["label"] for p in response.json()["predictions"]]


def _gateway(tmp_path: Path, vendor_url: str, **overrides: Any) -> Any:
    settings = gateway_settings(tmp_path, vendor_url, **overrides)
    return running_gateway(settings, purifier_factory=lambda device: TriggerRemover())


def test_on_alarm_answers_raw_until_its_own_alarm_names_the_target_then_purifies_that_label(tmp_path: Path) -> None:
    vendor = BackdooredVendor()
    with serve_asgi(vendor.app) as vendor_url, _gateway(tmp_path, vendor_url, policy="on_alarm") as url:
        # Before any alarm, the raw answers: the triggered images get the target (the detection delay's cost).
        below = int(AlarmRule().min_count) - 1
        first = _predict(url, [True] * below + [False])
        assert _labels(first) == [TARGET] * below + [CLEAN_LABEL]
        block = first.json()["purification"]
        assert block["policy"] == "on_alarm" and block["answers"] == ["raw"] * (below + 1)
        assert block["named_targets"] == []
        # Every image was still asked about twice: raw (the "-raw" request id) and purified.
        raw_calls = [rid for rid in vendor.request_ids if rid.endswith("-raw")]
        assert len(raw_calls) == below + 1 and len(vendor.request_ids) == 2 * (below + 1)
        # More triggered traffic: the alarm's share rule names the target (judged at most every 0.25 s, so a
        # few requests may pass before it judges them), and from then on that label's answers are purified.
        for seed in range(1, 200):
            answered = _predict(url, [True], seed=100 + seed)
            if answered.json()["purification"]["named_targets"] == [TARGET]:
                break
        else:
            raise AssertionError("the alarm never named the target")
        after = _predict(url, [True, False], seed=1000)
        assert _labels(after) == [CLEAN_LABEL, CLEAN_LABEL]
        assert after.json()["purification"]["answers"] == ["purified", "raw"]
        state = httpx.get(f"{url}/targets", timeout=10.0).json()
        metrics = httpx.get(f"{url}/metrics", timeout=10.0).text
    assert state["policy"] == "on_alarm"
    (target,) = state["targets"]
    assert target["label"] == TARGET and target["source"] == "alarm" and "share" in target["rule"]
    assert metric_value(metrics, "zipgate_named_target", raw_label=TARGET, source="alarm") == 1
    assert metric_value(metrics, "zipgate_answers_total", answer="purified") >= 1
    assert metric_value(metrics, "zipgate_shadow_comparisons_total", raw_label=TARGET) >= below + 1


def test_until_alarm_purifies_everything_until_a_target_is_named_then_answers_the_rest_raw(tmp_path: Path) -> None:
    vendor = BackdooredVendor()
    with serve_asgi(vendor.app) as vendor_url:
        with _gateway(tmp_path, vendor_url, policy="until_alarm") as url:
            before = _predict(url, [True, False])
        with _gateway(tmp_path, vendor_url, policy="until_alarm", suspected_targets=TARGET) as url:
            named = _predict(url, [True, False])
            state = httpx.get(f"{url}/targets", timeout=10.0).json()
    assert _labels(before) == [CLEAN_LABEL, CLEAN_LABEL]
    assert before.json()["purification"]["answers"] == ["purified", "purified"]
    assert _labels(named) == [CLEAN_LABEL, CLEAN_LABEL]
    assert named.json()["purification"]["answers"] == ["purified", "raw"]
    assert state["targets"][0]["label"] == TARGET and state["targets"][0]["source"] == "setting"


def test_an_operator_names_and_clears_a_target_behind_the_api_key(tmp_path: Path) -> None:
    vendor = BackdooredVendor()
    auth = {"X-API-Key": KEY}
    with serve_asgi(vendor.app) as vendor_url, _gateway(tmp_path, vendor_url, policy="on_alarm", api_key=KEY) as url:
        assert httpx.put(f"{url}/targets/{TARGET}", timeout=10.0).status_code == 401
        named = httpx.put(f"{url}/targets/{TARGET}", headers=auth, timeout=10.0)
        assert named.status_code == 200 and named.json()["targets"][0]["source"] == "operator"
        assert _labels(_predict(url, [True], **auth)) == [CLEAN_LABEL]  # purified: its raw label is named
        assert httpx.delete(f"{url}/targets/{TARGET}", headers=auth, timeout=10.0).json()["targets"] == []
        assert _labels(_predict(url, [True], seed=5, **auth)) == [TARGET]  # raw again
        missing = httpx.delete(f"{url}/targets/{TARGET}", headers=auth, timeout=10.0)
        other = httpx.put(f"{url}/targets/other", headers=auth, timeout=10.0)
        wrong_method = httpx.patch(f"{url}/targets/{TARGET}", headers=auth, timeout=10.0)
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "DELETE, PUT"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "target_not_named"
    assert other.status_code == 400 and "other" in other.json()["error"]["message"]


def test_more_suspected_targets_than_shadow_max_labels_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match=r"suspected_targets.*3 labels, more than shadow_max_labels \(2\)"):
        gateway_settings(None, "http://127.0.0.1:9", shadow_max_labels=2, suspected_targets="1,2,3")
    repeated = gateway_settings(None, "http://127.0.0.1:9", shadow_max_labels=2, suspected_targets="1,2,1")
    assert set(repeated.suspected_targets) == {"1", "2"}  # a label named twice counts once


def test_a_failed_raw_call_fails_the_request_with_502_and_the_gateway_goes_on(tmp_path: Path) -> None:
    vendor = BackdooredVendor(fail_suffix="-raw")
    with serve_asgi(vendor.app) as vendor_url, _gateway(tmp_path, vendor_url, policy="on_alarm") as url:
        failed = _predict(url, [True])
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_error"
        health = httpx.get(f"{url}/readyz", timeout=10.0)
    assert health.status_code == 200


def test_the_loop_needs_purification() -> None:
    with pytest.raises(ValueError, match="purification_enabled"):
        gateway_settings(None, "http://127.0.0.1:9", policy="on_alarm")
