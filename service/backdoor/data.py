"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, read from its idx files."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA_DIR = Path(os.environ.get("ZIPGATE_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NATIVE_SIZE = 28
PADDED_SIZE = 32
_IDX_DTYPE = {0x08: np.uint8}


@dataclass(frozen=True)
class Split:
    """One split: images (N, 1, 32, 32) float in [-1, 1], labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, count: int) -> Split:
        """The first `count` items (the test split's order is fixed, so this is deterministic)."""
        return Split(self.images[:count], self.labels[:count])


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) idx file into an array of its declared shape.

    Raises:
        ValueError: the magic number or data type is not an idx uint8 file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPE:
        raise ValueError(f"{path} is not an idx uint8 file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=_IDX_DTYPE[dtype_code], offset=4 + 4 * ndim).reshape(shape)


def to_model_range(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) → float (N, 1, 32, 32) in [-1, 1], padded with the black background."""
    x = torch.from_numpy(images_uint8.copy()).float().div(127.5).sub(1.0).unsqueeze(1)
    pad = (PADDED_SIZE - x.shape[-1]) // 2
    return F.pad(x, (pad, pad, pad, pad), value=-1.0)


def load_split(train: bool, data_dir: Path = DEFAULT_DATA_DIR) -> Split:
    """Load the train (60k) or test (10k) split.

    Raises:
        FileNotFoundError: the Debian package is not installed (says how to install it).
    """
    prefix = "train" if train else "t10k"
    images_path = data_dir / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = data_dir / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images_path, labels_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: install Fashion-MNIST with "
                "`apt-get install dataset-fashion-mnist` or set ZIPGATE_FMNIST_DIR"
            )
    images = to_model_range(read_idx(images_path))
    labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
    return Split(images, labels)
