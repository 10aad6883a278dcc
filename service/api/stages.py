"""What the request's stages hand each other, and the image work they run off the event loop.

`service.api.gateway` runs the stages; these are their inputs and outputs (frozen), and the pure
functions that decode a request's images into canvases and encode the purified canvases back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from starlette.types import Receive

from service.api.decode import encode_png, load_image
from service.api.timing import RequestTimings
from service.errors import BadRequest
from service.purify.imaging import pil_to_tensor, tensor_to_pil
from service.purify.options import SmallImageFit
from service.purify.pipeline import FittedBatch, degraded_images, fit_to_model, restore_images
from service.shadow.labels import VendorLabel
from service.workers import WorkerInfo

PNG = "image/png"


@dataclass(frozen=True)
class EngineInfo:
    """The loaded diffusion model as the request path needs it."""

    model: str
    sample_size: int
    channels: int
    device: str  # every worker's device, e.g. "cpu" or "cuda:0,cuda:1"
    dtype: str

    @classmethod
    def from_device_info(cls, workers: list[WorkerInfo]) -> EngineInfo:
        """Build from `WorkerPool.device_info` (all workers hold the same model).

        Raises:
            ValueError: the purifier did not report the model's size and channels.
        """
        first = workers[0]
        if first.sample_size is None or first.channels is None:
            raise ValueError(
                "the purifier factory must return a purifier with `.info` (an EpsModelInfo): "
                "the gateway needs the model's sample_size and channels"
            )
        return cls(
            model=first.model,
            sample_size=first.sample_size,
            channels=first.channels,
            device=",".join(w.device for w in workers),
            dtype=",".join(sorted({w.dtype for w in workers})),
        )


@dataclass(frozen=True)
class RequestContext:
    """What the stages need to know about the request they serve."""

    request_id: str
    deadline: float  # time.monotonic() seconds
    seed: int | None
    timings: RequestTimings
    receive: Receive  # the server's receive, to notice a client that hangs up


@dataclass(frozen=True)
class DecodedBatch:
    """A request's images decoded, and (when purifying) fitted to the model's canvas."""

    originals: list[bytes]
    images: list[Image.Image]
    fitted: FittedBatch | None


@dataclass(frozen=True)
class PreparedImages:
    """What goes to the vendor: purified PNGs (one list per vote), or the originals when purification is off."""

    votes: list[list[bytes]]  # votes[k][i]: image i as purified by vote k; one vote unless ?votes=K
    content_type: str
    steps: int | None  # None when not purified
    decoded: DecodedBatch  # the client's images (shadow mode sends them to the vendor as they came)
    masked_fraction: list[float] | None = None  # per image, where the purifier localises (first vote)
    mask_pngs: list[bytes] | None = None  # per image, its suspicion mask (shadow captures store it)

    @property
    def blobs(self) -> list[bytes]:
        """The first vote's images (the only ones without votes)."""
        return self.votes[0]


@dataclass(frozen=True)
class PurifiedBatch:
    """Purified images as PNG at their original sizes (one list per vote), and optionally A⁺A x (and the
    suspicion mask) beside them."""

    votes: list[list[bytes]]
    degraded_pngs: list[bytes] | None
    steps: int
    # The suspicion mask per image (white: repainted as suspect), where the purifier localises; None otherwise.
    mask_pngs: list[bytes] | None = None
    masked_fraction: list[float] | None = None  # per image: the share repainted as suspect (first vote)

    @property
    def pngs(self) -> list[bytes]:
        return self.votes[0]


@dataclass(frozen=True)
class Prediction:
    """The vendor's answer to a request: one prediction per image, and each vote's label when voting."""

    predictions: list[Any]
    vote_labels: list[list[VendorLabel | None]] | None  # per image, each vote's label; None without votes
    chosen_votes: list[int]  # per image, the vote whose answer it got (0 without votes)


def decode_batch(
    blobs: list[bytes], opened: list[Image.Image], engine: EngineInfo | None, small_fit: SmallImageFit
) -> DecodedBatch:
    images = [load_image(image, f"image {i}") for i, image in enumerate(opened)]
    if engine is None:
        return DecodedBatch(blobs, images, None)
    tensors = []
    for i, image in enumerate(images):
        try:
            tensors.append(pil_to_tensor(image, engine.channels))
        except (ValueError, OSError) as exc:  # exotic pixel modes PIL cannot convert
            raise BadRequest(f"image {i}: pixel mode {image.mode} cannot be converted: {exc}") from exc
    return DecodedBatch(blobs, images, fit_to_model(tensors, engine.sample_size, small_fit=small_fit))


def finish_batch(
    fitted: FittedBatch, votes: Sequence[torch.Tensor], degrade: str | None, mirror: bool = False
) -> tuple[list[list[bytes]], list[bytes] | None]:
    """The pipeline's restore of each vote's canvases (and degraded view, for the `degrade` spec), as PNG."""
    pngs = [[encode_png(tensor_to_pil(x)) for x in restore_images(fitted, purified, mirror)] for purified in votes]
    if degrade is None:
        return pngs, None
    return pngs, [encode_png(tensor_to_pil(x)) for x in degraded_images(fitted, degrade)]


def finish_masks(fitted: FittedBatch, keep: torch.Tensor) -> tuple[list[bytes], list[float]]:
    """The first vote's keep-masks at the original sizes: PNGs (white = repainted) and repainted shares."""
    masks = [1.0 - mask.clamp(0.0, 1.0) for mask in fitted.restore(keep)]
    return [encode_png(tensor_to_pil(mask * 2.0 - 1.0)) for mask in masks], [float(mask.mean()) for mask in masks]


def originals_for_vendor(decoded: DecodedBatch) -> tuple[list[bytes], str]:
    """The client's bytes when all share one format (their media type says it); else PNG re-encodes."""
    formats = {image.format for image in decoded.images}
    if len(formats) == 1 and (fmt := formats.pop()) and fmt in Image.MIME:
        return decoded.originals, Image.MIME[fmt]
    return [encode_png(image) for image in decoded.images], PNG
