"""A synchronous httpx client of a running gateway, for `zipgate eval --gateway URL` (end to end).

Images travel as base64 PNG in `{"images": [...]}` to `POST /predict?seed=s` (the gateway purifies
image i with seed s + i, then asks its vendor) or `POST /purify?seed=s`. From the evaluation's side
the gateway is the upstream, so its failures map onto the shared tree in `service/errors.py`:
timeouts → `UpstreamTimeout`, transport errors and non-2xx answers → `UpstreamError`.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import torch
from PIL import Image

from service.errors import UpstreamError, UpstreamTimeout
from service.purify.imaging import pil_to_tensor, tensor_to_pil

RETRYABLE_STATUSES = frozenset({429, 503})
"""Overloaded (queue full) and not-ready-yet: the gateway says when to come back."""
MAX_RETRY_WAIT_S = 30.0


def encode_png_b64(image: torch.Tensor) -> str:
    """A (C, H, W) tensor in [-1, 1] as base64 PNG (8-bit: what any client of the gateway sends)."""
    buffer = io.BytesIO()
    tensor_to_pil(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def label_of(prediction: Any) -> int:
    """The class label in one vendor answer, as the gateway relays it unchanged.

    Accepts `{"label": k, ...}`, a bare integer, `{"probabilities" | "scores": [...]}` or a list
    of scores (argmax).

    Raises:
        UpstreamError: none of those shapes.
    """
    if isinstance(prediction, dict):
        if "label" in prediction:
            return int(prediction["label"])
        for key in ("probabilities", "scores", "logits"):
            if key in prediction:
                return label_of(prediction[key])
    if isinstance(prediction, bool):
        raise UpstreamError(f"cannot read a class label from the prediction {prediction!r}")
    if isinstance(prediction, int):
        return prediction
    if isinstance(prediction, list) and prediction and all(isinstance(v, (int, float)) for v in prediction):
        return max(range(len(prediction)), key=prediction.__getitem__)
    raise UpstreamError(f"cannot read a class label from the prediction {str(prediction)[:200]!r}")


class GatewayClient:
    """Calls one gateway; use as a context manager so the connection pool is closed.

    Args:
        base_url: e.g. "http://127.0.0.1:8080".
        timeout_s: seconds one request may take (also sent as X-Request-Timeout, which the
            gateway caps at its own maximum).
        connect_timeout_s: seconds to open a connection.
        max_retries: retries of a 429/503 answer, each after its Retry-After (at most 30 s).
        api_key: sent as a Bearer token when the gateway requires one.
    """

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 5,
        api_key: str | None = None,
    ) -> None:
        if not timeout_s > 0 or not connect_timeout_s > 0:
            raise ValueError(f"timeouts must be > 0 s, got {timeout_s} and {connect_timeout_s}")
        headers = {"X-Request-Timeout": f"{timeout_s:g}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s)
        )
        self.purification: dict[str, Any] | None = None  # the gateway's settings, from its last answer

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def _post(self, path: str, images: torch.Tensor, seed: int, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"images": [encode_png_b64(image) for image in images]}
        query = {"seed": seed, **(params or {})}
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.post(path, json=body, params=query)
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout(f"the gateway at {self.base_url} did not answer {path} in time: {exc}") from exc
            except httpx.TransportError as exc:
                raise UpstreamError(f"cannot reach the gateway at {self.base_url}: {exc!r}") from exc
            if response.status_code in RETRYABLE_STATUSES and attempt < self.max_retries:
                time.sleep(min(float(response.headers.get("Retry-After", "1")), MAX_RETRY_WAIT_S))
                continue
            if response.is_success:
                return response.json()
            hint = (
                " (lower --batch-size below the gateway's max_images_per_request)"
                if response.status_code == 413
                else ""
            )
            raise UpstreamError(
                f"the gateway answered {response.status_code} to {path}{hint}: {response.text[:300]}",
                upstream_status=response.status_code,
            )
        raise AssertionError("unreachable: the loop returns or raises")

    def predict(self, images: torch.Tensor, seed: int, votes: int = 1) -> torch.Tensor:
        """The vendor's labels for `images` (N, C, H, W) in [-1, 1], purified by the gateway.

        Args:
            images: the batch (sent as 8-bit PNGs).
            seed: canvas i is purified with seed + i (vote k: `service.purify.seeds.vote_canvas_seeds`).
            votes: `?votes=K`: the gateway purifies K times and answers with the majority label. The request
                also says `strength=balanced`, so the gateway runs its configured knobs with exactly K votes
                whatever its default strength.

        Returns:
            (N,) int64 labels.

        Raises:
            UpstreamTimeout, UpstreamError: see the module docstring.
        """
        answer = self._post("/predict", images, seed, {"votes": votes, "strength": "balanced"})
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != images.shape[0]:
            raise UpstreamError(
                f"the gateway returned {len(predictions or [])} predictions for {images.shape[0]} images"
            )
        self.purification = answer.get("purification")
        return torch.tensor([label_of(p) for p in predictions], dtype=torch.long)

    def purify(self, images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The gateway's purified images and A⁺A x (its first transform) for a batch.

        Returns:
            (purified, degraded), each (N, C, H, W) in [-1, 1], decoded from the gateway's PNGs.

        Raises:
            UpstreamTimeout, UpstreamError: see the module docstring.
        """
        answer = self._post("/purify", images, seed, {"include": "degraded"})
        channels = images.shape[1]

        def decode(items: list[str]) -> torch.Tensor:
            return torch.stack(
                [pil_to_tensor(Image.open(io.BytesIO(base64.b64decode(item))), channels) for item in items]
            )

        return decode(answer["images"]), decode(answer["degraded"])
