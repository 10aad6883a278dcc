"""The response fields the README documents for `POST /predict` and `POST /purify` are those a real
gateway answers with (a tiny model and a demo vendor, over loopback sockets): none missing, none extra."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_servers import (
    gateway_settings,
    png_bytes,
    post,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
)

README = Path(__file__).resolve().parents[1] / "README.md"
AS_ABOVE = "{…as above}"


def documented_shape(bullet_start: str, label: str) -> dict[str, Any]:
    """The field outline in the README bullet that starts with `bullet_start`, in the code span after
    `label`, e.g. `{"request_id", "latency_ms": {"decode", …}}`, as nested dicts (a leaf field is None,
    a list of values is [], a block given "as above" is AS_ABOVE)."""
    text = README.read_text()
    bullet = text[text.index(bullet_start) :]
    bullet = bullet[: bullet.index("\n- ")]  # up to the next bullet
    span = re.search(re.escape(label) + r"\s*`(\{.*?\})`", bullet, re.S)
    assert span is not None, f"no `{label} {{…}}` span in the README's {bullet_start!r} bullet"
    outline = " ".join(span.group(1).split())
    outline = re.sub(r"\[<[^>]*>\]", "[]", outline).replace(AS_ABOVE, json.dumps(AS_ABOVE))
    outline = re.sub(r'"(\w+)"(?=\s*[,}])', r'"\1": null', outline)
    return json.loads(outline)


def field_names(shape: dict[str, Any], above: dict[str, Any]) -> dict[str, Any]:
    """`shape` with AS_ABOVE replaced by `above`'s block of the same name."""
    return {name: above[name] if value == AS_ABOVE else value for name, value in shape.items()}


def same_fields(documented: dict[str, Any], answered: dict[str, Any], where: str = "response") -> None:
    assert sorted(documented) == sorted(answered), where
    for name, block in documented.items():
        if isinstance(block, dict):
            assert isinstance(answered[name], dict), f"{where}.{name}"
            same_fields(block, answered[name], f"{where}.{name}")


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("models")
    with (
        running_vendor(tiny_vendor_dir(root)) as vendor_url,
        running_gateway(gateway_settings(tiny_ddpm_dir(root), vendor_url)) as url,
    ):
        yield url


def test_the_readme_lists_the_fields_of_a_predict_response(gateway_url: str) -> None:
    documented = documented_shape("- `POST /predict`", "Response:")
    response = post(f"{gateway_url}/predict", files=[("image", png_bytes())], params={"seed": 1})
    assert response.status_code == 200, response.text
    same_fields(documented, response.json())


def test_the_readme_lists_the_fields_of_a_purify_response(gateway_url: str) -> None:
    above = documented_shape("- `POST /predict`", "Response:")
    documented = field_names(documented_shape("- `POST /purify`", "several:"), above)
    response = post(f"{gateway_url}/purify", files=[("image", png_bytes()), ("image", png_bytes(seed=1))])
    assert response.status_code == 200, response.text
    same_fields(documented, response.json())
