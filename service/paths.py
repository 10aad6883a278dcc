"""Where the shipped models are, wherever a command runs from: $ZIPGATE_HOME, else the project's folder."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ZIPGATE_HOME"
# The folder holding service/: a checkout, or the project an editable install points at.
PROJECT_DIR = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = "models"


def zipgate_home() -> Path:
    """The folder whose `models/` holds the shipped models.

    $ZIPGATE_HOME when set; else the project's folder when it has `models/` (a checkout or an editable
    install); else the working directory (a plain install, such as the image's, whose WORKDIR holds them).
    """
    home = os.environ.get(HOME_ENV, "").strip()
    if home:
        return Path(home).expanduser()
    return PROJECT_DIR if (PROJECT_DIR / SHIPPED_MODELS).is_dir() else Path.cwd()


def models_dir() -> Path:
    """The shipped models' folder (`<home>/models`)."""
    return zipgate_home() / SHIPPED_MODELS


def resolve_model_path(path: Path | str) -> Path:
    """`path` as given when it exists (or is absolute); else, when relative, under the home if it exists there.

    So `models/fmnist-ddpm` (every default) names the shipped model from any working directory, while a
    path that exists where the command runs keeps its meaning.
    """
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    under_home = zipgate_home() / path
    return under_home if under_home.exists() else path


def missing_model_hint(path: Path) -> str:
    """What to do about a model folder that is not there, naming where a relative path was looked for."""
    places = dict.fromkeys([Path.cwd(), zipgate_home()])  # one entry when the home is the working directory
    where = f" (looked in {' and in '.join(map(str, places))})" if not path.is_absolute() else ""
    problem = "is not a directory" if path.exists() else "does not exist"
    return (
        f"'{path}' {problem}{where}; pass the full path of a diffusers UNet2DModel directory "
        f"(config.json + diffusion_pytorch_model.safetensors), or set {HOME_ENV} to the folder holding "
        f"the shipped {SHIPPED_MODELS}/"
    )
