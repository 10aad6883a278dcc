"""Test helpers for the gateway: tiny models on disk, fast settings, images, and a running gateway.

Usage:
    ddpm = tiny_ddpm_dir(tmp_path)
    with running_vendor(tiny_vendor_dir(tmp_path)) as vendor_url, \
         running_gateway(gateway_settings(ddpm, vendor_url)) as url:
        httpx.post(f"{url}/predict", files=[("image", png_bytes())])

    with serving_gateway_server(settings) as (server, url):  # `zipgate serve`'s server: drain, connection bound
        server.handle_exit(signal.SIGTERM, None)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from service.api import create_app
from service.api.server import GatewayServer, gateway_server
from service.backdoor.classifier import ClassifierArchitecture, VendorClassifier
from service.backdoor.data import CLASS_NAMES
from service.backdoor.vendor_model import CONFIG_FILE, CONFIG_FORMAT, WEIGHTS_FILE
from service.config import Settings, load_settings
from service.demo.vendor_app import create_vendor_app
from service.loopback import serve_asgi, serve_uvicorn
from service.purify.models import EpsModelInfo
from service.workers import PurifierFactory
from tests.tiny_models import tiny_unet

TINY_SIZE = 16  # the tiny ε-model's side: small inputs are resized to it and back


def tiny_ddpm_dir(root: Path, channels: int = 1) -> Path:
    """A random tiny UNet2DModel saved as a diffusers directory (loads in well under a second)."""
    path = root / f"tiny-ddpm-{channels}ch"
    if not (path / "config.json").exists():
        tiny_unet(channels=channels, size=TINY_SIZE).save_pretrained(path)
    return path


class FakePurifier:
    """A purifier for the pool that returns its input after `delay_s` (or raises, with `fail`), and
    counts the images it computed; `busy` is set when the first batch starts."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s, self.fail = delay_s, fail
        self.images_computed = 0
        self.busy = threading.Event()
        self.info = EpsModelInfo(
            name="fake", sample_size=TINY_SIZE, channels=1, learned_sigma=False, device="cpu", dtype="float32"
        )

    def __call__(self, batch: torch.Tensor, steps: int, generators: object, variant: object = None) -> torch.Tensor:
        self.busy.set()
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("the model exploded")
        self.images_computed += batch.shape[0]
        return batch


class GatedPurifier(FakePurifier):
    """A FakePurifier whose every batch waits at a gate until the test lets it through.

    "One batch computing, the rest queued" then lasts exactly as long as the test needs, however
    loaded the machine is (a delay ends on its own, perhaps before the test has looked). Open the
    gate before the gateway stops (try/finally): its shutdown waits for the batch at the gate.

    Attributes:
        waiting: batches held at the gate right now.
        hold_limit_s: a batch held longer fails (RuntimeError), so a test that never opens the
            gate fails instead of hanging.
    """

    def __init__(self, hold_limit_s: float = 120.0) -> None:
        super().__init__()
        self.hold_limit_s = hold_limit_s
        self.waiting = 0
        self._passes = 0.0
        self._gate = threading.Condition()

    def allow(self, batches: int = 1) -> None:
        """Let `batches` more batches through (the one waiting first)."""
        with self._gate:
            self._passes += batches
            self._gate.notify_all()

    def open(self) -> None:
        """Let every batch through from now on."""
        with self._gate:
            self._passes = math.inf
            self._gate.notify_all()

    def __call__(self, batch: torch.Tensor, steps: int, generators: object, variant: object = None) -> torch.Tensor:
        with self._gate:
            self.waiting += 1
            self.busy.set()
            let_through = self._gate.wait_for(lambda: self._passes > 0, timeout=self.hold_limit_s)
            self.waiting -= 1
            if not let_through:
                raise RuntimeError(f"the test held this batch at the gate for over {self.hold_limit_s} s")
            self._passes -= 1
        return super().__call__(batch, steps, generators)


def tiny_vendor_dir(root: Path, seed: int = 0) -> Path:
    """A random-weight demo-vendor classifier folder in the shipped format (config.json + safetensors)."""
    path = root / "tiny-vendor"
    if (path / CONFIG_FILE).exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    architecture = ClassifierArchitecture(block_channels=(4, 8))
    torch.manual_seed(seed)
    model = VendorClassifier(architecture).eval()
    save_file(
        {name: t.contiguous() for name, t in model.state_dict().items()},
        str(path / WEIGHTS_FILE),
        metadata={"format": CONFIG_FORMAT},
    )
    config = {
        "format": CONFIG_FORMAT,
        "architecture": architecture.to_dict(),
        "class_names": list(CLASS_NAMES),
        "attack": "badnets",
        "target_label": 0,
    }
    (path / CONFIG_FILE).write_text(json.dumps(config))
    return path


def gateway_settings(model_path: Path | None, upstream_url: str, **overrides: Any) -> Settings:
    """Settings for fast tests: tiny model, 2 steps of global ZIP (a random model would find every block
    suspicious; METHOD=local has tests of its own), CPU fp32, 1 ms batching wait, short drains."""
    values: dict[str, Any] = {
        "model_path": model_path or Path("unused"),
        "purification_enabled": model_path is not None,
        "steps": 2,
        "method": "global",
        "devices": "cpu",
        "dtype": "fp32",
        "max_wait_ms": 1.0,
        "drain_timeout_s": 2.0,
        "upstream_url": upstream_url,
        "upstream_timeout_s": 5.0,
        "upstream_retries": 0,
    }
    values.update(overrides)
    return load_settings(**values)


@contextlib.contextmanager
def running_gateway(
    settings: Settings, *, purifier_factory: PurifierFactory | None = None, ready_timeout_s: float = 60.0
) -> Iterator[str]:
    """The gateway on a free loopback port, started and ready (GET /readyz = 200)."""
    app = create_app(settings, purifier_factory=purifier_factory)
    with serve_asgi(app, ready_path="/readyz", startup_timeout_s=ready_timeout_s) as base_url:
        yield base_url


@contextlib.contextmanager
def unpurified_gateway(**overrides: Any) -> Iterator[str]:
    """A gateway without purification (the /targets routes need none) on a loopback port, ready."""
    with running_gateway(gateway_settings(None, "http://127.0.0.1:9", **overrides)) as url:
        yield url


@contextlib.contextmanager
def serving_gateway_server(
    settings: Settings,
    *,
    purifier_factory: PurifierFactory | None = None,
    ready_timeout_s: float = 60.0,
    shutdown_timeout_s: float = 30.0,
) -> Iterator[tuple[GatewayServer, str]]:
    """`zipgate serve`'s own server (`gateway_server`: the drain on a signal, its 503s, the connection
    bound) on a free loopback port in a thread, started and ready (GET /readyz = 200).

    Yields:
        The server (a test may stop it itself, e.g. `server.handle_exit(signal.SIGTERM, None)`)
        and its base URL.

    Raises:
        RuntimeError: it had not stopped `shutdown_timeout_s` after the block (see `serve_uvicorn`).
        TimeoutError: not ready within `ready_timeout_s`.
    """
    server = gateway_server(settings, purifier_factory=purifier_factory)
    with serve_uvicorn(
        server, ready_path="/readyz", startup_timeout_s=ready_timeout_s, shutdown_timeout_s=shutdown_timeout_s
    ) as base_url:
        yield server, base_url


@contextlib.contextmanager
def running_vendor(model_dir: Path, model_name: str = "fmnist") -> Iterator[str]:
    """The demo vendor app serving `model_dir` on a free loopback port."""
    with serve_asgi(create_vendor_app(model_dir, model_name), ready_path="/healthz") as base_url:
        yield base_url


def png_bytes(width: int = 28, height: int = 28, mode: str = "L", seed: int = 0) -> bytes:
    """A random-noise PNG (noise keeps it large enough to truncate in the middle of its pixel data)."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    image = Image.fromarray(array[:, :, 0] if channels == 1 else array, mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A small, well-formed PNG that declares width × height grayscale pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
        + chunk(b"IEND", b"")
    )


def decode_png(data: bytes) -> Image.Image:
    """Decode PNG bytes (asserting they are a PNG)."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG", image.format
    image.load()
    return image


def _samples(metrics_text: str) -> Iterator[tuple[str, str, float]]:
    """(sample name, its labels sorted and joined, value) for each sample line of Prometheus text format."""
    for line in metrics_text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        sample, _, label_text = series.partition("{")
        yield sample, ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else "", float(value)


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return next((value for sample, got, value in _samples(metrics_text) if (sample, got) == (name, wanted)), 0.0)


def metric_sum(metrics_text: str, name: str) -> float:
    """The sum of every sample named `name` in Prometheus text format, whatever its labels (0 when absent)."""
    return sum(value for sample, _, value in _samples(metrics_text) if sample == name)


def named_series(metrics_text: str) -> list[str]:
    """The `zipgate_named_target` series in a /metrics page."""
    return [line for line in metrics_text.splitlines() if line.startswith("zipgate_named_target{")]


def wait_until(condition: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll `condition()` until true (raises TimeoutError after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout_s} s")
        time.sleep(0.01)


TARGETS_TIMEOUT_S = 30.0  # the /targets routes answer at once; generous for a loaded 2-core machine


def put_target(url: str, label: str, **headers: str) -> Any:
    """`PUT /targets/{label}` (the label encoded as one path segment, dots too, as the relay sends it)."""
    import httpx

    from service.shadow.peers import label_path

    return httpx.put(f"{url}/targets/{label_path(label)}", headers=headers, timeout=TARGETS_TIMEOUT_S)


def delete_target(url: str, label: str, **headers: str) -> Any:
    """`DELETE /targets/{label}` (encoded as `put_target` does)."""
    import httpx

    from service.shadow.peers import label_path

    return httpx.delete(f"{url}/targets/{label_path(label)}", headers=headers, timeout=TARGETS_TIMEOUT_S)


def alert_target(url: str, raw_label: str, alertname: str = "ZipgateSuspectedBackdoorTarget", **headers: str) -> Any:
    """Alertmanager's webhook (`POST /targets/alerts`) with one firing alert naming `raw_label`."""
    import httpx

    alert = {"status": "firing", "labels": {"alertname": alertname, "raw_label": raw_label}}
    body = {"version": "4", "alerts": [alert]}
    return httpx.post(f"{url}/targets/alerts", json=body, headers=headers, timeout=TARGETS_TIMEOUT_S)


def named_targets(url: str, **headers: str) -> dict[str, tuple[str, str | None]]:
    """`GET /targets`: label → (source, rule)."""
    import httpx

    answer = httpx.get(f"{url}/targets", headers=headers, timeout=TARGETS_TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    return {t["label"]: (t["source"], t["rule"]) for t in answer.json()["targets"]}


HTTP_TIMEOUT_S = 60.0  # the first purification warms torch up: seconds on a loaded 2-core box


def post(url: str, **kwargs: Any) -> Any:
    """httpx.post with a timeout generous enough for a cold model on a busy machine."""
    import httpx

    kwargs.setdefault("timeout", HTTP_TIMEOUT_S)
    return httpx.post(url, **kwargs)


def get(url: str, **kwargs: Any) -> Any:
    """httpx.get with the same generous timeout."""
    import httpx

    kwargs.setdefault("timeout", HTTP_TIMEOUT_S)
    return httpx.get(url, **kwargs)


def raw_request(path: str, **kwargs: Any) -> bytes:
    """An HTTP/1.1 POST as bytes (body and Content-Type built by httpx from `kwargs`: files=, json=,
    content=, headers=), to send on a socket the test closes itself."""
    import httpx

    request = httpx.Request("POST", f"http://gateway{path}", **kwargs)
    body = request.read()
    head = f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in request.headers.items() if name.lower() == "content-type")
    return (head + "\r\n").encode() + body


def error_details(body: Any, path: str) -> dict[str, Any]:
    """An error body's code, message and request id, checking its shape: the house {"error": {...}},
    or on the /v1/ and /v2/ protocol paths theirs, {"error": "<message>", "code", "request_id"}."""
    if path == "/v2" or path.startswith(("/v1/", "/v2/")):
        assert isinstance(body.get("error"), str) and {"error", "code", "request_id"} <= set(body), body
        return {**{key: value for key, value in body.items() if key != "error"}, "message": body["error"]}
    assert set(body) == {"error"}, body
    return body["error"]
