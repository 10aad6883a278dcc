"""`zipgate purify` end to end on tiny random models (and the paper preset's tiling path)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from service.cli import app
from tests.tiny_models import tiny_unet

runner = CliRunner()


def _text(output: str) -> str:
    """The CLI's message without rich's box drawing and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def _write_images(folder, count, size, mode):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        shape = (size, size, 3) if mode == "RGB" else (size, size)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"img{i}.png")
    return folder


def test_purify_writes_pngs_and_degraded(tmp_path):
    tiny_unet(channels=1, size=16).save_pretrained(tmp_path / "model")
    images = _write_images(tmp_path / "in", 3, 20, "L")
    result = runner.invoke(
        app,
        [
            "purify",
            str(images),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tmp_path / "model"),
            "--transforms",
            "blur:4",
            "--steps",
            "3",
            "--save-degraded",
            "--batch-size",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    for i in range(3):
        purified = Image.open(tmp_path / "out" / f"img{i}.png")
        assert purified.size == (20, 20) and purified.mode == "L"
        assert (tmp_path / "out" / f"img{i}.degraded.png").exists()


def _purify_cli(tmp_path: Path, images: Path, out: str, batch_size: str, method: str) -> list[np.ndarray]:
    result = runner.invoke(
        app,
        [
            "purify", str(images), "-o", str(tmp_path / out), "--model", str(tmp_path / "model"),
            "--steps", "3", "--seed", "7", "--batch-size", batch_size, "--method", method,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not list((tmp_path / out).glob("*.degraded.png"))  # not asked for: not written (nor computed)
    return [np.asarray(Image.open(tmp_path / out / f"img{i}.png"), dtype=np.int16) for i in range(3)]


def test_seeded_global_purify_is_independent_of_batch_size(tmp_path):
    tiny_unet(channels=1, size=16).save_pretrained(tmp_path / "model")
    images = _write_images(tmp_path / "in", 3, 16, "L")
    one, three = (_purify_cli(tmp_path, images, f"out{bs}", bs, "global") for bs in ("1", "3"))
    for a, b in zip(one, three, strict=True):
        assert np.abs(a - b).max() <= 1  # batched conv kernels may round one 8-bit level differently


def test_seeded_local_purify_repeats_exactly(tmp_path):
    # METHOD=local picks whole blocks by rank: a last-bit difference between batch shapes may swap two
    # near-equal blocks of a random model's map (a discrete change), so the same run is what must repeat.
    tiny_unet(channels=1, size=16).save_pretrained(tmp_path / "model")
    images = _write_images(tmp_path / "in", 3, 16, "L")
    first, second = (_purify_cli(tmp_path, images, out, "3", "local") for out in ("a", "b"))
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)


def test_paper_preset_tiles_small_images_into_the_canvas(tmp_path):
    tiny_unet(channels=3, size=32).save_pretrained(tmp_path / "model")
    images = _write_images(tmp_path / "in", 5, 16, "RGB")  # 2x2 tiles per 32² canvas → 2 canvases
    result = runner.invoke(
        app,
        [
            "purify",
            str(images),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tmp_path / "model"),
            "--preset",
            "paper",
            "--steps",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert all(Image.open(tmp_path / "out" / f"img{i}.png").size == (16, 16) for i in range(5))


def test_bad_model_path_and_bad_spec_fail_cleanly(tmp_path):
    images = _write_images(tmp_path / "in", 1, 16, "L")
    result = runner.invoke(app, ["purify", str(images), "--model", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in _text(result.output)
    tiny_unet(channels=1, size=16).save_pretrained(tmp_path / "model")
    result = runner.invoke(
        app, ["purify", str(images), "--model", str(tmp_path / "model"), "--transforms", "sharpen:2"]
    )
    assert result.exit_code == 2 and "unknown transform" in _text(result.output)


def test_cli_and_gateway_purify_alike_by_default(tmp_path, monkeypatch):
    """One dtype default and one rule: the same seed gives `zipgate purify` and the gateway's /purify one output."""
    import httpx

    # As on a CPU with native bf16, where `auto` differs from fp32 (elsewhere both would be fp32 alike).
    monkeypatch.setattr("service.purify.models.cpu_has_native_bf16", lambda: True)

    from service.config import Settings
    from tests.gateway_servers import gateway_settings, running_gateway

    tiny_unet(channels=1, size=16).save_pretrained(tmp_path / "model")
    images = _write_images(tmp_path / "in", 1, 16, "L")
    args = ["purify", str(images), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "model")]
    result = runner.invoke(app, [*args, "--steps", "3", "--transforms", "blur:4", "--seed", "7"])
    assert result.exit_code == 0, result.output
    cli = np.asarray(Image.open(tmp_path / "out" / "img0.png"), dtype=np.int16)
    unset = Settings.model_fields["dtype"].default  # the gateway's dtype when nothing sets it
    method = Settings.model_fields["method"].default  # and its engine (the test helper pins global)
    settings = gateway_settings(
        tmp_path / "model", "http://127.0.0.1:9", dtype=unset, method=method, steps=3, transforms="blur:4"
    )
    with running_gateway(settings) as url:
        png = (images / "img0.png").read_bytes()
        answer = httpx.post(f"{url}/purify", params={"seed": 7}, files={"image": ("img0.png", png, "image/png")})
    assert answer.status_code == 200, answer.text
    served = np.asarray(Image.open(io.BytesIO(answer.content)), dtype=np.int16)
    assert np.array_equal(cli, served), np.abs(cli - served).max()
