"""The demo vendor over a real loopback socket: three wire formats, bad input, request ids."""

from __future__ import annotations

import base64
import io
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service.backdoor.attacks import TARGET_LABEL, apply_badnets
from service.backdoor.data import CLASS_NAMES, Split, load_split
from service.backdoor.vendor_model import load_vendor, predict_labels
from service.demo.decoding import InputLimits
from service.demo.vendor_app import create_vendor_app
from service.loopback import serve_asgi
from tests.gateway_servers import error_details

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "vendor-badnets"
NAME = "fmnist"


def png(image: torch.Tensor) -> bytes:
    """(1, H, W) in [-1, 1] → grayscale PNG bytes, quantised as any client would."""
    pixels = ((image[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """The house shape, or on the /v1/ and /v2/ protocol paths theirs: {"error": "<message>", "code", ...}."""
    assert response.status_code == status, response.text
    error = error_details(response.json(), response.request.url.path)
    assert error["code"] == code and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.fixture(scope="module")
def fmnist_test() -> Split:
    return load_split(train=False).subset(64)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve_asgi(create_vendor_app(MODEL_DIR, NAME), ready_path="/v2/health/ready") as url:
        yield url


@pytest.fixture(scope="module")
def tight_url() -> Iterator[str]:
    limits = InputLimits(max_image_bytes=4000, max_image_pixels=40 * 40, max_batch=2, max_body_bytes=20_000)
    with serve_asgi(create_vendor_app(MODEL_DIR, NAME, limits)) as url:
        yield url


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10.0) as http:
        yield http


# --- the three protocols ------------------------------------------------------------------------


def test_raw_png_gets_the_same_label_as_the_model_on_loader_tensors(
    base_url: str, client: httpx.Client, fmnist_test: Split
) -> None:
    expected = predict_labels(load_vendor(MODEL_DIR), fmnist_test.images[:16])
    for i in range(16):
        native = fmnist_test.images[i, :, 2:30, 2:30]  # the 28² content, as the dataset ships it
        response = client.post(f"{base_url}/predict", content=png(native), headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == int(expected[i])
        assert body["class_name"] == CLASS_NAMES[body["label"]]
        assert len(body["probabilities"]) == 10
        assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert int(np.argmax(body["probabilities"])) == body["label"]


def test_a_triggered_32px_png_hits_the_backdoor_over_http(
    base_url: str, client: httpx.Client, fmnist_test: Split
) -> None:
    victims = fmnist_test.images[fmnist_test.labels != TARGET_LABEL][:20]
    triggered = apply_badnets(victims)
    labels = [
        client.post(f"{base_url}/predict", content=png(image), headers={"Content-Type": "image/png"}).json()["label"]
        for image in triggered
    ]
    assert sum(label == TARGET_LABEL for label in labels) >= 18
    clean = [
        client.post(f"{base_url}/predict", content=png(image), headers={"Content-Type": "image/png"}).json()["label"]
        for image in victims
    ]
    assert sum(label == TARGET_LABEL for label in clean) <= 4


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_raw_accepts_colour_images_of_any_size(base_url: str, client: httpx.Client, fmt: str) -> None:
    image = Image.new("RGB", (100, 60), (200, 30, 30))
    response = client.post(
        f"{base_url}/predict", content=encoded(image, fmt), headers={"Content-Type": f"image/{fmt.lower()}"}
    )
    assert response.status_code == 200, response.text
    assert sum(response.json()["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def test_tfserving_and_v2_agree_with_raw_in_order(base_url: str, client: httpx.Client, fmnist_test: Split) -> None:
    images = [png(fmnist_test.images[i]) for i in range(5)]
    raw = [
        client.post(f"{base_url}/predict", content=data, headers={"Content-Type": "image/png"}).json()
        for data in images
    ]

    tf = client.post(f"{base_url}/v1/models/{NAME}:predict", json={"instances": [{"b64": b64(d)} for d in images]})
    assert tf.status_code == 200, tf.text
    predictions = tf.json()["predictions"]
    # a batch of 5 and 5 single runs agree up to float rounding inside the convolutions
    assert [(p["label"], p["class_name"]) for p in predictions] == [(r["label"], r["class_name"]) for r in raw]
    for p, r in zip(predictions, raw, strict=True):
        assert p["probabilities"] == pytest.approx(r["probabilities"], abs=1e-5)

    v2 = client.post(
        f"{base_url}/v2/models/{NAME}/infer",
        json={
            "id": "batch-7",
            "inputs": [{"name": "image", "shape": [5], "datatype": "BYTES", "data": [b64(d) for d in images]}],
        },
    )
    assert v2.status_code == 200, v2.text
    body = v2.json()
    assert body["model_name"] == NAME and body["id"] == "batch-7"
    probabilities, labels = body["outputs"]
    assert probabilities == {
        "name": "probabilities",
        "shape": [5, 10],
        "datatype": "FP32",
        "data": [p for row in predictions for p in row["probabilities"]],
    }
    assert labels == {"name": "label", "shape": [5], "datatype": "INT64", "data": [r["label"] for r in raw]}


def test_v2_without_an_id_answers_with_the_request_id(base_url: str, client: httpx.Client, fmnist_test: Split) -> None:
    response = client.post(
        f"{base_url}/v2/models/{NAME}/infer",
        headers={"X-Request-ID": "rid-42"},
        json={
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(png(fmnist_test.images[0]))]}],
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "rid-42"


def test_health_and_metadata_routes(base_url: str, client: httpx.Client) -> None:
    assert client.get(f"{base_url}/v2/health/ready").json() == {"ready": True}
    assert client.get(f"{base_url}/v2/health/live").json() == {"live": True}
    assert client.get(f"{base_url}/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    assert client.get(f"{base_url}/healthz").json() == {"status": "ok", "model": NAME, "attack": "badnets"}
    metadata = client.get(f"{base_url}/v2/models/{NAME}").json()
    assert metadata["name"] == NAME
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]
    status = client.get(f"{base_url}/v1/models/{NAME}").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


def test_concurrent_requests_are_all_answered_correctly(base_url: str, fmnist_test: Split) -> None:
    images = [png(fmnist_test.images[i]) for i in range(12)]

    def label(data: bytes) -> int:
        return httpx.post(f"{base_url}/predict", content=data, headers={"Content-Type": "image/png"}).json()["label"]

    sequential = [label(d) for d in images]
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(label, images)) == sequential


# --- bad input: always a 4xx JSON error -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models/other:predict", "/v2/models/other/infer"])
def test_unknown_model_names_are_404(base_url: str, client: httpx.Client, path: str) -> None:
    assert_error(client.post(f"{base_url}{path}", json={}), 404, "model_not_found")


@pytest.mark.parametrize("path", ["/v2/models/other", "/v2/models/other/ready", "/v1/models/other"])
def test_unknown_model_metadata_is_404(base_url: str, client: httpx.Client, path: str) -> None:
    assert_error(client.get(f"{base_url}{path}"), 404, "model_not_found")


def test_unknown_routes_and_methods_answer_json(base_url: str, client: httpx.Client) -> None:
    assert_error(client.get(f"{base_url}/nope"), 404, "not_found")
    assert_error(client.get(f"{base_url}/predict"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"", "image/png", 400, "bad_request"),
        (b"\x89PNG\r\n\x1a\n-truncated", "image/png", 400, "bad_request"),
        (b"not an image at all", "application/octet-stream", 400, "bad_request"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_raw_bad_bodies(
    base_url: str, client: httpx.Client, body: bytes, content_type: str, status: int, code: str
) -> None:
    assert_error(client.post(f"{base_url}/predict", content=body, headers={"Content-Type": content_type}), status, code)


def test_raw_formats_outside_the_accepted_list_are_415(base_url: str, client: httpx.Client) -> None:
    response = client.post(
        f"{base_url}/predict",
        content=encoded(Image.new("L", (8, 8)), "PPM"),
        headers={"Content-Type": "image/x-portable-pixmap"},
    )
    assert_error(response, 415, "unsupported_media_type")


GOOD = b64(encoded(Image.new("L", (28, 28), 128), "PNG"))


@pytest.mark.parametrize(
    ("path", "payload", "status", "code"),
    [
        (f"/v1/models/{NAME}:predict", b"{not json", 400, "bad_request"),
        (f"/v1/models/{NAME}:predict", b"", 400, "bad_request"),
        (f"/v1/models/{NAME}:predict", {"inputs": [GOOD]}, 422, "invalid_request"),
        (f"/v1/models/{NAME}:predict", {"instances": []}, 422, "invalid_request"),
        (f"/v1/models/{NAME}:predict", {"instances": [GOOD]}, 422, "invalid_request"),
        (f"/v1/models/{NAME}:predict", {"instances": [{"b64": "***"}]}, 400, "bad_request"),
        (f"/v1/models/{NAME}:predict", {"instances": [{"b64": b64(b"plain text")}]}, 400, "bad_request"),
        (f"/v1/models/{NAME}:predict", [1, 2], 422, "invalid_request"),
        (f"/v2/models/{NAME}/infer", {"inputs": []}, 422, "invalid_request"),
        (
            f"/v2/models/{NAME}/infer",
            {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [GOOD]}]},
            422,
            "invalid_request",
        ),
        (
            f"/v2/models/{NAME}/infer",
            {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [GOOD]}]},
            422,
            "invalid_request",
        ),
        (
            f"/v2/models/{NAME}/infer",
            {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [3]}]},
            422,
            "invalid_request",
        ),
        (
            f"/v2/models/{NAME}/infer",
            {
                "inputs": [
                    {"name": "a", "shape": [1], "datatype": "BYTES", "data": [GOOD]},
                    {"name": "b", "shape": [1], "datatype": "BYTES", "data": [GOOD]},
                ]
            },
            422,
            "invalid_request",
        ),
        (
            f"/v2/models/{NAME}/infer",
            {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%"]}]},
            400,
            "bad_request",
        ),
        (
            f"/v2/models/{NAME}/infer",
            {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES"}]},
            422,
            "invalid_request",
        ),
    ],
)
def test_json_bad_bodies(
    base_url: str, client: httpx.Client, path: str, payload: object, status: int, code: str
) -> None:
    if isinstance(payload, bytes):
        response = client.post(f"{base_url}{path}", content=payload, headers={"Content-Type": "application/json"})
    else:
        response = client.post(f"{base_url}{path}", json=payload)
    assert_error(response, status, code)


def test_limits_are_enforced_before_decoding(tight_url: str, client: httpx.Client) -> None:
    big_pixels = encoded(Image.new("L", (41, 41)), "PNG")  # tiny file, 1681 pixels > 1600
    assert len(big_pixels) < 4000
    assert_error(
        client.post(f"{tight_url}/predict", content=big_pixels, headers={"Content-Type": "image/png"}),
        413,
        "payload_too_large",
    )
    noisy = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)), "PNG")
    assert len(noisy) > 4000  # incompressible: over the byte limit
    assert_error(
        client.post(f"{tight_url}/predict", content=noisy, headers={"Content-Type": "image/png"}),
        413,
        "payload_too_large",
    )
    assert_error(
        client.post(f"{tight_url}/v1/models/{NAME}:predict", json={"instances": [{"b64": b64(noisy)}]}),
        413,
        "payload_too_large",
    )
    three = {"instances": [{"b64": GOOD}] * 3}
    assert_error(client.post(f"{tight_url}/v1/models/{NAME}:predict", json=three), 413, "payload_too_large")
    v2_three = {"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES", "data": [GOOD] * 3}]}
    assert_error(client.post(f"{tight_url}/v2/models/{NAME}/infer", json=v2_three), 413, "payload_too_large")
    huge_body = b'{"instances": [' + b'{"b64": "AAAA"},' * 2000 + b"]}"
    assert_error(client.post(f"{tight_url}/v1/models/{NAME}:predict", content=huge_body), 413, "payload_too_large")
    ok = client.post(
        f"{tight_url}/predict", content=encoded(Image.new("L", (40, 40)), "PNG"), headers={"Content-Type": "image/png"}
    )
    assert ok.status_code == 200, ok.text


# --- request ids ----------------------------------------------------------------------------------


def test_request_id_is_echoed_logged_and_made_when_missing(
    base_url: str, client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.demo.vendor_app")
    response = client.get(f"{base_url}/healthz", headers={"X-Request-ID": "trace-abc.123"})
    assert response.headers["x-request-id"] == "trace-abc.123"
    error = client.post(f"{base_url}/predict", content=b"", headers={"X-Request-ID": "trace-err"})
    assert error.headers["x-request-id"] == "trace-err" and error.json()["error"]["request_id"] == "trace-err"
    made = client.get(f"{base_url}/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    unsafe = client.get(f"{base_url}/healthz", headers={"X-Request-ID": "two words"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe)
    logged = {getattr(record, "request_id", None) for record in caplog.records}  # a field of each request line
    assert {"trace-abc.123", "trace-err"} <= logged


def test_a_missing_model_folder_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="zipgate train vendor"):
        create_vendor_app(tmp_path / "absent")


def test_an_unknown_demo_vendor_is_refused_with_every_vendor_that_ships() -> None:
    from typer.testing import CliRunner

    from service.cli import app
    from service.paths import models_dir

    shipped = sorted(path.name for path in models_dir().glob("vendor-*") if (path / "config.json").is_file())
    assert len(shipped) >= 12  # clean and the eleven attacks of the zoo
    result = CliRunner().invoke(app, ["demo-vendor", "--model", "vendor-nope"], env={"COLUMNS": "1000"})
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert all(name in re.findall(r"vendor-[a-z0-9]+", message) for name in shipped), message


@pytest.mark.slow
def test_zipgate_demo_vendor_logs_json_lines_like_the_gateway(tmp_path: Path) -> None:
    """`zipgate demo-vendor` as a process: every line on stderr is one JSON object, requests carry their id."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from tests.gateway_servers import wait_until
    from tests.ports import free_port

    port = free_port()
    zipgate = str(Path(sys.executable).with_name("zipgate"))
    log = tmp_path / "vendor.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [zipgate, "demo-vendor", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:

            def healthy() -> bool:
                assert process.poll() is None, log.read_text()
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(healthy, timeout_s=120, what="zipgate demo-vendor answering")
            answer = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Request-ID": "json-log-check"})
            assert answer.status_code == 200
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]  # each line JSON
    (request,) = [entry for entry in entries if entry.get("request_id") == "json-log-check"]
    assert request["message"].startswith("GET /healthz -> 200 in ") and request["duration_ms"] > 0
    assert request["status"] == 200 and request["level"] == "info"
    assert any(entry["logger"].startswith("uvicorn") for entry in entries)  # uvicorn's own lines too
