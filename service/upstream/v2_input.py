"""The vendor model's v2 image input: its name, and whether it takes encoded images or pixels."""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image


class TensorDatatype(enum.StrEnum):
    """How the v2 adapter sends the images (`upstream_input_datatype`)."""

    BYTES = "BYTES"  # encoded images (PNG), base64 text in JSON: shape [N]
    FP32 = "FP32"  # pixels scaled to [0, 1]: shape [N, *upstream_input_shape]
    UINT8 = "UINT8"  # pixels in [0, 255]: shape [N, *upstream_input_shape]


class PixelLayout(enum.StrEnum):
    """Where a pixel tensor keeps its channels (`upstream_input_layout`)."""

    CHW = "chw"  # channels first, as PyTorch models take them
    HWC = "hwc"  # channels last, as TensorFlow models take them


@dataclass(frozen=True)
class V2Input:
    """The vendor model's image input.

    Attributes:
        name: the input's name, e.g. "image" (with several BYTES inputs, the sidecar finds the image by it).
        datatype: BYTES for encoded images; FP32 or UINT8 for pixels.
        shape: one image's shape in `layout` order, e.g. (1, 28, 28) for CHW grayscale; required for
            pixels (each image is converted to its channels and resized to its height and width),
            empty for BYTES.
        layout: the order of `shape` for pixels.

    Raises:
        ValueError: an empty name, a pixel datatype without a (channels, height, width) shape with 1 or
            3 channels, or a shape for BYTES.
    """

    name: str = "image"
    datatype: TensorDatatype = TensorDatatype.BYTES
    shape: tuple[int, ...] = ()
    layout: PixelLayout = PixelLayout.CHW

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("the v2 upstream needs the name of the model's image input, e.g. 'image'")
        if self.datatype is TensorDatatype.BYTES:
            if self.shape:
                raise ValueError(
                    f"a BYTES input takes encoded images of shape [N]; drop the shape {list(self.shape)} "
                    "or choose FP32/UINT8 for a pixel input"
                )
            return
        example = "1,28,28" if self.layout is PixelLayout.CHW else "28,28,1"
        if len(self.shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in self.shape):
            raise ValueError(
                f"a {self.datatype.value} input needs one image's shape as 3 positive sizes in "
                f"{self.layout.value} order, e.g. {example}; got {list(self.shape)}"
            )
        if self.channels not in (1, 3):
            raise ValueError(
                f"the {self.layout.value} shape {list(self.shape)} has {self.channels} channels; "
                f"1 (gray) or 3 (RGB) are supported, e.g. {example}"
            )

    @property
    def channels(self) -> int:
        """The channel count of a pixel input."""
        return self.shape[0] if self.layout is PixelLayout.CHW else self.shape[-1]

    @property
    def height_width(self) -> tuple[int, int]:
        """The height and width of a pixel input."""
        return (self.shape[1], self.shape[2]) if self.layout is PixelLayout.CHW else (self.shape[0], self.shape[1])


def pixel_tensor(images: list[bytes], spec: V2Input) -> tuple[list[int], list[float] | list[int]]:
    """Decode images into one pixel tensor for `spec` (pure: no I/O).

    Each image is converted to the spec's channels (gray or RGB, alpha dropped) and resized
    (bilinear) to its height and width when it differs.

    Args:
        images: encoded images, each readable by PIL.
        spec: a FP32 or UINT8 input.

    Returns:
        The tensor's shape [N, *spec.shape] and its data flat in row-major order: floats in [0, 1]
        for FP32, integers in [0, 255] for UINT8.

    Raises:
        ValueError: `spec` is BYTES, or an image cannot be decoded.
    """
    if spec.datatype is TensorDatatype.BYTES:
        raise ValueError("pixel_tensor needs a FP32 or UINT8 input; BYTES inputs carry the encoded images")
    height, width = spec.height_width
    arrays = []
    for i, blob in enumerate(images):
        try:
            with Image.open(io.BytesIO(blob)) as opened:
                image = opened.convert("L" if spec.channels == 1 else "RGB")
        except OSError as exc:
            raise ValueError(f"image {i} cannot be decoded into pixels: {exc}") from exc
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8).reshape(height, width, spec.channels)
        arrays.append(pixels.transpose(2, 0, 1) if spec.layout is PixelLayout.CHW else pixels)
    batch = np.stack(arrays)
    if spec.datatype is TensorDatatype.FP32:
        return [len(images), *spec.shape], (batch.astype(np.float32) / 255.0).ravel().tolist()
    return [len(images), *spec.shape], batch.ravel().tolist()
