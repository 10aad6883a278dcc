"""A vendor classifier on disk (config.json + model.safetensors): its format, loading, and its predictions."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from service.backdoor.classifier import ClassifierArchitecture, VendorClassifier
from service.paths import resolve_model_path

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CONFIG_FORMAT = "zipgate-vendor-classifier/1"


@torch.no_grad()
def predict_labels(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Argmax labels (N,) of `model` (switched to eval mode), computed in batches."""
    model.eval()
    return torch.cat([model(chunk).argmax(dim=1) for chunk in images.split(batch_size)])


def read_vendor_config(model_dir: Path) -> dict:
    """The parsed config.json of a vendor model folder (a relative one also under the zipgate home, `paths.py`).

    Raises:
        FileNotFoundError: the folder or its config.json is missing (says how to make one).
        ValueError: config.json is not a vendor classifier config.
    """
    path = resolve_model_path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train a model with `zipgate train vendor --attack ... --seed N`")
    config = json.loads(path.read_text())
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"{path} has format {config.get('format')!r}, expected {CONFIG_FORMAT!r}")
    return config


def load_vendor(model_dir: Path) -> VendorClassifier:
    """Load a vendor classifier in eval mode with float32 weights (whatever dtype they were saved in).

    Returns:
        The model: (N, 1, 32, 32) in [-1, 1] → logits (N, 10).

    Raises:
        FileNotFoundError: config.json or model.safetensors is missing.
        ValueError: config.json is not a vendor classifier config.
        RuntimeError: the weights do not match the architecture in config.json.
    """
    config = read_vendor_config(model_dir)
    weights_path = resolve_model_path(model_dir) / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found")
    model = VendorClassifier(ClassifierArchitecture.from_dict(config["architecture"]))
    state = load_file(str(weights_path))
    model.load_state_dict({name: t.float() if t.is_floating_point() else t for name, t in state.items()})
    return model.eval()
