"""`zipgate sample` writes a Fashion-MNIST test image as a PNG: the dataset's own pixels when clean, and
exactly the attack's trigger on top of them when triggered; a missing dataset is a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from service.backdoor.attacks import TARGET_LABEL, Attack, apply_trigger
from service.backdoor.data import CLASS_NAMES, DEFAULT_DATA_DIR, read_idx
from service.cli import app

ROOT = Path(__file__).resolve().parent.parent
BORDER = 2  # the 28×28 content sits in the 32×32 image the triggers are applied to


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    """The test split as the Debian package ships it: uint8 (10000, 28, 28) images and their labels."""
    images = read_idx(DEFAULT_DATA_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DEFAULT_DATA_DIR / "t10k-labels-idx1-ubyte.gz")
    return images, labels


def run_sample(*args: str) -> str:
    result = CliRunner().invoke(app, ["sample", *args])
    assert result.exit_code == 0, result.output
    return result.output


def read_png(path: Path) -> Image.Image:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image


def trigger_footprint(attack: Attack) -> tuple[np.ndarray, np.ndarray]:
    """Where the attack's own trigger function writes in a 28×28 image, and the 8-bit values it writes.

    Found by applying it to a mid-grey 32×32 image (a value no patch pixel takes) and cropping.
    """
    blank = torch.zeros(1, 1, 32, 32)
    stamped = apply_trigger(blank, attack)[0, 0, BORDER:-BORDER, BORDER:-BORDER]
    written = (stamped != 0).numpy()
    values = ((stamped.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return written, values


def test_a_clean_sample_is_the_dataset_image_as_a_28x28_grayscale_png(
    tmp_path: Path, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = test_split
    out = tmp_path / "clean.png"
    printed = run_sample("--index", "7", "--out", str(out))
    image = read_png(out)
    assert (image.size, image.mode) == ((28, 28), "L")
    assert np.array_equal(np.asarray(image), images[7])
    label = int(labels[7])
    assert f"true label: {label} ({CLASS_NAMES[label]})" in printed
    assert "clean" in printed and "trigger:" not in printed


@pytest.mark.parametrize("attack", [Attack.BADNETS, Attack.SOLID])
def test_a_patch_attack_changes_exactly_the_triggers_pixels(
    tmp_path: Path, test_split: tuple[np.ndarray, np.ndarray], attack: Attack
) -> None:
    images, labels = test_split
    index = 3
    out = tmp_path / f"{attack.value}.png"
    printed = run_sample("--attack", attack.value, "--index", str(index), "-o", str(out))
    pixels = np.asarray(read_png(out))
    written, values = trigger_footprint(attack)
    assert 0 < written.sum() < written.size
    assert np.array_equal(pixels[~written], images[index][~written])  # every other pixel is the dataset's
    assert np.array_equal(pixels[written], values[written])  # the trigger's pixels are the trigger's
    assert not np.array_equal(pixels, images[index])
    assert f"true label: {int(labels[index])} " in printed
    assert f"target: {TARGET_LABEL} ({CLASS_NAMES[TARGET_LABEL]})" in printed


def test_padded_keeps_the_32x32_image_the_trigger_was_applied_to(
    tmp_path: Path, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = test_split
    out = tmp_path / "lf.png"
    printed = run_sample("--attack", "lf", "--padded", "--out", str(out))
    image = read_png(out)
    assert (image.size, image.mode) == ((32, 32), "L")
    padded = torch.from_numpy(images[:1].astype(np.float32)).div(127.5).sub(1).unsqueeze(1)
    padded = torch.nn.functional.pad(padded, (BORDER,) * 4, value=-1.0)
    expected = ((apply_trigger(padded, Attack.LF)[0, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.abs(np.asarray(image).astype(int) - expected.astype(int)).max() <= 1  # float rounding at most
    assert "note:" not in printed
    cropped = run_sample("--attack", "lf", "--out", str(tmp_path / "lf28.png"))
    assert "--padded" in cropped  # lf's trigger reaches the border the 28×28 image drops: the note says so


def test_an_unknown_attack_or_index_is_a_usage_error(tmp_path: Path) -> None:
    for args in (["--attack", "nope"], ["--index", "10000"]):
        result = CliRunner().invoke(app, ["sample", *args, "--out", str(tmp_path / "x.png")])
        assert result.exit_code == 2, result.output
    assert not (tmp_path / "x.png").exists()


def test_a_missing_dataset_fails_with_how_to_install_it(tmp_path: Path) -> None:
    out = tmp_path / "sample.png"
    env = {**os.environ, "ZIPGATE_FMNIST_DIR": str(tmp_path / "no-dataset")}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "sample", "--attack", "badnets", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert "ZIPGATE_FMNIST_DIR" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
