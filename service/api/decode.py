"""Image bytes → PIL image with the byte and pixel limits checked before the full decode; PIL → PNG.

Why the order matters: a 100 kB PNG may declare 100 000 × 100 000 pixels; decoding it would
allocate 10 GB. `Image.open` reads only the header, so the declared size is checked first
and `.load()` runs only for images within `max_image_pixels`. `open_image` is cheap (header
only); `load_image` is CPU-bound for large images, which callers run in a thread.

The same holds per request: many images each within the limit still add up (32 flat 4096²
PNGs are 1.6 MB on the wire and 6.7 GB once decoded), so `open_images` sums the declared sizes
of all a request's images against `max_request_pixels` before any is decoded: after each image's
own limits, so one image too large for any request is named as such (max_image_pixels).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# Formats PIL may even try: a short list keeps exotic, rarely fuzzed decoders out of reach.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


# Magic numbers of ACCEPTED_FORMATS, to tell a damaged image (400) from a foreign file (415).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _has_accepted_signature(data: bytes) -> str | None:
    """The accepted format whose magic number `data` starts with, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits, checked before decoding.

    Attributes:
        max_image_bytes: encoded size of one image.
        max_image_pixels: declared width × height of one image.
    """

    max_image_bytes: int
    max_image_pixels: int

    def __post_init__(self) -> None:
        if self.max_image_bytes < 1 or self.max_image_pixels < 1:
            raise ValueError("max_image_bytes and max_image_pixels must be >= 1")


def open_image(data: bytes, limits: ImageLimits, what: str = "image") -> Image.Image:
    """Parse an image's header and check the limits; the pixels are not decoded yet (cheap).

    Args:
        data: the encoded bytes.
        limits: byte and pixel limits.
        what: names the image in error messages.

    Returns:
        The opened, not yet loaded image; `.size` is its declared size, within the limits.

    Raises:
        BadRequest: empty, or a damaged image of an accepted format (400).
        PayloadTooLarge: over the byte or pixel limit (413), checked before the pixel data is read.
        UnsupportedMediaType: not an image in one of ACCEPTED_FORMATS (415).
    """
    if not data:
        raise BadRequest(f"{what} is empty (0 bytes); send an encoded image such as a PNG")
    if len(data) > limits.max_image_bytes:
        raise PayloadTooLarge(
            f"{what} is {len(data)} bytes; the limit is {limits.max_image_bytes} bytes (max_image_bytes)"
        )
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)  # parses the header only
    except Image.DecompressionBombError as exc:
        # PIL's own guard (2 × Image.MAX_IMAGE_PIXELS) fires inside open for absurd sizes.
        raise PayloadTooLarge(
            f"{what} declares too many pixels ({exc}); the limit is {limits.max_image_pixels} pixels (max_image_pixels)"
        ) from exc
    except UnidentifiedImageError as exc:
        if claimed := _has_accepted_signature(data):  # e.g. a PNG cut inside its header: damaged, not foreign
            raise BadRequest(f"{what} starts like a {claimed} but is truncated or corrupt") from exc
        raise UnsupportedMediaType(
            f"{what} is not an image in a supported format; send one of {', '.join(ACCEPTED_FORMATS)}"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"{what} has an unreadable header: {exc}") from exc
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise PayloadTooLarge(
            f"{what} is {width}×{height} = {width * height} pixels; the limit is "
            f"{limits.max_image_pixels} pixels (max_image_pixels)"
        )
    if width < 1 or height < 1:
        raise BadRequest(f"{what} has no pixels ({width}×{height})")
    return image


def open_images(blobs: Sequence[bytes], limits: ImageLimits, max_request_pixels: int) -> list[Image.Image]:
    """Parse every image's header (`open_image`, each image's own limits first), then check their
    declared pixels in all against the request's budget; nothing is decoded yet.

    Args:
        blobs: the request's encoded images; image i is named "image i" in messages.
        limits: the per-image byte and pixel limits.
        max_request_pixels: the per-request budget of width × height, summed over the images.

    Returns:
        The opened, not yet loaded images, in order (for `load_image`).

    Raises:
        BadRequest, UnsupportedMediaType: an image is empty, damaged or not an image (see `open_image`).
        PayloadTooLarge: an image over its own limits, or all of them over the budget (413).
    """
    opened = [open_image(blob, limits, f"image {i}") for i, blob in enumerate(blobs)]
    total = sum(image.width * image.height for image in opened)
    if total > max_request_pixels:
        raise PayloadTooLarge(
            f"the request's {len(opened)} images declare {total} pixels in all; the limit is "
            f"{max_request_pixels} pixels per request (max_request_pixels): send fewer or "
            "smaller images"
        )
    return opened


def load_image(image: Image.Image, what: str = "image") -> Image.Image:
    """Decode the pixels of an image from `open_image` (bounded by its checked size).

    Raises:
        BadRequest: truncated or corrupt pixel data (400).
        PayloadTooLarge: PIL's decompression-bomb guard fired (413).
    """
    # No close(): the source is an in-memory BytesIO, and closing would discard the loaded pixels.
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{what}: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadRequest(f"{what} cannot be decoded (truncated or corrupt): {exc}") from exc
    return image


def encode_png(image: Image.Image) -> bytes:
    """The image as PNG bytes (lossless, so the vendor sees exactly the purified pixels)."""
    buffer = io.BytesIO()
    # Level 1: several times faster than the default 6 and still lossless; size matters little on loopback.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
