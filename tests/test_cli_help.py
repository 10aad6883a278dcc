"""`zipgate serve --help` at 80 columns: every flag shows its effective default and its whole env variable."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from service.cli import app

# flag → (env variable, the default the gateway runs with when neither flag, env nor file sets it)
EXPECTED = {
    "--host": ("ZIPGATE_HOST", "127.0.0.1"),
    "--port": ("ZIPGATE_PORT", "8080"),
    "--log-level": ("ZIPGATE_LOG_LEVEL", "info"),
    "--upstream-url": ("ZIPGATE_UPSTREAM_URL", "http://127.0.0.1:9000"),
    "--upstream-protocol": ("ZIPGATE_UPSTREAM_PROTOCOL", "raw"),
    "--upstream-model": ("ZIPGATE_UPSTREAM_MODEL", "fmnist"),
    "--devices": ("ZIPGATE_DEVICES", "auto"),
    "--transforms": ("ZIPGATE_TRANSFORMS", "jblur:4"),
    "--steps": ("ZIPGATE_STEPS", "10"),
    "--purification": ("ZIPGATE_PURIFICATION_ENABLED", "--purification"),
}


@pytest.fixture(scope="module")
def help_text() -> str:
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def _entry(help_text: str, flag: str) -> str:
    """The flag's help entry, its wrapped lines joined."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " "))
    entry = [lines[start]]
    for line in lines[start + 1 :]:
        if line.startswith("  --"):  # the next flag (a wrapped line is indented deeper)
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_serve_help_fits_80_columns(help_text: str) -> None:
    assert max(len(line) for line in help_text.splitlines()) <= 80


@pytest.mark.parametrize("flag", sorted(EXPECTED))
def test_serve_help_names_the_whole_env_variable_and_the_effective_default(help_text: str, flag: str) -> None:
    variable, default = EXPECTED[flag]
    entry = _entry(help_text, flag)
    assert f"[env {variable};" in entry  # whole, not cut at the column's edge
    assert f"default: {default}]" in entry


def test_serve_help_model_path_default(help_text: str) -> None:
    # click wraps after a hyphen; the default is still all there.
    assert "default: models/fmnist-ddpm]" in _entry(help_text, "--model-path").replace("- ", "-")
