"""The served model, KServe-style: load once, then preprocess → predict → postprocess per request."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from service.backdoor.vendor_model import load_vendor, read_vendor_config
from service.demo.decoding import InputLimits, decode_image
from service.errors import PayloadTooLarge


@dataclass(frozen=True)
class ImagePrediction:
    """One image's result: the argmax label, its class name and the softmax over all classes."""

    label: int
    class_name: str
    probabilities: tuple[float, ...]


@dataclass(frozen=True)
class EncodedImage:
    """An image as received, with the name error messages use for it (e.g. "instances[3].b64")."""

    what: str
    data: bytes


class VendorPredictor:
    """A vendor classifier behind a bytes-in, predictions-out interface; wire formats live elsewhere.

    Thread-safe: `predict` only reads the model (eval mode, no gradients), so the server may call
    it from several worker threads at once.
    """

    def __init__(self, model_dir: Path, name: str, limits: InputLimits) -> None:
        """Load the model from `model_dir` (see `load_vendor` for the errors it raises)."""
        config = read_vendor_config(model_dir)
        self.name = name
        self.limits = limits
        self.class_names: tuple[str, ...] = tuple(config["class_names"])
        self.attack: str = config["attack"]
        self._model = load_vendor(model_dir)

    def preprocess(self, images: list[EncodedImage]) -> torch.Tensor:
        """Decode and stack: (N, 1, 32, 32) in [-1, 1].

        Raises:
            PayloadTooLarge: more than `limits.max_batch` images, or one over a size limit.
            BadRequest, UnsupportedMediaType: see `decode_image`.
        """
        if len(images) > self.limits.max_batch:
            raise PayloadTooLarge(f"{len(images)} images in one request, the limit is {self.limits.max_batch}")
        return torch.cat([decode_image(image.data, self.limits, image.what) for image in images])

    @torch.no_grad()
    def predict_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, 10) for a prepared batch."""
        return torch.softmax(self._model(batch), dim=1)

    def postprocess(self, probabilities: torch.Tensor) -> list[ImagePrediction]:
        """Probabilities (N, 10) → one `ImagePrediction` per row."""
        labels = probabilities.argmax(dim=1).tolist()
        return [
            ImagePrediction(label, self.class_names[label], tuple(row))
            for label, row in zip(labels, probabilities.tolist(), strict=True)
        ]

    def predict(self, images: list[EncodedImage]) -> list[ImagePrediction]:
        """Encoded images → predictions, in order (blocking: run it off the event loop)."""
        return self.postprocess(self.predict_tensor(self.preprocess(images)))
