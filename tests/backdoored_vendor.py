"""A backdoored vendor stand-in and a purifier that removes its trigger, for gateway tests over sockets.

The vendor answers "7" (the attacker's target) when an image holds a bright pixel (the trigger)
and "1" otherwise. The purifier darkens every pixel above mid-grey, which removes the trigger:
raw and purified answers then disagree exactly on triggered images.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

from tests.gateway_servers import FakePurifier

TARGET, CLEAN_LABEL = "7", "1"


def backdoor_png(triggered: bool, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 100, (16, 16), dtype=np.uint8)
    if triggered:
        pixels[12:15, 12:15] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


class BackdooredVendor:
    """Raw-protocol vendor: label 7 when any pixel is bright; records request ids; can fail the calls whose
    request id ends with `fail_suffix` (the shadow's "-shadow", the closed loop's "-raw")."""

    def __init__(self, fail_suffix: str | None = None) -> None:
        self.request_ids: list[str] = []
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/predict")
        async def predict(request: Request) -> JSONResponse:
            request_id = request.headers.get("x-request-id", "")
            with self.lock:
                self.request_ids.append(request_id)
            if fail_suffix is not None and request_id.endswith(fail_suffix):
                return JSONResponse({"error": "down"}, status_code=500)
            image = np.asarray(Image.open(io.BytesIO(await request.body())).convert("L"))
            return JSONResponse({"label": TARGET if image.max() > 200 else CLEAN_LABEL})


class TriggerRemover(FakePurifier):
    """Darkens everything above mid-grey; with `noisy`, vote-dependent: a seeded coin puts a bright pixel back."""

    def __init__(self, noisy: bool = False) -> None:
        super().__init__()
        self.noisy = noisy

    def __call__(self, batch: torch.Tensor, steps: int, generators: Any, variant: Any = None) -> torch.Tensor:
        out = batch.clamp(max=0.0)
        if self.noisy:
            for i, generator in enumerate(generators):
                if torch.rand(1, generator=generator).item() < 0.5:
                    out[i, :, 0, 0] = 1.0
        return out
