"""Keep-it-fixed fuzzing of what a hostile vendor can put in a label: long, unprintable, of any type.

The fuzz suite's other half (tests/test_fuzz_inputs.py) sends bad requests to an honest vendor; here
the requests are good and the vendor answers each call with a label hypothesis draws: strings up to
300,000 characters, control and format characters, lone surrogates, Prometheus' own syntax, huge
integers, floats, booleans, null, lists and objects. One gateway serves the whole module, in shadow
mode (every request compared), with votes and a capture folder. Every label that leaves the gateway
must be bounded (`service.shadow.labels.bounded_label`): in `purification.vote_labels`, in every
metric series, in the capture ring's meta.json and in the log, and /metrics stays parseable.
Hypothesis runs derandomized, so the same labels go out on every run and a failure reproduces.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.loopback import serve_asgi
from service.shadow.labels import MAX_LABEL_CHARS
from tests.gateway_servers import FakePurifier, gateway_settings, metric_sum, running_gateway, wait_until

pytestmark = pytest.mark.slow

EXAMPLES = 150
MAX_VOTES = 3
SHADOW_OUTCOMES = (
    "zipgate_shadow_comparisons_total",
    "zipgate_shadow_unlabelled_total",
    "zipgate_shadow_failures_total",
    "zipgate_shadow_dropped_total",
)
MAX_LOG_MESSAGE_CHARS = 2_000  # a quoted vendor answer is cut well before this


@dataclass(frozen=True)
class LabelScript:
    """What the vendor answers for one request: the raw image's label (shadow call), and each vote's."""

    raw: Any
    votes: tuple[Any, ...]


class ScriptedLabelVendor:
    """Raw-protocol vendor: answers `{"label": <scripted>}` by the request id the gateway forwards
    (`<id>` or `<id>-vote<k>` for the purified images, `<id>-shadow` for the raw ones)."""

    def __init__(self) -> None:
        self.scripts: dict[str, LabelScript] = {}
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/predict")
        async def predict(request: Request) -> Response:
            await request.body()
            request_id = request.headers.get("x-request-id", "")
            base, _, call = request_id.partition("-")
            with self.lock:
                script = self.scripts[base]
            label = script.raw if call == "shadow" else script.votes[int(call[4:]) if call.startswith("vote") else 0]
            # json.dumps, not JSONResponse: NaN and Infinity go out as a careless vendor sends them.
            return Response(json.dumps({"label": label}), media_type="application/json")


_UNPRINTABLE = st.sampled_from(
    ["\n", "\r\n", "\t", "\x00", "\x1b[31m", "\x7f", "\u200b", "\u202e", "\u2028", "\ufeff", "\ud800", "\udfff"]
)
_PROMETHEUS_SYNTAX = st.sampled_from(['"', "\\", "}", '"} 1\n# TYPE x counter\nx{a="', "{", "=", ","])
labels = st.one_of(
    st.integers(0, 9),
    st.sampled_from(["7", "cat", "ankle boot", "Ärmel", "猫", "x" * MAX_LABEL_CHARS, "other"]),
    st.text(min_size=1, max_size=80),
    st.lists(st.one_of(st.text(max_size=5), _UNPRINTABLE, _PROMETHEUS_SYNTAX), min_size=1, max_size=6).map("".join),
    st.builds(lambda n, c: c * n, st.integers(MAX_LABEL_CHARS + 1, 300_000), st.sampled_from(["L", "\u00e9", "\n"])),
    st.integers(-(10**300), 10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([True, False, None, "", [], {}, [1, 2], {"label": 3}]),
)
scripts = st.builds(
    LabelScript, raw=labels, votes=st.one_of(st.tuples(labels), st.lists(labels, min_size=3, max_size=3).map(tuple))
)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class LabelGateway:
    url: str
    vendor: ScriptedLabelVendor
    capture: Path


@pytest.fixture(scope="module")
def label_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelGateway]:
    root = tmp_path_factory.mktemp("labels")
    vendor = ScriptedLabelVendor()
    capture = root / "capture"
    with serve_asgi(vendor.app) as vendor_url:
        settings_ = gateway_settings(
            root,
            vendor_url,
            shadow_rate=1.0,
            shadow_max_inflight=64,  # sequential requests: every one is compared, none dropped as busy
            shadow_capture_dir=capture,
            shadow_capture_max_files=50,
            max_votes=MAX_VOTES,
        )
        with running_gateway(settings_, purifier_factory=lambda device: FakePurifier()) as url:
            yield LabelGateway(url, vendor, capture)


def _check_bounded(label: Any, where: str) -> None:
    assert label is None or type(label) in (int, float, str), (where, label)
    text = label if isinstance(label, str) else str(label)
    assert len(text) <= MAX_LABEL_CHARS and text.isprintable(), (where, text[:100])


def test_hostile_vendor_labels_stay_bounded_everywhere_they_go(
    label_gateway: LabelGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url, vendor = label_gateway.url, label_gateway.vendor
    sent: list[LabelScript] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(script=scripts)
    def run(script: LabelScript) -> None:
        request_id = f"labels{len(sent)}"
        with vendor.lock:
            vendor.scripts[request_id] = script
        sent.append(script)
        response = httpx.post(
            f"{url}/predict",
            params={"votes": len(script.votes)},
            files=[("image", ("x.png", _png(), "image/png"))],
            headers={"X-Request-ID": request_id},
            timeout=60.0,
        )
        assert response.status_code == 200, (script, response.text[:300])
        block = response.json()["purification"]
        if len(script.votes) == 1:
            assert block["vote_labels"] is None
            return
        (row,) = block["vote_labels"]
        assert len(row) == len(script.votes)
        for label in row:
            _check_bounded(label, "vote_labels")
        for label, voted in zip(row, script.votes, strict=True):
            if type(voted) is int and len(str(voted)) <= MAX_LABEL_CHARS:
                assert label == voted and type(label) is int  # the vendor's type, kept

    run()
    assert len(sent) >= EXAMPLES

    def settled() -> bool:
        text = httpx.get(f"{url}/metrics", timeout=10.0).text
        return sum(metric_sum(text, name) for name in SHADOW_OUTCOMES) >= len(sent)

    wait_until(settled, timeout_s=120.0, what="every shadow comparison")
    scrape = httpx.get(f"{url}/metrics", timeout=10.0).text
    # Parseable as Prometheus reads it, and every label value of every series bounded.
    families = list(text_string_to_metric_families(scrape))
    assert any(family.name == "zipgate_shadow_comparisons" for family in families)
    for family in families:
        for sample in family.samples:
            for value in sample.labels.values():
                _check_bounded(value, f"{sample.name}{sample.labels}")
    assert max(len(line) for line in scrape.splitlines()) < 1_000
    assert metric_sum(scrape, "zipgate_shadow_comparisons_total") > EXAMPLES / 4  # the test has power
    assert metric_sum(scrape, "zipgate_shadow_disagreements_total") > 0
    records = list(label_gateway.capture.iterdir())
    assert records
    for record in records:
        meta = json.loads((record / "meta.json").read_text())
        _check_bounded(meta["raw_label"], f"{record.name} raw_label")
        _check_bounded(meta["purified_label"], f"{record.name} purified_label")
    for log in caplog.records:
        assert len(log.getMessage()) <= MAX_LOG_MESSAGE_CHARS, log.getMessage()[:300]
