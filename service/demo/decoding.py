"""Request bytes → model input: base64, size limits, and image decoding like the data loader."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from service.backdoor.data import NATIVE_SIZE, PADDED_SIZE, to_model_range
from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from service.upstream.wire import decode_base64_image

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"})


@dataclass(frozen=True)
class InputLimits:
    """What one request may carry; checked before the expensive work.

    Attributes:
        max_image_bytes: encoded size of one image.
        max_image_pixels: width × height of one image, checked from the header before decoding.
        max_batch: images in one JSON request.
        max_body_bytes: size of one request body.
    """

    max_image_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_batch: int = 64
    max_body_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        if min(self.max_image_bytes, self.max_image_pixels, self.max_batch, self.max_body_bytes) < 1:
            raise ValueError("every input limit must be ≥ 1")


def decode_base64(value: Any, limits: InputLimits, what: str) -> bytes:
    """A base64 image from a JSON body → bytes, refusing oversized strings before decoding them.

    Args:
        value: the JSON value that should be a standard base64 string.
        limits: `max_image_bytes` bounds the decoded size.
        what: names the item in error messages, e.g. "instances[2].b64".

    Raises:
        PayloadTooLarge: the decoded image would exceed `max_image_bytes`.
        InvalidShape: the value is not a string.
        BadRequest: not valid base64, or empty.
    """
    if isinstance(value, str) and len(value) * 3 // 4 > limits.max_image_bytes + 2:
        raise PayloadTooLarge(f"{what}: image larger than {limits.max_image_bytes} bytes")
    return decode_base64_image(value, what)  # the gateway's own decoder: one set of rules and messages


def decode_image(data: bytes, limits: InputLimits, what: str = "image") -> torch.Tensor:
    """Encoded image → (1, 1, 32, 32) float tensor in [-1, 1], prepared like the training data.

    Any mode is converted to grayscale. A 32×32 image is used as is (it is already in the padded
    layout, as the gateway sends it); any other size is resized to 28×28 and padded with the
    black background to 32×32, exactly as `service.backdoor.data` prepares Fashion-MNIST.

    Raises:
        BadRequest: empty or undecodable.
        PayloadTooLarge: over `max_image_bytes` or `max_image_pixels` (checked before decoding).
        UnsupportedMediaType: a readable image in a format outside ACCEPTED_FORMATS.
    """
    if not data:
        raise BadRequest(f"{what}: empty image")
    if len(data) > limits.max_image_bytes:
        raise PayloadTooLarge(f"{what}: {len(data)} bytes, the limit is {limits.max_image_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise PayloadTooLarge(f"{what}: {width}×{height} pixels, the limit is {limits.max_image_pixels} pixels")
            if image.format not in ACCEPTED_FORMATS:
                raise UnsupportedMediaType(
                    f"{what}: format {image.format} not accepted; send one of {sorted(ACCEPTED_FORMATS)}"
                )
            image.load()
            gray = image.convert("L")
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{what}: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # PIL signals truncated or corrupt data with any of these
        raise BadRequest(f"{what}: cannot decode the image ({exc})") from exc
    if gray.size not in ((PADDED_SIZE, PADDED_SIZE), (NATIVE_SIZE, NATIVE_SIZE)):
        gray = gray.resize((NATIVE_SIZE, NATIVE_SIZE), Image.Resampling.BILINEAR)
    return to_model_range(np.asarray(gray, dtype=np.uint8)[None])
