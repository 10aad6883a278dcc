"""Shadow mode and votes through a running gateway, against a real backdoored-vendor stand-in over sockets.

The vendor answers "7" (the attacker's target) when an image holds a bright pixel (the trigger)
and "1" otherwise. The purifier darkens every pixel above mid-grey, which removes the trigger:
raw and purified answers then disagree exactly on triggered images.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from service.loopback import serve_asgi
from tests.backdoored_vendor import CLEAN_LABEL, TARGET, BackdooredVendor, TriggerRemover, backdoor_png
from tests.gateway_servers import gateway_settings, metric_sum, metric_value, running_gateway, wait_until


def _post(url: str, png: bytes, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("image", ("x.png", png, "image/png"))], timeout=30.0, **kwargs)


def _metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=10.0).text


def test_shadow_mode_counts_disagreements_on_triggered_images_and_captures_them(tmp_path: Path) -> None:
    vendor = BackdooredVendor()
    capture = tmp_path / "capture"
    with (
        serve_asgi(vendor.app) as vendor_url,
        running_gateway(
            gateway_settings(tmp_path, vendor_url, shadow_rate=1.0, shadow_capture_dir=capture),
            purifier_factory=lambda device: TriggerRemover(),
        ) as url,
    ):
        answers = [
            _post(url, backdoor_png(triggered, seed)) for seed, triggered in enumerate([True, False, True, True, False])
        ]
        assert [a.status_code for a in answers] == [200] * 5
        # The client always gets the purified answer, never the raw one.
        assert all(a.json()["predictions"] == [{"label": CLEAN_LABEL}] for a in answers)
        wait_until(lambda: metric_sum(_metrics(url), "zipgate_shadow_comparisons_total") == 5, what="5 comparisons")
        text = _metrics(url)
    assert metric_value(text, "zipgate_shadow_comparisons_total", raw_label=TARGET) == 3
    assert metric_value(text, "zipgate_shadow_comparisons_total", raw_label=CLEAN_LABEL) == 2
    assert metric_value(text, "zipgate_shadow_disagreements_total", raw_label=TARGET, purified_label=CLEAN_LABEL) == 3
    assert metric_value(text, "zipgate_shadow_captured_total") == 3
    shadow_ids = [rid for rid in vendor.request_ids if rid.endswith("-shadow")]
    assert len(shadow_ids) == 5 and len(vendor.request_ids) == 10
    records = sorted(capture.iterdir())
    assert len(records) == 3
    for record in records:
        meta = json.loads((record / "meta.json").read_text())
        assert (meta["raw_label"], meta["purified_label"]) == (TARGET, CLEAN_LABEL)
        assert np.asarray(Image.open(record / "raw.png")).max() == 255  # the trigger, as the client sent it
        assert np.asarray(Image.open(record / "purified.png")).max() < 200
        assert json.loads((record / "raw_response.json").read_text()) == {"label": TARGET}
        assert meta["request_id"] in {a.json()["request_id"] for a in answers}


def test_shadow_failures_never_reach_the_client(tmp_path: Path) -> None:
    vendor = BackdooredVendor(fail_suffix="-shadow")
    with (
        serve_asgi(vendor.app) as vendor_url,
        running_gateway(
            gateway_settings(tmp_path, vendor_url, shadow_rate=1.0), purifier_factory=lambda device: TriggerRemover()
        ) as url,
    ):
        assert _post(url, backdoor_png(True)).status_code == 200
        wait_until(lambda: metric_value(_metrics(url), "zipgate_shadow_failures_total") == 1, what="a failure")
        assert metric_sum(_metrics(url), "zipgate_shadow_comparisons_total") == 0


def test_the_shadow_header_works_only_when_allowed(tmp_path: Path) -> None:
    for allowed in (False, True):
        vendor = BackdooredVendor()
        with (
            serve_asgi(vendor.app) as vendor_url,
            running_gateway(
                gateway_settings(tmp_path, vendor_url, shadow_allow_header=allowed),
                purifier_factory=lambda device: TriggerRemover(),
            ) as url,
        ):
            assert _post(url, backdoor_png(True), headers={"X-Zipgate-Shadow": "1"}).status_code == 200
            assert _post(url, backdoor_png(True)).status_code == 200  # no header, rate 0: never compared
            assert _post(url, backdoor_png(True), headers={"X-Zipgate-Shadow": "1"}).status_code == 200
            if allowed:
                wait_until(
                    lambda: metric_sum(_metrics(url), "zipgate_shadow_comparisons_total") == 2, what="2 comparisons"
                )
            text = _metrics(url)
        expected = 2 if allowed else 0
        assert metric_sum(text, "zipgate_shadow_comparisons_total") == expected
        assert sum(rid.endswith("-shadow") for rid in vendor.request_ids) == expected


def test_votes_answer_with_the_majority_and_repeat_with_a_seed(tmp_path: Path) -> None:
    vendor = BackdooredVendor()
    with (
        serve_asgi(vendor.app) as vendor_url,
        running_gateway(
            gateway_settings(tmp_path, vendor_url, max_votes=5),
            purifier_factory=lambda device: TriggerRemover(noisy=True),
        ) as url,
    ):
        images = [backdoor_png(False, seed) for seed in range(4)]
        files = [("image", (f"{i}.png", png, "image/png")) for i, png in enumerate(images)]
        first = httpx.post(f"{url}/predict?votes=5&seed=11", files=files, timeout=30.0).json()
        again = httpx.post(f"{url}/predict?votes=5&seed=11", files=files, timeout=30.0).json()
        single = httpx.post(f"{url}/predict?seed=11", files=files, timeout=30.0).json()
        too_many = httpx.post(f"{url}/predict?votes=6", files=files, timeout=30.0)
    block = first["purification"]
    assert block["votes"] == 5 and len(block["vote_labels"]) == 4
    assert block["vote_labels"] == again["purification"]["vote_labels"]  # the seed fixes every vote
    labels = [row for row in block["vote_labels"]]
    assert any(len(set(row)) > 1 for row in labels)  # the coin made votes differ: the majority is tested
    for row, prediction in zip(labels, first["predictions"], strict=True):
        winner = max(row, key=lambda label: (row.count(label), -row.index(label)))
        assert prediction["label"] == winner
    # Vote 0 is exactly the unvoted purification with the same seed.
    assert [row[0] for row in labels] == [p["label"] for p in single["predictions"]]
    assert single["purification"]["votes"] == 1 and single["purification"]["vote_labels"] is None
    assert too_many.status_code == 400 and "max_votes" in too_many.json()["error"]["message"]
    vote_ids = [rid for rid in vendor.request_ids if "-vote" in rid]
    assert len(vote_ids) == 2 * 5 * 4  # two voted requests, 5 calls of 4 images each (one per image: raw)


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_bad_votes_are_client_errors(tmp_path: Path, value: str) -> None:
    vendor = BackdooredVendor()
    with (
        serve_asgi(vendor.app) as vendor_url,
        running_gateway(
            gateway_settings(tmp_path, vendor_url), purifier_factory=lambda device: TriggerRemover()
        ) as url,
    ):
        response = httpx.post(
            f"{url}/predict?votes={value}", files=[("image", ("x.png", backdoor_png(False), "image/png"))]
        )
    assert 400 <= response.status_code < 500 and "error" in response.json()


def test_votes_that_would_overflow_the_queue_are_refused_with_the_reason(tmp_path: Path) -> None:
    vendor = BackdooredVendor()
    with (
        serve_asgi(vendor.app) as vendor_url,
        running_gateway(
            gateway_settings(tmp_path, vendor_url, queue_limit=8, max_votes=5),
            purifier_factory=lambda device: TriggerRemover(),
        ) as url,
    ):
        files = [("image", (f"{i}.png", backdoor_png(False, i), "image/png")) for i in range(3)]
        refused = httpx.post(f"{url}/predict?votes=3", files=files, timeout=30.0)
        accepted = httpx.post(f"{url}/predict?votes=2", files=files, timeout=30.0)
    assert refused.status_code == 413 and "3 images × votes=3 = 9" in refused.json()["error"]["message"]
    assert accepted.status_code == 200 and accepted.json()["purification"]["votes"] == 2
    assert len(vendor.request_ids) == 2 * 3  # only the accepted request reached the vendor: 2 votes × 3 images


class LongLabelVendor:
    """Raw-protocol vendor whose every answer is a label of `label_chars` characters, a different one per call."""

    def __init__(self, label_chars: int) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/predict")
        async def predict(request: Request) -> JSONResponse:
            await request.body()
            with self.lock:
                self.calls += 1
                call = self.calls
            return JSONResponse({"label": f"{call}:" + "L" * label_chars})


def test_vendor_labels_of_200_kb_leave_metrics_capture_and_responses_bounded(tmp_path: Path) -> None:
    vendor = LongLabelVendor(200_000)
    capture = tmp_path / "capture"
    requests = 40
    with (
        serve_asgi(vendor.app) as vendor_url,
        running_gateway(
            gateway_settings(tmp_path, vendor_url, shadow_rate=1.0, shadow_capture_dir=capture, max_votes=3),
            purifier_factory=lambda device: TriggerRemover(),
        ) as url,
    ):
        for seed in range(requests):
            assert _post(url, backdoor_png(True, seed)).status_code == 200
        wait_until(
            lambda: metric_sum(_metrics(url), "zipgate_shadow_comparisons_total") == requests,
            timeout_s=60.0,
            what=f"{requests} comparisons",
        )
        scrape = httpx.get(f"{url}/metrics", timeout=10.0)
        voted = httpx.post(
            f"{url}/predict?votes=3", files=[("image", ("x.png", backdoor_png(False), "image/png"))], timeout=30.0
        )
    assert len(scrape.content) < 100_000, len(scrape.content)
    shadow_series = [line for line in scrape.text.splitlines() if line.startswith("zipgate_shadow_")]
    assert metric_sum(scrape.text, "zipgate_shadow_disagreements_total") == requests  # every pair differed
    for line in shadow_series:
        for value in line[line.find("{") + 1 : line.rfind("}")].split(",") if "{" in line else []:
            label = value.split("=", 1)[1].strip('"')
            assert len(label) <= 64 and label.isprintable(), line[:200]
    hashed = [line for line in shadow_series if 'raw_label="h:' in line]
    assert len(hashed) >= 2 * requests  # comparisons and disagreements, each label under its own hash
    # Capture files name the labels as the metrics do; the vendor's whole answer is the evidence beside them.
    records = sorted(capture.iterdir())
    assert records
    for record in records:
        meta = json.loads((record / "meta.json").read_text())
        assert meta["raw_label"].startswith("h:") and len(meta["raw_label"]) == 14
        assert len(json.loads((record / "raw_response.json").read_text())["label"]) > 200_000
    # A response's vote labels are bounded too (the predictions are the vendor's, relayed as they are).
    assert voted.status_code == 200
    labels = voted.json()["purification"]["vote_labels"]
    assert all(isinstance(label, str) and label.startswith("h:") and len(label) == 14 for label in labels[0])


def test_deleting_a_captured_record_by_hand_does_not_stop_capture(tmp_path: Path) -> None:
    vendor = BackdooredVendor()
    capture = tmp_path / "capture"
    with (
        serve_asgi(vendor.app) as vendor_url,
        running_gateway(
            gateway_settings(
                tmp_path, vendor_url, shadow_rate=1.0, shadow_capture_dir=capture, shadow_capture_max_files=15
            ),
            purifier_factory=lambda device: TriggerRemover(),
        ) as url,
    ):

        def compared() -> float:
            return metric_value(_metrics(url), "zipgate_shadow_comparisons_total", raw_label=TARGET)

        def disagree(count: int, first_seed: int) -> None:
            for seed in range(first_seed, first_seed + count):
                expected = compared() + 1
                assert _post(url, backdoor_png(True, seed)).status_code == 200
                # One at a time, so that every comparison (and its record) is done before the next.
                wait_until(lambda expected=expected: compared() == expected, what="the comparison")

        disagree(3, 0)  # the ring is full: 3 records of 5 files
        records = sorted(capture.iterdir())
        assert len(records) == 3
        shutil.rmtree(records[0])  # the oldest, as an analyst would after looking at it
        disagree(4, 3)
        text = _metrics(url)
        after = sorted(capture.iterdir())
    assert metric_value(text, "zipgate_shadow_capture_disabled") == 0
    assert metric_value(text, "zipgate_shadow_captured_total") == 7  # every disagreement, before and after
    assert len(after) == 3 and not set(after) & set(records)  # the ring went on: the 3 newest records
    assert all(len(list(record.iterdir())) == 5 for record in after)
