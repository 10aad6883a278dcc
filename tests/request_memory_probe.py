"""Peak memory of one request at the gateway's pixel limits, measured in a fresh process.

Run by tests/test_image_limits.py as `python -m tests.request_memory_probe SHAPE`, where SHAPE is
`one` (one image of the whole pixel budget) or `many` (the budget spread over 64 images). It
starts the gateway in-process (TestClient, a 3-channel identity-plus-noise purifier: the worst
case, three times the pixels of a grayscale model), sends one warm-up request, resets the
kernel's peak-RSS mark, sends the maximal request to `/purify?include=degraded` (the route that
holds the most full-size copies: the decoded input, the purified and the degraded outputs), and
prints one JSON line: {"status", "peak_growth_mib", "pixels"}.

A fresh process, because the peak-RSS mark of the test process holds whatever peaked before.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from PIL import Image

from service.api import create_app
from service.config import load_settings
from service.purify.models import EpsModelInfo

CANVAS = 64


class NoisyPurifier:
    """Returns noise the shape of its input: output PNGs that compress like real purified images."""

    info = EpsModelInfo(
        name="probe", sample_size=CANVAS, channels=3, learned_sigma=False, device="cpu", dtype="float32"
    )

    def __call__(self, batch: torch.Tensor, steps: int, generators: object, variant: object = None) -> torch.Tensor:
        return torch.rand_like(batch) * 2 - 1


def _png(width: int, height: int) -> bytes:
    """A flat RGB PNG: kilobytes on the wire, width × height pixels once decoded (what an attacker sends)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 150)).save(buffer, format="PNG")
    return buffer.getvalue()


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in kB."""
    with open("/proc/self/status", encoding="ascii") as status:
        return {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}


def _reset_peak() -> None:
    """Set VmHWM back to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")


def main(shape: str) -> None:
    settings = load_settings(
        model_path=Path("unused"),
        devices="cpu",
        dtype="fp32",
        steps=1,
        max_wait_ms=1.0,
        upstream_url="http://127.0.0.1:9",
    )
    budget = settings.max_request_pixels
    if shape == "one":
        side = math.isqrt(min(budget, settings.max_image_pixels))
        images = [_png(side, side)]
    else:
        count = settings.max_images_per_request
        side = math.isqrt(budget // count)
        images = [_png(side, side)] * count
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    app = create_app(settings, purifier_factory=lambda device: NoisyPurifier())
    with TestClient(app) as client:
        warm = client.post("/purify", files=[("image", ("w.png", _png(40, 40), "image/png"))])
        assert warm.status_code == 200, warm.text
        _reset_peak()
        before = _status()
        assert before["VmHWM"] - before["VmRSS"] < 4096, before  # the reset took
        response = client.post("/purify", params={"include": "degraded"}, files=files)
        after = _status()
    print(
        json.dumps(
            {
                "status": response.status_code,
                "peak_growth_mib": (after["VmHWM"] - before["VmRSS"]) / 1024,
                "pixels": side * side * len(images),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "one")
