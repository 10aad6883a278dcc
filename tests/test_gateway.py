"""The gateway on a real loopback port against the demo vendor, in each upstream protocol."""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service.api.app import create_app
from service.config import Settings
from service.metrics import Stage
from service.upstream import UpstreamProtocol
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import (
    TINY_SIZE,
    FakePurifier,
    GatedPurifier,
    decode_png,
    gateway_settings,
    get,
    metric_value,
    png_bytes,
    post,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
    wait_until,
)

STAGES = [stage.value for stage in Stage]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return tiny_ddpm_dir(root), tiny_vendor_dir(root)


@pytest.fixture(scope="module")
def vendor_url(models: tuple[Path, Path]) -> Iterator[str]:
    with running_vendor(models[1]) as url:
        yield url


@pytest.fixture(scope="module", params=list(UpstreamProtocol), ids=lambda p: p.value)
def gateway(
    request: pytest.FixtureRequest, models: tuple[Path, Path], vendor_url: str
) -> Iterator[tuple[str, Settings]]:
    settings = gateway_settings(models[0], vendor_url, upstream_protocol=request.param)
    with running_gateway(settings) as url:
        yield url, settings


def _files(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]


def _server_timing(header: str) -> dict[str, float]:
    return {name: float(dur) for name, dur in re.findall(r"(\w+);dur=([0-9.]+)", header)}


def _vendor_direct(vendor_url: str, pngs: list[bytes]) -> list[dict]:
    """The vendor's own answer for these exact images (raw protocol, one by one)."""
    return [post(f"{vendor_url}/predict", content=png, headers={"Content-Type": "image/png"}).json() for png in pngs]


def test_vendor_mirror_shows_the_vendor_the_mirrored_purified_images(
    models: tuple[Path, Path], vendor_url: str
) -> None:
    """/purify stays unmirrored; /predict's vendor answer is its answer to the mirrored /purify output."""
    images = [png_bytes(seed=1), png_bytes(seed=2)]
    with running_gateway(gateway_settings(models[0], vendor_url, vendor_mirror=True)) as url:
        purified = [
            base64.b64decode(b64)
            for b64 in post(f"{url}/purify", params={"seed": 7}, files=_files(*images)).json()["images"]
        ]
        body = post(f"{url}/predict", params={"seed": 7}, files=_files(*images)).json()

    def mirrored(png: bytes) -> bytes:
        out = io.BytesIO()
        decode_png(png).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(out, format="PNG")
        return out.getvalue()

    as_is, flipped = _vendor_direct(vendor_url, purified), _vendor_direct(vendor_url, [mirrored(p) for p in purified])
    assert body["purification"]["vendor_mirror"] is True
    for got, want, unmirrored in zip(body["predictions"], flipped, as_is, strict=True):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
        assert got["probabilities"] != pytest.approx(unmirrored["probabilities"], abs=1e-6), "test has no power"


def test_predict_returns_the_vendors_answer_for_the_purified_images(
    gateway: tuple[str, Settings], vendor_url: str
) -> None:
    url, settings = gateway
    images = [png_bytes(seed=1), png_bytes(seed=2)]
    purified = post(f"{url}/purify", params={"seed": 7}, files=_files(*images)).json()["images"]
    expected = _vendor_direct(vendor_url, [base64.b64decode(b64) for b64 in purified])

    response = post(f"{url}/predict", params={"seed": 7}, files=_files(*images), headers={"X-Request-ID": "trace-123"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "trace-123" == response.headers["x-request-id"]
    # Same seed, same purified pixels: the vendor's answer through the gateway equals its answer
    # to the purified images sent directly (probabilities included), in order, whatever the protocol.
    labels = [p["label"] for p in body["predictions"]]
    assert labels == [e["label"] for e in expected]
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
    assert body["purification"] == {
        "model": "tiny-ddpm-1ch",
        "strength": "balanced",
        "method": "global",
        "masked_fraction": None,
        "noise_start": 1.0,
        "transforms": "jblur:4",
        "steps": 2,
        "guidance_power": 0.25,
        "vendor_mirror": False,
        "device": "cpu",
        "dtype": "float32",
        "votes": 1,
        "vote_labels": None,
        "policy": "always",
        "answers": None,
        "named_targets": None,
    }
    assert set(body["latency_ms"]) == {*STAGES, "total"}
    assert all(value >= 0 for value in body["latency_ms"].values())
    assert body["latency_ms"]["total"] >= sum(body["latency_ms"][s] for s in STAGES) - 1.0
    timing = _server_timing(response.headers["server-timing"])
    assert list(timing) == [*STAGES, "total"]
    assert timing["upstream"] > 0 and timing["purify"] > 0


def test_vote_labels_keep_the_vendors_label_type(gateway: tuple[str, Settings]) -> None:
    """The demo vendor's labels are integers, in every protocol: so is each vote's label, as in predictions[]."""
    url, _ = gateway
    images = [png_bytes(seed=seed) for seed in range(3)]
    response = post(f"{url}/predict", params={"votes": 3, "seed": 5}, files=_files(*images))
    assert response.status_code == 200, response.text
    body = response.json()
    rows = body["purification"]["vote_labels"]
    assert len(rows) == len(images) and all(len(row) == 3 for row in rows)
    for row, prediction in zip(rows, body["predictions"], strict=True):
        assert all(type(label) is int for label in row), row  # 9, not '9'
        assert type(prediction["label"]) is int
        winner = max(row, key=lambda label: (row.count(label), -row.index(label)))
        assert prediction["label"] == winner  # the majority, compared as the vendor typed it


def test_predict_accepts_json_base64_and_makes_a_request_id(gateway: tuple[str, Settings]) -> None:
    url, _ = gateway
    response = post(f"{url}/predict", json={"images": [base64.b64encode(png_bytes(seed=3)).decode()]})
    assert response.status_code == 200, response.text
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert len(response.json()["predictions"]) == 1


def test_metrics_count_requests_stages_images_and_upstream_calls(gateway: tuple[str, Settings]) -> None:
    url, _ = gateway
    before = get(f"{url}/metrics").text
    assert post(f"{url}/predict", files=_files(png_bytes(), png_bytes(seed=4))).status_code == 200
    after = get(f"{url}/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def grew(name: str, by: float = 1.0, **labels: str) -> bool:
        return metric_value(text, name, **labels) - metric_value(before, name, **labels) >= by

    assert grew("zipgate_requests_total", endpoint="/predict", status="200")
    assert grew("zipgate_request_duration_seconds_count", endpoint="/predict")
    for stage in STAGES:
        assert grew("zipgate_stage_duration_seconds_count", stage=stage), stage
    assert grew("zipgate_images_purified_total", by=2)
    assert grew("zipgate_upstream_requests_total", status="200")
    assert grew("zipgate_upstream_duration_seconds_count")
    assert grew("zipgate_batch_size_count")
    assert metric_value(text, "zipgate_inflight_requests") == 0.0  # the /metrics scrape does not count itself
    assert metric_value(text, "zipgate_ready") == 1.0
    assert "zipgate_queue_depth" in text


@pytest.fixture(scope="module")
def raw_gateway(models: tuple[Path, Path], vendor_url: str) -> Iterator[str]:
    with running_gateway(gateway_settings(models[0], vendor_url)) as url:
        yield url


def test_purify_one_image_returns_a_png_of_the_original_size(raw_gateway: str) -> None:
    response = post(
        f"{raw_gateway}/purify", params={"seed": 1}, content=png_bytes(40, 24), headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-purification-steps"] == "2"
    image = decode_png(response.content)
    assert image.size == (40, 24) and image.mode == "L"  # resized back; grayscale for a 1-channel model


def test_purify_is_deterministic_for_a_seed_and_random_without(raw_gateway: str) -> None:
    def purified(**params: int) -> bytes:
        return post(f"{raw_gateway}/purify", params=params, files=_files(png_bytes(seed=9))).content

    assert purified(seed=3) == purified(seed=3)
    assert purified(seed=3) != purified(seed=4)


def test_purify_include_degraded_returns_the_block_means(raw_gateway: str) -> None:
    # At the model's own size nothing is resized, so A⁺A x for the default jblur:4 (its degraded view is the
    # unshifted grid) is exactly each 4×4 block's mean.
    source = png_bytes(TINY_SIZE, TINY_SIZE, seed=5)
    response = post(
        f"{raw_gateway}/purify", params={"include": "degraded", "seed": 0}, files=_files(source, png_bytes(seed=6))
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == len(body["degraded"]) == 2
    degraded = torch.from_numpy(np.asarray(decode_png(base64.b64decode(body["degraded"][0])), dtype=np.float32))
    pixels = torch.from_numpy(np.asarray(Image.open(io.BytesIO(source)), dtype=np.float32))
    blocks = pixels.view(TINY_SIZE // 4, 4, TINY_SIZE // 4, 4).mean(dim=(1, 3))
    expected = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert (degraded - expected).abs().max() <= 1.0  # 8-bit rounding only
    assert body["purification"]["steps"] == 2
    assert decode_png(base64.b64decode(body["degraded"][1])).size == (28, 28)


def test_rgb_input_is_purified_as_grayscale_for_a_one_channel_model(raw_gateway: str) -> None:
    response = post(f"{raw_gateway}/purify", files=_files(png_bytes(20, 20, mode="RGBA")))
    assert response.status_code == 200
    assert decode_png(response.content).mode == "L"


def test_probes(raw_gateway: str) -> None:
    assert get(f"{raw_gateway}/healthz").json() == {"status": "ok"}
    ready = get(f"{raw_gateway}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["purification_enabled"] is True


def test_openapi_documents_every_endpoint_with_examples(raw_gateway: str) -> None:
    spec = get(f"{raw_gateway}/openapi.json").json()
    assert {
        "/predict",
        "/purify",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/models/{name}:predict",
        "/v2/models/{name}/infer",
    } <= set(spec["paths"])
    predict = spec["paths"]["/predict"]["post"]
    assert {"multipart/form-data", "application/json", "image/png"} <= set(predict["requestBody"]["content"])
    assert "examples" in spec["components"]["schemas"]["PredictResponse"]
    assert "413" in predict["responses"] and "X-Request-Timeout" in str(predict["parameters"])


def test_request_timeout_header_sets_the_deadline(raw_gateway: str) -> None:
    response = post(f"{raw_gateway}/predict", files=_files(png_bytes()), headers={"X-Request-Timeout": "1e-9"})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    bad = post(f"{raw_gateway}/predict", files=_files(png_bytes()), headers={"X-Request-Timeout": "soon"})
    assert bad.status_code == 400 and "X-Request-Timeout" in bad.json()["error"]["message"]
    capped = post(f"{raw_gateway}/predict", files=_files(png_bytes()), headers={"X-Request-Timeout": "1e9"})
    assert capped.status_code == 200  # capped at max_request_timeout_s, not refused


def test_request_id_is_forwarded_upstream_and_purification_off_sends_the_original_bytes() -> None:
    recorder = StaticApp(200, b'{"label": 1}')
    original = png_bytes(seed=11)
    with serve_asgi(recorder) as upstream_url, running_gateway(gateway_settings(None, upstream_url)) as url:
        response = post(f"{url}/predict", files=_files(original), headers={"X-Request-ID": "abc-1"})
        assert response.status_code == 200, response.text
        assert response.json()["purification"] is None
        assert response.json()["predictions"] == [{"label": 1}]
        assert post(f"{url}/purify", files=_files(original)).status_code == 404  # no model, no /purify
    (sent,) = recorder.requests
    assert sent.headers["x-request-id"] == "abc-1"
    assert sent.body == original and sent.headers["content-type"] == "image/png"


@pytest.mark.slow
def test_a_client_that_disconnects_has_its_queued_images_withdrawn() -> None:
    purifier = GatedPurifier()  # the first request's batch waits at the gate; the second queues behind it
    recorder = StaticApp(200, b'{"label": 1}')
    with (
        serve_asgi(recorder) as upstream_url,
        running_gateway(
            gateway_settings(Path("unused"), upstream_url, max_batch_size=1), purifier_factory=lambda device: purifier
        ) as url,
    ):
        first_done: list[int] = []
        first = threading.Thread(
            target=lambda: first_done.append(post(f"{url}/predict", files=_files(png_bytes())).status_code)
        )
        try:
            first.start()
            wait_until(lambda: purifier.waiting == 1, what="the first request's batch at the gate")
            # The second request, sent by hand so that the test decides when its client hangs up.
            second = httpx.Request("POST", f"{url}/predict", files=_files(png_bytes(seed=2)))
            body = second.read()
            head = (
                f"POST /predict HTTP/1.1\r\nHost: gateway\r\nContent-Type: {second.headers['content-type']}"
                f"\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            with socket.create_connection((second.url.host, second.url.port), timeout=10) as client:
                client.sendall(head + body)
                wait_until(
                    lambda: metric_value(get(f"{url}/metrics").text, "zipgate_queue_depth") == 1,
                    what="the second request's image queued behind the gate",
                )
            # Hung up: the queued image is withdrawn while the gate still holds the first batch.
            wait_until(
                lambda: (
                    metric_value(get(f"{url}/metrics").text, "zipgate_dropped_images_total", reason="cancelled") == 1
                ),
                what="queued image withdrawn",
            )
        finally:
            purifier.open()  # the gateway's shutdown waits for the batch at the gate
            if first.ident is not None:
                first.join(60)
        assert first_done == [200]
        wait_until(
            lambda: (
                metric_value(get(f"{url}/metrics").text, "zipgate_requests_total", endpoint="/predict", status="499")
                == 1
            ),
            what="the abandoned request counted as 499",
        )
    assert purifier.images_computed == 1  # the abandoned image never reached the model
    assert len(recorder.requests) == 1


@pytest.mark.slow
def test_demo_prints_direct_and_gateway_predictions(models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from service.backdoor.attacks import TARGET_LABEL
    from service.demo import main_job

    monkeypatch.setattr(main_job, "configure_logging", lambda level: None)  # keep pytest's log capture
    out = io.StringIO()
    settings = gateway_settings(models[0], "http://127.0.0.1:9")  # the demo replaces the upstream
    assert main_job.run_demo(settings, keep_running=False, vendor_dir=models[1], out=out) == 0
    lines = out.getvalue().splitlines()
    assert "BadNets" in lines[0] and f"{TARGET_LABEL} T-shirt/top" in lines[0]
    rows = [line.split() for line in lines[2:6]]
    assert [(row[0], row[1]) for row in rows] == [
        ("clean", "direct"),
        ("clean", "zipgate"),
        ("triggered", "direct"),
        ("triggered", "zipgate"),
    ]
    assert all(line.rstrip().endswith("ms") or "backdoor" in line for line in lines[2:6])
    assert len({" ".join(row[4:6]) for row in rows}) == 1  # one true label: the same test image throughout
    # The shadow burst: every image compared (the random tiny vendor labels whatever it likes), then the alarm.
    shadow = lines[lines.index("") + 1 :]
    assert (
        shadow[0].startswith(f"shadow mode: {main_job.SHADOW_BURST} triggered images")
        and f"{main_job.SHADOW_BURST} compared" in shadow[0]
    )
    assert shadow[-1].startswith("alarm (gateway /metrics): ")


def test_demo_explains_a_missing_vendor_model(
    models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.demo import main_job

    monkeypatch.setattr(main_job, "configure_logging", lambda level: None)
    settings = gateway_settings(models[0], "http://127.0.0.1:9")
    assert main_job.run_demo(settings, vendor_dir=tmp_path / "missing", out=io.StringIO()) == 1
    assert "zipgate train vendor" in capsys.readouterr().err


def test_404_is_documented_only_on_the_sidecar_model_routes() -> None:
    paths = create_app(
        gateway_settings(Path("unused"), "http://127.0.0.1:9", upstream_raw_path="/invocations"),
        purifier_factory=lambda device: FakePurifier(),
    ).openapi()["paths"]
    posts = {path: operations["post"]["responses"] for path, operations in paths.items() if "post" in operations}
    assert set(posts) == {
        "/predict",
        "/purify",
        "/v1/models/{name}:predict",
        "/v1/models/{name}/versions/{version}:predict",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/invocations",
        "/targets/alerts",
    }
    for path, responses in posts.items():
        assert "408" in responses, path  # every route that reads a body
        assert ("404" in responses) == path.startswith(("/v1/models/", "/v2/models/")), path
