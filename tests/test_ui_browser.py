"""`/ui` and the API pages in a real browser (headless Chromium through chromedriver), against a gateway and
a vendor over loopback sockets: an uploaded image renders, every image decodes, the console stays clean,
and the screenshot is not blank. The browser has no route to the internet, so the API pages must load
everything from the gateway."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.shadow.capture import CaptureRing, FlaggedImage
from tests.gateway_servers import (
    gateway_settings,
    png_bytes,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
)
from tests.webdriver import Browser, browser, missing_browser

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(missing_browser() is not None, reason=f"browser test: {missing_browser()}"),
]
IMAGES_STATE = "return Array.from(document.images).map(i => [i.className, i.complete, i.naturalWidth])"


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("ui")
    ring = CaptureRing(root / "captures")
    for k in range(3):
        flagged = FlaggedImage(f"req{k}", 0, png_bytes(seed=k), "image/png", png_bytes(seed=10 + k), {"label": 0},
                               {"label": 4}, "0", "4")  # fmt: skip
        ring.write(flagged, now=datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=k))
    settings = dict(shadow_capture_dir=str(root / "captures"), shadow_allow_header=True)
    with (
        running_vendor(tiny_vendor_dir(root)) as vendor_url,
        running_gateway(gateway_settings(tiny_ddpm_dir(root), vendor_url, **settings)) as url,
    ):
        yield url


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with browser() as session:
        yield session


def decoded_images(session: Browser) -> list[str]:
    """The class of every image on the page, once each has loaded; fails on one that did not decode."""
    states = session.wait_for(
        "the images to load", lambda: (s := session.run(IMAGES_STATE)) and all(done for _, done, _ in s) and s
    )
    broken = [name for name, _, width in states if width == 0]
    assert broken == [], f"images that did not decode: {broken}"
    return [name for name, _, _ in states]


def errors_in_console(session: Browser) -> list[str]:
    return [entry["message"] for entry in session.console() if entry["level"] == "SEVERE"]


def assert_not_blank(png: bytes) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 10, f"the screenshot looks blank (pixel standard deviation {pixels.std():.1f})"
    assert len(np.unique(pixels)) > 16


def test_an_uploaded_image_renders_with_its_purification_and_answers(
    gateway_url: str, chromium: Browser, tmp_path: Path
) -> None:
    upload = tmp_path / "upload.png"
    upload.write_bytes(png_bytes(seed=7))
    chromium.get(f"{gateway_url}/ui")
    assert chromium.run("return location.pathname") == "/ui/try"
    chromium.type_into(chromium.find("input#images"), str(upload))
    chromium.click(chromium.find("button#submit"))
    chromium.wait_for("the result", lambda: chromium.find_all("article.tried-image"))
    assert decoded_images(chromium) == ["raw", "degraded", "purified"]
    for selector in ("#purification", "#latency", ".answer-raw .label", ".answer-purified .label"):
        assert chromium.find_all(selector), selector
    assert "upload.png" in chromium.run("return document.querySelector('article.tried-image h2').textContent")
    assert chromium.run("return getComputedStyle(document.querySelector('header')).display") == "flex"  # the CSS
    assert errors_in_console(chromium) == []
    screenshot = chromium.screenshot_png()
    (tmp_path / "ui-try.png").write_bytes(screenshot)
    assert_not_blank(screenshot)


def test_the_captures_view_shows_the_records_and_the_alarms(
    gateway_url: str, chromium: Browser, tmp_path: Path
) -> None:
    chromium.get(f"{gateway_url}/ui/captures")
    assert len(chromium.find_all("article.capture")) == 3
    assert decoded_images(chromium) == ["raw", "purified"] * 3
    assert len(chromium.find_all("#alarms .alarm")) == 2
    assert chromium.find_all("table#labels")
    assert errors_in_console(chromium) == []
    screenshot = chromium.screenshot_png()
    (tmp_path / "ui-captures.png").write_bytes(screenshot)
    assert_not_blank(screenshot)


@pytest.mark.parametrize(
    ("page", "rendered"),
    [
        ("/docs", "return document.querySelectorAll('.opblock').length"),  # one block per operation
        ("/redoc", "return document.querySelectorAll('[data-section-id]').length"),
    ],
)
def test_the_api_pages_render_without_the_internet(
    gateway_url: str, chromium: Browser, page: str, rendered: str
) -> None:
    chromium.get(f"{gateway_url}{page}")
    chromium.wait_for(f"{page} to render the API", lambda: chromium.run(rendered) > 3)
    assert errors_in_console(chromium) == []
