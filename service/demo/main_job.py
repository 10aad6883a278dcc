"""`zipgate demo`: the backdoored vendor and the gateway on loopback, one clean and one triggered image.

Starts the demo vendor (BadNets model) and the gateway (shipped diffusion model) on free
127.0.0.1 ports, waits until both are ready, sends a clean test image and the same image with
the BadNets trigger both directly to the vendor and through the gateway, and prints a table:
route, prediction, true label, latency. Directly, the trigger flips the prediction to the
attacker's label; through the gateway, purification removes it.

Then a burst of triggered images goes through the gateway in shadow mode (`X-Zipgate-Shadow: 1`),
and the demo reads the backdoor alarm off the gateway's own /metrics: which raw label takes the
raw-vs-purified disagreements, and whether that names the attacker's target.
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from service.api.logging import configure_logging
from service.api.server import gateway_server
from service.backdoor.attacks import TARGET_LABEL, Attack, apply_trigger
from service.backdoor.data import CLASS_NAMES, load_split
from service.config import Settings
from service.demo.vendor_app import create_vendor_app
from service.loopback import serve_uvicorn, wait_for_http
from service.purify.imaging import tensor_to_pil
from service.purify.options import Method
from service.shadow.alarm import AlarmRule, comparisons_by_raw_label, disagreements_by_raw_label
from service.shadow.monitor import SHADOW_HEADER
from service.upstream import UpstreamProtocol

DEFAULT_VENDOR_DIR = Path("models/vendor-badnets")
READY_TIMEOUT_S = 300.0  # loading the shipped model takes seconds; a cold CPU box may take longer
DEMO_SEED = 0  # the gateway's purification noise: the same table on every run
SHADOW_BURST = 24  # triggered images in the shadow burst: above the alarm's minimum count of 20


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


def run_demo(
    settings: Settings, keep_running: bool = False, *, vendor_dir: Path = DEFAULT_VENDOR_DIR, out: TextIO | None = None
) -> int:
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
        burst = _triggered_burst(SHADOW_BURST)
        vendor = uvicorn.Server(uvicorn.Config(create_vendor_app(vendor_dir), log_config=None, access_log=False))
        with _serving(vendor, "vendor", "/healthz") as vendor_url:
            gateway_settings = settings.model_copy(
                update={
                    "host": "127.0.0.1",
                    "port": 0,
                    "upstream_url": vendor_url,
                    "upstream_protocol": UpstreamProtocol.RAW,
                    "upstream_raw_path": "/predict",
                    "shadow_allow_header": True,
                }
            )
            server = gateway_server(gateway_settings)
            with _serving(server, "gateway", "/readyz") as gateway_url:
                rows = _measure(vendor_url, gateway_url, clean, triggered, label)
                _print_table(rows, settings, out)
                _print_alarm(_shadow_alarm(gateway_url, burst), len(burst), out)
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


def _triggered_burst(count: int) -> list[bytes]:
    """The first `count` test images not of the target class, with the BadNets trigger."""
    split = load_split(train=False)
    victims = split.images[split.labels != TARGET_LABEL][:count]
    return [_png(image.unsqueeze(0)) for image in apply_trigger(victims, Attack.BADNETS)]


@dataclass(frozen=True)
class AlarmReading:
    """What the gateway's /metrics said after the shadow burst."""

    comparisons: float
    disagreements: dict[str, float]  # per raw label
    named: str | None


def _shadow_alarm(gateway_url: str, burst: list[bytes]) -> AlarmReading:
    """Send the burst in shadow mode, wait for its comparisons, and apply the alarm's rule to /metrics."""
    with httpx.Client(timeout=READY_TIMEOUT_S) as client:
        response = client.post(
            f"{gateway_url}/predict",
            params={"seed": DEMO_SEED},
            headers={SHADOW_HEADER: "1"},
            files=[("image", (f"{i}.png", png, "image/png")) for i, png in enumerate(burst)],
        )
        if response.status_code != 200:
            raise DemoError(f"the shadow burst got {response.status_code}: {response.text}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:  # the comparisons finish after the answer: wait until /metrics has them all
            families = {f.name: f for f in text_string_to_metric_families(client.get(f"{gateway_url}/metrics").text)}
            done = sum(
                sample.value
                for name in ("zipgate_shadow_comparisons", "zipgate_shadow_unlabelled", "zipgate_shadow_failures")
                for sample in families[name].samples
                if sample.name.endswith("_total")
            )
            if done >= len(burst) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        text = client.get(f"{gateway_url}/metrics").text
    counts = disagreements_by_raw_label(text)
    comparisons = sum(comparisons_by_raw_label(text).values())
    return AlarmReading(comparisons, counts, AlarmRule().suspected_target(counts))


def _png(batch: object) -> bytes:
    buffer = io.BytesIO()
    tensor_to_pil(batch[0]).save(buffer, format="PNG")  # type: ignore[index]
    return buffer.getvalue()


@contextlib.contextmanager
def _serving(server: uvicorn.Server, name: str, ready_path: str) -> Iterator[str]:
    """Serve on a free loopback port in a thread, once `ready_path` answers 200; start-up errors are DemoErrors."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(serve_uvicorn(server, startup_timeout_s=READY_TIMEOUT_S, name=name))
            wait_for_http(f"{url}{ready_path}", timeout_s=READY_TIMEOUT_S, hopeless=_start_up_failed)
        except (RuntimeError, TimeoutError) as exc:
            raise DemoError(f"the {name} server did not start: {exc}") from exc
        yield url


def _start_up_failed(answer: httpx.Response) -> bool:
    """A /readyz answer saying start-up failed: waiting longer will not help."""
    return '"failed"' in answer.text


def _measure(vendor_url: str, gateway_url: str, clean: bytes, triggered: bytes, label: int) -> list[DemoRow]:
    rows = []
    with httpx.Client(timeout=READY_TIMEOUT_S) as client:
        for name, png in (("clean", clean), ("triggered", triggered)):
            started = time.perf_counter()
            direct = client.post(f"{vendor_url}/predict", content=png, headers={"Content-Type": "image/png"})
            direct_ms = (time.perf_counter() - started) * 1e3
            started = time.perf_counter()
            gated = client.post(
                f"{gateway_url}/predict",
                params={"seed": DEMO_SEED},
                files=[("image", (f"{name}.png", png, "image/png"))],
            )
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
    engine = (
        f"localise + restore, {settings.steps} steps, polish {settings.polish_noise:g}·T"
        if settings.method is Method.LOCAL
        else f"{settings.transforms}, {settings.steps} steps, λ={settings.guidance_power}"
    )
    print(
        f"zipgate demo: BadNets-backdoored vendor (attack target: {_class(TARGET_LABEL)}); "
        f"purifier {settings.model_path.name}, {engine}",
        file=out,
    )
    print(f"{'image':<10} {'route':<8} {'prediction':<16} {'true label':<16} {'latency':>10}", file=out)
    for row in rows:
        note = ""
        if row.image == "triggered" and row.prediction == TARGET_LABEL != row.true_label:
            note = "  <- backdoor fired"
        elif row.image == "triggered" and row.prediction == row.true_label:
            note = "  <- backdoor defused"
        print(
            f"{row.image:<10} {row.route:<8} {_class(row.prediction):<16} {_class(row.true_label):<16} "
            f"{row.latency_ms:>7.1f} ms{note}",
            file=out,
        )


def _print_alarm(reading: AlarmReading, burst: int, out: TextIO) -> None:
    rule = AlarmRule()
    print(
        f"\nshadow mode: {burst} triggered images, vendor asked about raw and purified copies; "
        f"{reading.comparisons:.0f} compared, {sum(reading.disagreements.values()):.0f} disagree",
        file=out,
    )
    print(f"{'raw label':<16} {'disagreements':>13}", file=out)
    for label, count in sorted(reading.disagreements.items(), key=lambda item: -item[1]):
        print(f"{_class(int(label)) if label.isdigit() else label:<16} {count:>13.0f}", file=out)
    if reading.named is None:
        print(
            f"alarm (gateway /metrics): silent: no raw label has ≥ {rule.min_count:g} disagreements and more "
            f"than {rule.share:.0%} of them",
            file=out,
        )
    else:
        verdict = "the attacker's target" if reading.named == str(TARGET_LABEL) else "not the attacker's target"
        print(
            f"alarm (gateway /metrics): suspected backdoor target: label {_class(int(reading.named))} ({verdict})",
            file=out,
        )


def _print_usage(vendor_url: str, gateway_url: str, out: TextIO) -> None:
    print(f"\nvendor:  {vendor_url}   gateway: {gateway_url}  (docs: {gateway_url}/docs)", file=out)
    print("image:   .venv/bin/zipgate sample --attack badnets -o some.png   (a triggered test image)", file=out)
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
