"""Every failure answers `{"error": {"code", "message", "request_id"}}` with the right status, fast."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.api.gateway import Gateway
from service.errors import LOADING_RETRY_AFTER_S, NotReady
from tests.fault_servers import StaticApp, refused_port, reset_after_head, serve_asgi, serve_tcp
from tests.gateway_servers import (
    FakePurifier,
    GatedPurifier,
    error_details,
    gateway_settings,
    get,
    metric_value,
    png_bytes,
    png_header_claiming,
    post,
    running_gateway,
    tiny_ddpm_dir,
    wait_until,
)

API_KEY = "s3cret-key-for-tests"
MAX_IMAGES = 3


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    """The response is a JSON error of `status` and `code`, stamped with the request id, no trace.

    The house shape {"error": {...}}; on the /v1/ and /v2/ protocol paths theirs, {"error": "<message>"},
    with the code and request id beside it.
    """
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = error_details(response.json(), response.request.url.path)
    assert error["code"] == code, error
    assert error["message"] and "Traceback" not in response.text
    assert error["request_id"] == response.headers["x-request-id"]
    return error


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_ddpm_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, StaticApp]]:
    app = StaticApp(200, b'{"label": 4}')
    with serve_asgi(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def gateway(ddpm: Path, upstream: tuple[str, StaticApp]) -> Iterator[str]:
    settings = gateway_settings(
        ddpm,
        upstream[0],
        api_key=API_KEY,
        max_images_per_request=MAX_IMAGES,
        max_image_bytes=200_000,
        max_request_bytes=1_000_000,
        max_image_pixels=512 * 512,
    )
    with running_gateway(settings) as url:
        yield url


@pytest.fixture
def client(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, headers={"X-API-Key": API_KEY}, timeout=60) as http:
        yield http


def _files(*images: bytes, content_type: str = "image/png") -> list:
    return [("image", (f"{i}", image, content_type)) for i, image in enumerate(images)]


# --- bad inputs ---------------------------------------------------------------------------------


def test_truncated_png_is_400(client: httpx.Client) -> None:
    image = png_bytes(64, 64)
    assert_error(client.post("/predict", files=_files(image[: len(image) // 2])), 400, "bad_request")
    assert_error(client.post("/predict", files=_files(image[:20])), 400, "bad_request")  # cut inside the header


def test_text_file_is_415(client: httpx.Client) -> None:
    error = assert_error(
        client.post("/predict", files=_files(b"just some text\n", content_type="text/plain")),
        415,
        "unsupported_media_type",
    )
    assert "PNG" in error["message"]


def test_zero_byte_image_is_400(client: httpx.Client) -> None:
    assert_error(client.post("/predict", files=_files(b"")), 400, "bad_request")
    assert_error(client.post("/predict", content=b"", headers={"Content-Type": "image/png"}), 400, "bad_request")


def test_one_pixel_image_is_purified(client: httpx.Client) -> None:
    response = client.post("/predict", files=_files(png_bytes(1, 1)))
    assert response.status_code == 200, response.text


def test_huge_declared_size_is_413_before_decoding(client: httpx.Client) -> None:
    bomb = png_header_claiming(100_000, 100_000)  # 10 G pixels declared in a few kB
    assert len(bomb) < 10_000
    # Decoding it would take minutes and 10 GB: the 413 can only come from the declared size.
    error = assert_error(client.post("/predict", files=_files(bomb)), 413, "payload_too_large")
    assert "pixels" in error["message"]
    # Within PIL's own guard but over ours: refused from the header too.
    assert_error(client.post("/predict", files=_files(png_header_claiming(4000, 4000))), 413, "payload_too_large")


def test_image_and_request_byte_limits_are_413(client: httpx.Client) -> None:
    big = png_bytes(300, 300, mode="RGB")  # ~270 kB of noise, over max_image_bytes = 200 kB
    assert_error(client.post("/predict", files=_files(big)), 413, "payload_too_large")
    too_long = b"\x89PNG" + b"\x00" * 1_100_000
    assert_error(
        client.post("/predict", content=too_long, headers={"Content-Type": "image/png"}), 413, "payload_too_large"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is what counts
        for _ in range(12):
            yield b"\x00" * 100_000

    assert_error(
        client.post("/predict", content=chunks(), headers={"Content-Type": "image/png"}), 413, "payload_too_large"
    )


def test_wrong_json_is_400_or_422(client: httpx.Client) -> None:
    assert_error(
        client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"}), 400, "bad_request"
    )
    assert_error(client.post("/predict", json={"imgs": ["x"]}), 422, "invalid_request")
    assert_error(client.post("/predict", json={"images": []}), 422, "invalid_request")
    assert_error(client.post("/predict", json={"images": [1]}), 422, "invalid_request")
    assert_error(client.post("/predict", json=["a"]), 422, "invalid_request")
    assert_error(client.post("/predict", json={"images": ["%%%not base64"]}), 400, "bad_request")
    assert_error(
        client.post("/predict", files={"picture": ("a.png", png_bytes(), "image/png")}), 422, "invalid_request"
    )
    assert_error(client.post("/predict", params={"seed": "-1"}, files=_files(png_bytes())), 422, "invalid_request")


def test_too_many_images_is_413(client: httpx.Client) -> None:
    image = png_bytes(8, 8)
    assert client.post("/predict", files=_files(*[image] * MAX_IMAGES)).status_code == 200
    for count in (MAX_IMAGES + 1, MAX_IMAGES + 5):
        assert_error(client.post("/predict", files=_files(*[image] * count)), 413, "payload_too_large")
    encoded = base64.b64encode(image).decode()
    assert_error(client.post("/predict", json={"images": [encoded] * (MAX_IMAGES + 1)}), 413, "payload_too_large")


def test_unsupported_content_type_is_415(client: httpx.Client) -> None:
    assert_error(
        client.post("/predict", content=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"
    )
    assert_error(client.post("/predict", content=b"hello"), 415, "unsupported_media_type")


def test_unknown_path_and_method_are_json(client: httpx.Client) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")


# --- API key ------------------------------------------------------------------------------------


def test_api_key_is_required_and_compared(gateway: str) -> None:
    files = _files(png_bytes())
    missing = post(f"{gateway}/predict", files=files)
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_error(post(f"{gateway}/predict", files=files, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    assert_error(
        post(f"{gateway}/predict", files=files, headers={"Authorization": f"Basic {API_KEY}"}), 401, "unauthorized"
    )
    assert_error(post(f"{gateway}/v2/models/m/infer", json={}), 401, "unauthorized")
    assert post(f"{gateway}/predict", files=files, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert post(f"{gateway}/predict", files=files, headers={"X-API-Key": API_KEY}).status_code == 200
    for probe in ("/healthz", "/readyz", "/metrics"):
        assert get(f"{gateway}{probe}").status_code == 200, probe


# --- failures inside the gateway -----------------------------------------------------------------


def test_an_unexpected_exception_is_a_json_500_without_a_trace(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Gateway, *args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(Gateway, "predict", broken)
    response = client.post("/predict", files=_files(png_bytes()))
    error = assert_error(response, 500, "internal")
    assert "secret internals" not in response.text and "ZeroDivisionError" not in response.text
    assert error["request_id"]


def test_a_failing_purification_batch_is_a_json_500(upstream: tuple[str, StaticApp]) -> None:
    with running_gateway(
        gateway_settings(Path("unused"), upstream[0]), purifier_factory=lambda device: FakePurifier(fail=True)
    ) as url:
        response = post(f"{url}/predict", files=_files(png_bytes()))
        assert_error(response, 500, "purification_failed")
        assert "exploded" not in response.text or "Traceback" not in response.text
        assert get(f"{url}/readyz").status_code == 200  # the worker keeps serving


@pytest.mark.slow
def test_a_full_queue_is_429_with_retry_after(upstream: tuple[str, StaticApp]) -> None:
    purifier = GatedPurifier()  # the first batch waits at the gate: the queue stays full until the test lets it go
    settings = gateway_settings(Path("unused"), upstream[0], max_batch_size=1, queue_limit=1)
    with running_gateway(settings, purifier_factory=lambda device: purifier) as url:
        results: list[int] = []

        def send(seed: int) -> None:
            results.append(post(f"{url}/predict", files=_files(png_bytes(seed=seed))).status_code)

        threads = [threading.Thread(target=send, args=(seed,)) for seed in (1, 2)]
        try:
            threads[0].start()
            wait_until(lambda: purifier.waiting == 1, what="first batch at the gate")
            threads[1].start()
            wait_until(
                lambda: metric_value(get(f"{url}/metrics").text, "zipgate_queue_depth") == 1,
                what="second request queued",
            )
            response = post(f"{url}/predict", files=_files(png_bytes(seed=3)))
            assert_error(response, 429, "overloaded")
            assert int(response.headers["retry-after"]) >= 1
        finally:
            purifier.open()  # the gateway's shutdown waits for the batch at the gate
            for thread in threads:
                if thread.ident is not None:  # started
                    thread.join(60)
        assert results == [200, 200]  # every accepted request still completes


# --- upstream faults -----------------------------------------------------------------------------


def _through(upstream_url: str, ddpm: Path, **overrides: object) -> httpx.Response:
    settings = gateway_settings(ddpm, upstream_url, **overrides)
    with running_gateway(settings) as url:
        response = post(f"{url}/predict", files=_files(png_bytes()), timeout=15)
        follow_up = get(f"{url}/healthz", timeout=2)  # the gateway is still answering
        assert follow_up.status_code == 200
    return response


def test_slow_upstream_is_504(ddpm: Path) -> None:
    with serve_asgi(StaticApp(200, b"{}", delay_s=5.0)) as upstream_url:
        response = _through(upstream_url, ddpm, upstream_timeout_s=0.5)
    assert_error(response, 504, "upstream_timeout")  # a vendor left to answer (after 5 s) would give 200


def test_upstream_500_is_502_with_its_status(ddpm: Path) -> None:
    with serve_asgi(StaticApp(500, b"boom", "text/plain")) as upstream_url:
        response = _through(upstream_url, ddpm)
    error = assert_error(response, 502, "upstream_error")
    assert error["upstream_status"] == 500


def test_refused_upstream_is_502(ddpm: Path) -> None:
    with refused_port() as upstream_url:
        response = _through(upstream_url, ddpm, upstream_retries=1)
    assert_error(response, 502, "upstream_error")


def test_garbage_upstream_body_is_502(ddpm: Path) -> None:
    with serve_asgi(StaticApp(200, b"<html>not json", "text/html")) as upstream_url:
        response = _through(upstream_url, ddpm)
    error = assert_error(response, 502, "upstream_error")
    assert error["upstream_status"] == 200


def test_reset_connection_is_502(ddpm: Path) -> None:
    with serve_tcp(reset_after_head) as upstream_url:
        response = _through(upstream_url, ddpm)
    assert_error(response, 502, "upstream_error")


def test_upstream_4xx_is_relayed_with_its_status(ddpm: Path) -> None:
    with serve_asgi(StaticApp(404, b'{"detail": "no model fmnist"}')) as upstream_url:
        response = _through(upstream_url, ddpm)
    error = assert_error(response, 404, "upstream_rejected")
    assert error["upstream_status"] == 404 and "no model fmnist" in error["message"]


def test_not_ready_sends_retry_after_only_where_waiting_helps() -> None:
    assert NotReady("loading", retry_after_s=LOADING_RETRY_AFTER_S).headers == {"Retry-After": "5"}
    assert NotReady("stopped", retry_after_s=None).headers == {}


def test_http_503s_carry_retry_after_by_cause() -> None:
    loaded = threading.Event()

    def slow_to_load(device: str) -> FakePurifier:
        assert loaded.wait(60)
        return FakePurifier()

    def broken(device: str) -> FakePurifier:
        raise RuntimeError("no such model")

    with serve_asgi(StaticApp(200, b'{"label": 1}')) as upstream_url:
        settings = gateway_settings(Path("unused"), upstream_url)
        with serve_asgi(create_app(settings, purifier_factory=slow_to_load)) as url:
            try:
                loading = post(f"{url}/predict", files=[("image", png_bytes())])
            finally:
                loaded.set()
            assert loading.status_code == 503 and loading.headers["retry-after"] == "5", loading.text
        with serve_asgi(create_app(settings, purifier_factory=broken)) as url:
            wait_until(lambda: get(f"{url}/readyz").json()["status"] == "failed", what="start-up failed")
            failed = post(f"{url}/predict", files=[("image", png_bytes())])
            assert failed.status_code == 503 and "retry-after" not in failed.headers, failed.headers
        app = create_app(settings, purifier_factory=lambda device: FakePurifier())
        with serve_asgi(app, ready_path="/readyz", startup_timeout_s=60) as url:
            app.state.lifecycle.begin_drain()
            draining = post(f"{url}/predict", files=[("image", png_bytes())])
            assert draining.status_code == 503 and draining.headers["retry-after"] == "1", draining.text
