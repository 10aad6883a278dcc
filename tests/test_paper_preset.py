"""The `paper` preset is the ZIP paper's setting as docs/adm.md states it, whatever ZipConfig's defaults become."""

from __future__ import annotations

import re
from pathlib import Path

from service.purify.options import Method
from service.purify.presets import PRESETS, PresetName

ADM_DOC = Path(__file__).resolve().parents[1] / "docs" / "adm.md"


def paper_paragraph() -> str:
    """docs/adm.md's paragraph that describes the engine's `paper` preset, on one line."""
    text = ADM_DOC.read_text()
    start = text.index("`paper` preset")
    return " ".join(text[start : text.index("\n\n", start)].split())


def test_the_docs_state_the_papers_published_settings() -> None:
    paragraph = paper_paragraph()
    assert re.search(r"\b256² canvas\b", paragraph), paragraph
    assert "transforms `blur:4,gray` (two transforms, estimates averaged)" in paragraph, paragraph
    assert re.search(r"\b20 steps\b", paragraph), paragraph
    assert "tiled into the 256² canvas" in paragraph, paragraph


def test_the_paper_preset_is_what_the_docs_state() -> None:
    paragraph = paper_paragraph()
    canvas = re.search(r"(\d+)² canvas", paragraph)
    transforms = re.search(r"transforms `([^`]+)`", paragraph)
    steps = re.search(r"(\d+) steps", paragraph)
    assert canvas and transforms and steps, paragraph
    preset = PRESETS[PresetName.PAPER]
    assert preset.model_size == int(canvas.group(1)) == 256
    assert preset.zip.transforms == transforms.group(1) == "blur:4,gray"
    assert preset.zip.steps == int(steps.group(1)) == 20
    assert preset.tile_small_images  # "small images ... are tiled into the 256² canvas"
    assert preset.zip.method is Method.GLOBAL  # the paper's method: no localiser
