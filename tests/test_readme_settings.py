"""The README's Configuration table and `Settings` agree: every setting has a row, every row names a
setting, and each plain default (a number, a word, a size) is the one the table shows.

The table writes names without the `ZIPGATE_` prefix, several to a row where they belong together
(`` `VOTES` / `MAX_VOTES` `` with defaults `1 / 5`), and abbreviates a name that shares its start
with the one before it (`` `SHADOW_CAPTURE_MAX_FILES` / `…_MAX_BYTES` ``). Defaults are written as
people read them: `none`, `empty`, `true`, `16 MiB`, `4096²`. A default derived from something else
(the CPU count, another setting) is prose there; those few are named in DERIVED and only their rows
are checked.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import PydanticUndefined

from service.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_HEADER = "| setting (env `ZIPGATE_…`) | default | meaning |"
ELLIPSIS = "…"
UNSET = object()  # a default of None or an empty list: the table says "none" or "empty"

# Defaults computed when the settings load, which the table describes in words.
DERIVED = {
    "TORCH_THREADS": "`OMP_NUM_THREADS` if set, else cores",  # default_torch_threads()
    "MAX_REQUEST_PIXELS": "max(`MAX_IMAGE_PIXELS`, 4096²)",  # follows a raised max_image_pixels
    "PUBLIC_DOCS": "false with `API_KEY`, else true",  # None: as open as the API
}


def expand_names(cell: str) -> list[str]:
    """The setting names of a row's first cell; `…_X_Y` takes the previous name with its last two
    `_`-parts replaced by X and Y."""
    names: list[str] = []
    for written in re.findall(r"`([^`]+)`", cell):
        if written.startswith(ELLIPSIS):
            suffix = written[len(ELLIPSIS) :]
            assert names and suffix.startswith("_"), f"{written!r} abbreviates no name before it"
            kept = names[-1].split("_")[: -(suffix.count("_"))]
            written = "_".join(kept) + suffix
        names.append(written)
    return names


def readme_settings() -> dict[str, str]:
    """Setting name (without the prefix) → the default the README's Configuration table shows."""
    lines = README.read_text().splitlines()
    start = lines.index(TABLE_HEADER)
    rows: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        name_cell, default_cell = (cell.strip() for cell in line.strip("|").split("|")[:2])
        names = expand_names(name_cell)
        defaults = default_cell.split(" / ") if len(names) > 1 else [default_cell]
        assert len(defaults) == len(names), f"README row {names}: {len(defaults)} defaults for {len(names)} names"
        for name, default in zip(names, defaults, strict=True):
            assert name not in rows, f"{name} has two rows in the README"
            rows[name] = default
    return rows


def documented_value(text: str) -> Any:
    """A default as the README writes it, as a value: none/empty, a bool, a size, a number or a word."""
    if text == "none" or text.startswith("empty"):
        return UNSET
    if text in ("true", "false"):
        return text == "true"
    if size := re.fullmatch(r"(\d+) MiB", text):
        return int(size.group(1)) * 1024 * 1024
    if square := re.fullmatch(r"(\d+)²", text):
        return int(square.group(1)) ** 2
    try:
        return float(text)
    except ValueError:
        return text


def declared_value(default: Any) -> Any:
    """A field's declared default in the same terms as `documented_value`."""
    if default is None or default == ():
        return UNSET
    if isinstance(default, bool):
        return default
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, int | float):
        return float(default)
    return str(default)


def env_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def test_the_table_is_read_with_its_grouped_and_abbreviated_rows() -> None:
    rows = readme_settings()
    assert (rows["HOST"], rows["PORT"]) == ("127.0.0.1", "8080")
    assert (rows["SHADOW_CAPTURE_MAX_FILES"], rows["SHADOW_CAPTURE_MAX_BYTES"]) == ("5000", "256 MiB")
    assert expand_names("`A_B_C` / `…_D`") == ["A_B_C", "A_B_D"]


def test_every_setting_has_a_readme_row() -> None:
    missing = sorted(env_names() - set(readme_settings()))
    assert not missing, f"settings missing from README.md's Configuration table: {missing}"


def test_every_readme_row_is_a_setting() -> None:
    unknown = sorted(set(readme_settings()) - env_names())
    assert not unknown, f"README.md's Configuration table names no such settings: {unknown}"


@pytest.mark.parametrize("name", sorted(env_names() - set(DERIVED)))
def test_the_readme_shows_each_plain_default(name: str) -> None:
    field = Settings.model_fields[name.lower()]
    assert field.default is not PydanticUndefined, f"{name}'s default is computed: describe it in DERIVED"
    shown = readme_settings().get(name)
    if shown is None:
        pytest.skip(f"{name} has no README row (test_every_setting_has_a_readme_row fails for it)")
    assert documented_value(shown) == declared_value(field.default), f"README shows {name}'s default as {shown!r}"


@pytest.mark.parametrize(("name", "words"), sorted(DERIVED.items()))
def test_the_readme_describes_each_derived_default(name: str, words: str) -> None:
    field = Settings.model_fields[name.lower()]
    assert field.default_factory is not None or field.default is None, f"{name}'s default is plain now"
    assert words in readme_settings()[name]
