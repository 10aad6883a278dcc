"""`/ui` over real sockets: the "Try an image" view runs the gateway's stages and shows their results, the
"Shadow captures" view shows the counters, the alarms and the captured records with paging, the pages
sit behind the API key and load nothing from elsewhere. (The page in a real browser: test_ui_browser.py.)"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.templating import Jinja2Templates
from PIL import Image
from starlette.requests import Request

from service.api.schemas import LatencyMs, PurificationInfo
from service.metrics import GatewayMetrics
from service.shadow.capture import CaptureRing, FlaggedImage
from service.shadow.history import BASELINE_S, BUCKET_S, WINDOW_S, ShadowHistory
from service.shadow.policy import DefensePolicy
from service.shadow.targets import TargetBoard
from service.ui.routes import CONTENT_SECURITY_POLICY, PACKAGE_DIR
from service.ui.shadow_view import PAGE_SIZE, shadow_page
from service.ui.tryout import TriedImage, TryResult
from service.upstream import UpstreamProtocol
from tests.fault_servers import serve_asgi
from tests.gateway_servers import (
    gateway_settings,
    get,
    metric_sum,
    png_bytes,
    post,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
)

KEY = "ui-key-123"
DATA_PNG = re.compile(r'<img class="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
DEADLINE_S = 60.0


def data_images(html: str) -> list[tuple[str, Image.Image]]:
    """Every inline image of a page, by class, decoded (so a broken one fails here)."""
    images = []
    for kind, b64 in DATA_PNG.findall(html):
        image = Image.open(io.BytesIO(base64.b64decode(b64)))
        image.load()
        images.append((kind, image))
    return images


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return tiny_ddpm_dir(root), tiny_vendor_dir(root)


@pytest.fixture(scope="module")
def gateway_url(models: tuple[Path, Path]) -> Iterator[str]:
    with running_vendor(models[1]) as vendor_url, running_gateway(gateway_settings(models[0], vendor_url)) as url:
        yield url


def test_try_shows_raw_degraded_and_purified_with_both_answers(gateway_url: str) -> None:
    response = post(
        f"{gateway_url}/ui/try",
        files=[
            ("image", ("shirt.png", png_bytes(), "image/png")),
            ("image", ("noise.png", png_bytes(seed=3), "image/png")),
        ],
        data={"strength": "strict", "votes": ""},
    )
    assert response.status_code == 200, response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]
    html = response.text
    assert html.count('<article class="tried-image">') == 2
    assert "shirt.png" in html and "noise.png" in html
    kinds = [kind for kind, image in data_images(html) if image.size == (28, 28)]
    assert kinds == ["raw", "degraded", "purified"] * 2  # no mask: this purifier does not localise
    assert html.count('vendor on the raw image: <span class="label">') == 2
    assert html.count('vendor on the purified image: <span class="label">') == 2
    assert re.search(r"<th>strength</th><td>strict</td>", html) and re.search(r"<th>votes</th><td>3</td>", html)
    assert html.count('<p class="votes">votes: ') == 2  # each vote's label
    for stage in ("decode", "queue", "purify", "upstream", "total"):
        assert re.search(rf"<th>{stage}</th><td class=\"num\">[\d.]+</td>", html), stage
    metrics = get(f"{gateway_url}/metrics").text
    assert metric_sum(metrics, "zipgate_upstream_requests_total") >= 4  # 3 votes and the raw images' call


def test_a_request_error_shows_on_the_form_with_its_status(gateway_url: str) -> None:
    response = post(f"{gateway_url}/ui/try", files=[("image", ("x.png", b"not an image", "image/png"))])
    assert response.status_code == 415
    assert '<section id="error"' in response.text and "unsupported_media_type" in response.text
    assert '<form id="try-form"' in response.text  # the form again, to try another
    response = post(
        f"{gateway_url}/ui/try", files=[("image", ("x.png", png_bytes(), "image/png"))], data={"votes": "0"}
    )
    assert response.status_code == 400 and "at least 1" in response.text


def test_numbers_on_the_pages_follow_the_apis_rule(gateway_url: str) -> None:
    """Votes in the form and ?page= are ASCII digits, as ?votes= is: "3_0" is refused, not read as 30."""
    for votes in ("3_0", " 3", "+3", "\u0663"):
        response = post(
            f"{gateway_url}/ui/try", files=[("image", ("x.png", png_bytes(), "image/png"))], data={"votes": votes}
        )
        assert response.status_code == 400 and "at least 1" in response.text, votes
    for page in ("1_0", "+1", "1.0"):
        assert get(f"{gateway_url}/ui/captures", params={"page": page}).status_code == 400, page
    assert get(f"{gateway_url}/ui/captures", params={"page": "1"}).status_code == 200


def test_a_query_a_page_cannot_read_is_a_400_page_naming_the_parameter(gateway_url: str) -> None:
    for page in ("abc", "0"):
        response = get(f"{gateway_url}/ui/captures", params={"page": page})
        assert response.status_code == 400, page
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert '<section id="error"' in response.text and "query parameter page: " in response.text
        assert '<a href="/ui/captures">' in response.text  # the page again, without the query
    api = post(f"{gateway_url}/purify", params={"seed": "abc"}, files=[("image", ("x.png", png_bytes(), "image/png"))])
    assert api.status_code == 422 and api.json()["error"]["code"] == "invalid_request"  # the API keeps its JSON


def test_try_shows_a_hostile_vendors_labels_bounded(models: tuple[Path, Path]) -> None:
    """A vendor that answers 200 KB labels: the page shows each label as its short hash, and each answer cut."""
    calls = iter(range(10**6))
    vendor = FastAPI()

    @vendor.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"label": f"{next(calls)}:" + "L" * 200_000})

    with serve_asgi(vendor) as vendor_url, running_gateway(gateway_settings(models[0], vendor_url)) as url:
        response = post(f"{url}/ui/try", files=[("image", ("x.png", png_bytes(), "image/png"))], data={"votes": "3"})
    assert response.status_code == 200, response.text[:500]
    html = response.text
    labels = re.findall(r'<span class="label">([^<]*)</span>', html)
    assert len(labels) == 2 and all(re.fullmatch(r"h:[0-9a-f]{12}", label) for label in labels), labels
    (votes,) = re.findall(r'<p class="votes">votes: ([^<]*)</p>', html)
    assert all(re.fullmatch(r"h:[0-9a-f]{12}", label) for label in votes.split(", ")), votes
    assert len(html) < 100_000, len(html)  # two answers cut to 2,000 characters, no 200 KB label


def test_the_pages_need_the_key_but_the_stylesheet_does_not(models: tuple[Path, Path]) -> None:
    with (
        running_vendor(models[1]) as vendor_url,
        running_gateway(gateway_settings(models[0], vendor_url, api_key=KEY)) as url,
    ):
        for path in ("/ui", "/ui/", "/ui/try", "/ui/captures"):
            assert get(f"{url}{path}").status_code == 401, path
            answer = get(f"{url}{path}", headers={"X-API-Key": KEY}, follow_redirects=True)  # /ui(/): to /ui/try
            assert answer.status_code == 200, path
        assert post(f"{url}/ui/try", files=[("image", png_bytes())]).status_code == 401
        page = get(f"{url}/ui/try", headers={"X-API-Key": KEY}).text
        for asset in re.findall(r'<link [^>]*href="([^"]+)"', page):
            assert asset.startswith("/ui/static/"), asset  # no other host
            assert get(f"{url}{asset}").status_code == 200, asset


def test_the_mask_shows_beside_the_images_when_the_purification_has_one() -> None:
    pixel = "data:image/png;base64," + base64.b64encode(png_bytes(4, 4)).decode()
    image = TriedImage("x.png", pixel, pixel, pixel, pixel, "{}", "{}", "0", "1", None)
    result = TryResult(
        "rid",
        [image],
        PurificationInfo(model="m", transforms="jblur:4", steps=2, guidance_power=0.25, device="cpu", dtype="fp32"),
        LatencyMs(decode=1, queue=1, purify=1, upstream=1, total=4),
    )
    templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")
    request = Request({"type": "http", "method": "POST", "path": "/ui/try", "headers": [], "query_string": b""})
    html = bytes(
        templates.TemplateResponse(
            request,
            "try.html",
            {"prefix": "/ui", "static_url": "/ui/static", "view": "try", "title": "t", "engine": "", "strengths": [],
             "default_strength": "balanced", "default_votes": 1, "max_votes": 5, "result": result, "latency": []},
        ).body
    ).decode()  # fmt: skip
    assert [kind for kind, _ in data_images(html)] == ["raw", "degraded", "purified", "mask"]
    assert '<span class="flag">changed</span>' in html  # 0 on the raw image, 1 on the purified one


# --- shadow captures ---------------------------------------------------------------------------


class LabelByImage:
    """A raw-protocol vendor that answers label 0 for the images in `triggered` (byte for byte), else 1."""

    def __init__(self, triggered: set[bytes]) -> None:
        self.triggered = triggered

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = json.dumps({"label": 0 if body in self.triggered else 1}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})


def old_record(ring: CaptureRing, k: int) -> None:
    flagged = FlaggedImage(f"old{k}", 0, png_bytes(seed=k), "image/png", png_bytes(seed=100 + k), {"label": 0},
                           {"label": 1}, "0", "1")  # fmt: skip
    ring.write(flagged, now=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=k))


def test_captures_show_counts_alarms_and_records_newest_first_with_paging(
    models: tuple[Path, Path], tmp_path: Path
) -> None:
    capture_dir = tmp_path / "captures"
    ring = CaptureRing(capture_dir)
    for k in range(PAGE_SIZE + 1):  # records from an earlier run: the view reads the folder
        old_record(ring, k)
    triggered = [png_bytes(seed=50), png_bytes(seed=51)]
    settings = dict(
        shadow_allow_header=True, shadow_capture_dir=str(capture_dir), upstream_protocol=UpstreamProtocol.RAW
    )
    with (
        serve_asgi(LabelByImage(set(triggered))) as vendor_url,
        running_gateway(gateway_settings(models[0], vendor_url, **settings)) as url,
    ):
        for png in triggered:
            response = post(
                f"{url}/predict", files=[("image", png)], headers={"X-Zipgate-Shadow": "1", "X-Request-ID": "rq-new"}
            )
            assert response.status_code == 200, response.text
        deadline = time.monotonic() + DEADLINE_S
        while metric_sum(get(f"{url}/metrics").text, "zipgate_shadow_captured_total") < 2:
            assert time.monotonic() < deadline, "the shadow comparisons were not captured"
            time.sleep(0.05)
        first = get(f"{url}/ui/captures")
        assert first.status_code == 200
        html = first.text
        assert f"Captured disagreements ({PAGE_SIZE + 3})" in html
        assert re.search(
            r"<tr><td>0</td><td class=\"num\">2</td><td class=\"num\">2</td>\s*<td class=\"num\">2</td>", html
        )
        assert html.count('<div class="alarm silent">') == 2  # 2 disagreements: under both rules' minimum counts
        assert "POLICY=always" in html and "None named." in html
        assert html.count('<article class="capture">') == PAGE_SIZE
        request_ids = re.findall(r"request <code>([\w-]+)</code>", html)
        assert request_ids[:2] == ["rq-new", "rq-new"] and request_ids[2] == f"old{PAGE_SIZE}"  # newest first
        for src in re.findall(r'<img class="(?:raw|purified)" src="([^"]+)"', html)[:4]:
            image = get(f"{url}{src}")
            assert image.status_code == 200 and image.headers["content-type"] == "image/png", src
            Image.open(io.BytesIO(image.content)).load()
        assert 'rel="next" href="/ui/captures?page=2"' in html
        second = get(f"{url}/ui/captures", params={"page": 2}).text
        assert second.count('<article class="capture">') == 3 and 'rel="prev"' in second
        assert re.findall(r"request <code>([\w-]+)</code>", second) == ["old2", "old1", "old0"]
        for bad in ("/ui/captures/..%2F..%2Fetc/passwd", "/ui/captures/nothing/purified.png"):
            assert get(f"{url}{bad}").status_code == 404, bad
        name = re.search(r'src="/ui/captures/([^/]+)/purified.png"', html).group(1)  # type: ignore[union-attr]
        assert get(f"{url}/ui/captures/{name}/meta.json").status_code == 404  # only the two images


# --- the alarms' state from the history ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def alarms_for(history: ShadowHistory) -> dict[str, list[str]]:
    metrics = GatewayMetrics()
    gateway: Any = SimpleNamespace(
        settings=SimpleNamespace(shadow_capture_dir=None, policy=DefensePolicy.ALWAYS),
        metrics=metrics,
        shadow=SimpleNamespace(history=history),
        targets=TargetBoard(metrics.registry),
    )
    return {alarm.alert: alarm.named for alarm in shadow_page(gateway, 1).alarms}


def test_the_share_rule_names_a_label_holding_most_disagreements_in_the_window() -> None:
    clock = Clock()
    history = ShadowHistory(clock)
    for _ in range(19):
        history.count("0", disagreed=True)
    history.count("3", disagreed=True)
    assert alarms_for(history)["ZipgateSuspectedBackdoorTarget"] == []  # 19 < 20
    history.count("0", disagreed=True)
    assert alarms_for(history)["ZipgateSuspectedBackdoorTarget"] == ["0"]
    clock.now += WINDOW_S + BUCKET_S  # out of the window
    assert alarms_for(history)["ZipgateSuspectedBackdoorTarget"] == []


def test_the_baseline_rule_names_a_label_far_above_its_own_day() -> None:
    clock = Clock()
    history = ShadowHistory(clock)
    for _ in range(BASELINE_S // 600):  # a day of clean traffic: label 0 disagrees 1 time in 10
        for k in range(10):
            history.count("0", disagreed=k == 0)
        clock.now += 600
    for k in range(60):  # the last 30 minutes: 1 in 2
        history.count("0", disagreed=k % 2 == 0)
    assert alarms_for(history)["ZipgateDisagreementAboveBaseline"] == ["0"]
    clock.now += BASELINE_S + 2 * WINDOW_S  # all forgotten
    assert alarms_for(history)["ZipgateDisagreementAboveBaseline"] == []


def test_captures_show_the_named_targets_and_who_named_them(models: tuple[Path, Path], tmp_path: Path) -> None:
    settings = gateway_settings(models[0], "http://127.0.0.1:9", policy="until_alarm", suspected_targets="7")
    with running_gateway(settings) as url:
        assert get(f"{url}/ui/captures").status_code == 200
        html = get(f"{url}/ui/captures").text
    assert "POLICY=until_alarm" in html
    assert re.search(r"<tr><td>7</td><td>setting</td><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td><td>–</td></tr>", html)
