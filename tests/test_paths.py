"""The shipped models are found from any working directory: relative to the project, or under $ZIPGATE_HOME."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from service.backdoor.vendor_model import read_vendor_config
from service.cli import app
from service.cli_models import DEFAULT_MODEL
from service.config import load_settings
from service.paths import HOME_ENV, PROJECT_DIR, resolve_model_path
from service.purify.models import load_unet
from tests.tiny_models import tiny_unet


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory outside the project, with no ZIPGATE_* settings."""
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.delenv("ZIPGATE_MODEL_PATH", raising=False)
    monkeypatch.delenv("ZIPGATE_CONFIG_FILE", raising=False)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _one_image(folder: Path) -> Path:
    path = folder / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), "L").save(path)
    return path


def test_the_default_models_resolve_to_the_project_from_another_directory(elsewhere: Path) -> None:
    assert not DEFAULT_MODEL.exists()  # the test proves nothing if the relative path works here
    assert load_settings().model_path == PROJECT_DIR / DEFAULT_MODEL  # what `zipgate serve` loads
    assert load_unet(DEFAULT_MODEL).config.sample_size == 32
    assert read_vendor_config(Path("models/vendor-badnets"))["attack"] == "badnets"


def test_zipgate_home_names_the_folder_holding_models(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = elsewhere.parent / "home"
    tiny_unet(channels=1, size=16).save_pretrained(home / DEFAULT_MODEL)
    monkeypatch.setenv(HOME_ENV, str(home))
    assert resolve_model_path(DEFAULT_MODEL) == home / DEFAULT_MODEL
    assert load_unet(DEFAULT_MODEL).config.sample_size == 16  # the home's model, not the project's
    local = elsewhere / DEFAULT_MODEL
    tiny_unet(channels=1, size=8).save_pretrained(local)
    assert resolve_model_path(DEFAULT_MODEL) == DEFAULT_MODEL  # a path that exists here keeps its meaning


def test_zipgate_purify_runs_from_another_directory(elsewhere: Path) -> None:
    result = CliRunner().invoke(app, ["purify", str(_one_image(elsewhere)), "--steps", "1", "-o", "out"])
    assert result.exit_code == 0, result.output
    assert Image.open(elsewhere / "out" / "in.png").size == (28, 28)


def test_a_missing_model_names_where_it_looked_and_not_the_failing_path_as_the_fix(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_home = elsewhere.parent / "empty"
    empty_home.mkdir()
    monkeypatch.setenv(HOME_ENV, str(empty_home))
    result = CliRunner().invoke(app, ["purify", str(_one_image(elsewhere)), "--steps", "1"])
    message = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2, result.output
    assert "'models/fmnist-ddpm' does not exist" in message
    assert str(elsewhere) in message and str(empty_home) in message  # where it looked
    assert HOME_ENV in message and "e.g. models/fmnist-ddpm" not in message
