"""JSON base64 images in the forms clients send: line-wrapped, after a `data:image/...;base64,` prefix,
URL-safe, unpadded; anything else is a 400 that names the cause, and the byte limit is on the decoded size.

Through the running app: the purifier returns its input, so the PNG that comes back shows exactly
what the gateway decoded from the text.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.gateway_servers import TINY_SIZE, FakePurifier, gateway_settings, running_gateway

PIXELS = np.random.default_rng(64).integers(0, 256, (TINY_SIZE, TINY_SIZE), dtype=np.uint8)


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_of(PIXELS)
MAX_IMAGE_BYTES = len(PNG)  # the test image is exactly at the limit
STANDARD = base64.b64encode(PNG).decode()
URL_SAFE = base64.urlsafe_b64encode(PNG).decode()


def wrapped(text: str, width: int, newline: str = "\n") -> str:
    return newline.join(text[i : i + width] for i in range(0, len(text), width)) + newline


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    settings = gateway_settings(None, "http://127.0.0.1:9", purification_enabled=True, max_image_bytes=MAX_IMAGE_BYTES)
    with running_gateway(settings, purifier_factory=lambda device: FakePurifier()) as url:
        yield url


def purify_json(url: str, *texts: str) -> httpx.Response:
    return httpx.post(f"{url}/purify", json={"images": list(texts)}, timeout=60)


def test_the_sample_exercises_every_alphabet_difference() -> None:
    assert {"+", "/"} & set(STANDARD) and {"-", "_"} & set(URL_SAFE)  # URL-safe text differs from standard
    assert STANDARD.endswith("=")  # padded, so that dropping the padding is a different text


FORMS: dict[str, Callable[[], str]] = {
    "standard": lambda: STANDARD,
    "encodebytes (76 columns, \\n)": lambda: base64.encodebytes(PNG).decode(),
    "wrapped with CRLF": lambda: wrapped(STANDARD, 64, "\r\n"),
    "wrapped every 4 with spaces": lambda: wrapped(STANDARD, 4, " \n "),
    "data URL": lambda: "data:image/png;base64," + STANDARD,
    "data URL, parameters, wrapped": lambda: "DATA:Image/PNG;name=x.png;base64,\n" + base64.encodebytes(PNG).decode(),
    "URL-safe": lambda: URL_SAFE,
    "URL-safe unpadded": lambda: URL_SAFE.rstrip("="),
    "standard unpadded": lambda: STANDARD.rstrip("="),
}


@pytest.mark.parametrize("form", FORMS)
def test_accepted_forms_decode_to_the_same_image(gateway: str, form: str) -> None:
    response = purify_json(gateway, FORMS[form]())
    assert response.status_code == 200, response.text
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), PIXELS)


def test_several_images_in_different_forms(gateway: str) -> None:
    response = purify_json(gateway, STANDARD, "data:image/png;base64," + URL_SAFE, base64.encodebytes(PNG).decode())
    assert response.status_code == 200, response.text
    for text in response.json()["images"]:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(text)))), PIXELS)


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("%%%not base64", "'%' at position 0 is not a base64 character"),
        ("QUJD\u00e9RA==", "'\u00e9' at position 4 is not a base64 character"),
        ("QUJD+/-_", "mixes the standard (+ /) and URL-safe (- _) alphabets"),
        ("QU=JD", "'=' at position 2 (padding goes only at the end)"),
        ("QUJD===", "more than two '=' of padding"),
        (STANDARD[: 4 * 10 + 1], "41 characters is no base64 length"),  # cut after one character of a group
        ("data:text/plain;base64,QUJD", "data URL of 'text/plain'"),
        ("data:image/png," + STANDARD, "starts like a data URL"),
    ],
)
def test_invalid_base64_is_a_400_that_names_the_cause(gateway: str, text: str, cause: str) -> None:
    response = purify_json(gateway, text)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and "images[0]" in error["message"]
    assert cause in error["message"], error["message"]


def test_valid_base64_of_damaged_bytes_is_still_refused(gateway: str) -> None:
    response = purify_json(gateway, "data:image/png;base64," + base64.b64encode(PNG[: len(PNG) // 2]).decode())
    assert response.status_code == 400, response.text


def test_the_byte_limit_is_on_the_decoded_size(gateway: str) -> None:
    # Wrapping every 4 characters makes the text ~1.5x the plain base64, yet it decodes to the limit exactly.
    long_text = "data:image/png;base64," + wrapped(STANDARD, 4, " \r\n")
    assert len(long_text) * 3 / 4 > MAX_IMAGE_BYTES * 1.2
    assert purify_json(gateway, long_text).status_code == 200
    # One byte more, in any form, is over it.
    over = png_of(PIXELS) + b"\x00"
    assert len(over) == MAX_IMAGE_BYTES + 1
    for text in (
        base64.b64encode(over).decode(),
        "data:image/png;base64," + base64.encodebytes(over).decode(),
        base64.urlsafe_b64encode(over).decode().rstrip("="),
    ):
        response = purify_json(gateway, text)
        assert response.status_code == 413, response.text
        assert "max_image_bytes" in response.json()["error"]["message"]
