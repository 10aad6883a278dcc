"""`zipgate demo`: the backdoored vendor and the gateway on loopback, one clean and one triggered image.

Starts the demo vendor (BadNets model) and the gateway (shipped diffusion model) on free
127.0.0.1 ports, waits until both are ready, sends a clean test image and the same image with
the BadNets trigger both directly to the vendor and through the gateway, and prints a table:
route, prediction, true label, latency. Directly, the trigger flips the prediction to the
attacker's label; through the gateway, purification removes it.
"""

from __future__ import annotations

import contextlib
import io
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import uvicorn

from service.api.logging import configure_logging
from service.api.server import gateway_server
from service.config import Settings
from service.defense_eval.attacks import TARGET_LABEL, Attack, apply_trigger
from service.demo.vendor_app import create_vendor_app
from service.purify.imaging import tensor_to_pil
from service.training.data import CLASS_NAMES, load_split
from service.upstream import UpstreamProtocol

DEFAULT_VENDOR_DIR = Path("models/vendor-badnets")
READY_TIMEOUT_S = 300.0  # loading the shipped model takes seconds; a cold CPU box may take longer
DEMO_SEED = 0  # the gateway's purification noise: the same table on every run


class DemoError(RuntimeError):
    """The demo could not run; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class DemoRow:
    """One line of the demo table."""

    image: str  # "clean" | "triggered"
    route: str  # "direct" | "zipgate"
    prediction: int
    true_label: int
    latency_ms: float


def run_demo(settings: Settings, keep_running: bool = False, *, vendor_dir: Path = DEFAULT_VENDOR_DIR,
             out: TextIO | None = None) -> int:
    """Run the demo and print its table; with `keep_running`, serve until Ctrl+C or SIGTERM.

    Args:
        settings: gateway settings (model, transforms, steps, ...); host, port and upstream are
            replaced by loopback ports and the demo vendor in the raw protocol.
        keep_running: keep both servers up after the table, for the user's own requests.
        vendor_dir: the backdoored vendor model folder.
        out: where the table goes (default stdout).

    Returns:
        The process exit code: 0 on success, 1 when the demo could not run (message printed).
    """
    out = out or sys.stdout
    configure_logging("warning" if settings.log_level.value != "debug" else "debug")
    try:
        clean, triggered, label = _test_images()
        with _serving(create_vendor_app(vendor_dir), "vendor") as vendor_url:
            gateway_settings = settings.model_copy(update={
                "host": "127.0.0.1", "port": 0, "upstream_url": vendor_url,
                "upstream_protocol": UpstreamProtocol.RAW, "upstream_raw_path": "/predict"})
            server = gateway_server(gateway_settings)
            with _serving(server, "gateway") as gateway_url:
                _wait_ready(f"{gateway_url}/readyz", READY_TIMEOUT_S)
                rows = _measure(vendor_url, gateway_url, clean, triggered, label)
                _print_table(rows, settings, out)
                if keep_running:
                    _print_usage(vendor_url, gateway_url, out)
                    _wait_for_signal()
    except (DemoError, FileNotFoundError, ValueError) as exc:
        print(f"zipgate demo: {exc}", file=sys.stderr)
        return 1
    return 0


def _test_images() -> tuple[bytes, bytes, int]:
    """A clean Fashion-MNIST test image whose label is not the attack's target, and its triggered copy."""
    split = load_split(train=False)
    index = int((split.labels != TARGET_LABEL).nonzero()[0])
    image = split.images[index : index + 1]
    return _png(image), _png(apply_trigger(image, Attack.BADNETS)), int(split.labels[index])


def _png(batch: object) -> bytes:
    buffer = io.BytesIO()
    tensor_to_pil(batch[0]).save(buffer, format="PNG")  # type: ignore[index]
    return buffer.getvalue()


@contextlib.contextmanager
def _serving(app_or_server: object, name: str) -> Iterator[str]:
    """Serve an ASGI app (or a configured uvicorn Server) on a free loopback port in a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    if isinstance(app_or_server, uvicorn.Server):
        server = app_or_server
    else:
        server = uvicorn.Server(uvicorn.Config(app_or_server, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"demo-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not server.started:
        if not thread.is_alive():
            raise DemoError(f"the {name} server failed to start (see the log above)")
        if time.monotonic() > deadline:
            raise DemoError(f"the {name} server did not start within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    host, port = sock.getsockname()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(url)
            except httpx.TransportError as exc:
                last = repr(exc)
            else:
                if response.status_code == 200:
                    return
                last = response.text
                if '"failed"' in last:
                    raise DemoError(f"the gateway failed to start: {last}")
            time.sleep(0.1)
    raise DemoError(f"the gateway was not ready within {timeout_s:.0f} s (last answer: {last})")


def _measure(vendor_url: str, gateway_url: str, clean: bytes, triggered: bytes, label: int) -> list[DemoRow]:
    rows = []
    with httpx.Client(timeout=READY_TIMEOUT_S) as client:
        for name, png in (("clean", clean), ("triggered", triggered)):
            started = time.perf_counter()
            direct = client.post(f"{vendor_url}/predict", content=png, headers={"Content-Type": "image/png"})
            direct_ms = (time.perf_counter() - started) * 1e3
            started = time.perf_counter()
            gated = client.post(f"{gateway_url}/predict", params={"seed": DEMO_SEED},
                                files=[("image", (f"{name}.png", png, "image/png"))])
            gated_ms = (time.perf_counter() - started) * 1e3
            for response in (direct, gated):
                if response.status_code != 200:
                    raise DemoError(f"{response.request.url} answered {response.status_code}: {response.text}")
            rows.append(DemoRow(name, "direct", int(direct.json()["label"]), label, direct_ms))
            rows.append(DemoRow(name, "zipgate", int(gated.json()["predictions"][0]["label"]), label, gated_ms))
    return rows


def _class(label: int) -> str:
    return f"{label} {CLASS_NAMES[label]}"


def _print_table(rows: list[DemoRow], settings: Settings, out: TextIO) -> None:
    print(f"zipgate demo: BadNets-backdoored vendor (attack target: {_class(TARGET_LABEL)}); "
          f"purifier {settings.model_path.name}, {settings.transforms}, {settings.steps} steps, "
          f"λ={settings.guidance_power}", file=out)
    print(f"{'image':<10} {'route':<8} {'prediction':<16} {'true label':<16} {'latency':>10}", file=out)
    for row in rows:
        note = ""
        if row.image == "triggered" and row.prediction == TARGET_LABEL != row.true_label:
            note = "  <- backdoor fired"
        elif row.image == "triggered" and row.prediction == row.true_label:
            note = "  <- backdoor defused"
        print(f"{row.image:<10} {row.route:<8} {_class(row.prediction):<16} {_class(row.true_label):<16} "
              f"{row.latency_ms:>7.1f} ms{note}", file=out)


def _print_usage(vendor_url: str, gateway_url: str, out: TextIO) -> None:
    print(f"\nvendor:  {vendor_url}   gateway: {gateway_url}  (docs: {gateway_url}/docs)", file=out)
    print(f"try:     curl -F image=@some.png {gateway_url}/predict", file=out)
    print("Ctrl+C stops both.", file=out, flush=True)


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (the servers run in threads, so the main thread waits here)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
