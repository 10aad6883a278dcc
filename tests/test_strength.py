"""Strength presets: the pure preset rules, the settings' checks, and `?strength=` through a running gateway."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import ValidationError

from service.config import Settings
from service.loopback import serve_asgi
from service.purify.options import ZipConfig
from service.purify.strength import PRESETS, Strength, apply_strength
from tests.gateway_servers import FakePurifier, gateway_settings, metric_value, running_gateway

CONFIGURED = ZipConfig("blur:2", steps=7, guidance_power=0.25, eta=0.5, noise_start=1.0)


@pytest.mark.parametrize("votes", [1, 2, 5])
def test_balanced_runs_the_configured_setting_unchanged(votes: int) -> None:
    choice = apply_strength(Strength.BALANCED, CONFIGURED, votes)
    assert choice.config == CONFIGURED and choice.votes == votes and choice.strength is Strength.BALANCED


@pytest.mark.parametrize(
    ("configured_start", "configured_lambda", "start", "lam"),
    [(1.0, 0.25, 0.6, 0.5), (0.8, 0.5, 0.6, 0.5), (0.4, 1.0, 0.4, 1.0), (1.0, float("inf"), 0.6, float("inf"))],
)
def test_light_never_purifies_harder_than_configured(
    configured_start: float, configured_lambda: float, start: float, lam: float
) -> None:
    """Lower t* and larger λ both repaint less: light moves each that way only."""
    configured = dataclasses.replace(CONFIGURED, noise_start=configured_start, guidance_power=configured_lambda)
    choice = apply_strength(Strength.LIGHT, configured, 2)
    assert choice.config == dataclasses.replace(configured, noise_start=start, guidance_power=lam)
    assert choice.votes == 2


@pytest.mark.parametrize(
    ("votes", "configured_lambda", "expected_votes", "lam"), [(1, 0.5, 3, 0.25), (3, 0.25, 3, 0.25), (5, 0.1, 5, 0.1)]
)
def test_strict_never_purifies_lighter_than_configured(
    votes: int, configured_lambda: float, expected_votes: int, lam: float
) -> None:
    configured = dataclasses.replace(CONFIGURED, guidance_power=configured_lambda)
    choice = apply_strength(Strength.STRICT, configured, votes)
    assert choice.config == dataclasses.replace(configured, guidance_power=lam) and choice.votes == expected_votes


def test_every_preset_is_defined_and_names_parse() -> None:
    assert set(PRESETS) == set(Strength)
    assert apply_strength("light", CONFIGURED, 1).strength is Strength.LIGHT  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        apply_strength("extreme", CONFIGURED, 1)  # type: ignore[arg-type]


def test_settings_refuse_a_default_strength_that_needs_more_votes_than_allowed() -> None:
    with pytest.raises(ValidationError, match="strength 'strict' purifies 3 times; max_votes is 2"):
        Settings(strength="strict", max_votes=2)
    assert Settings(strength="strict", max_votes=3).strength_choice(Strength.STRICT).votes == 3


@pytest.mark.parametrize("noise_start", [0.0, -0.5, 1.5])
def test_settings_refuse_a_noise_start_outside_0_1(noise_start: float) -> None:
    with pytest.raises(ValidationError, match="noise_start"):
        Settings(noise_start=noise_start)


def test_settings_pass_the_noise_start_and_time_travel_to_zip() -> None:
    config = Settings(noise_start=0.7, travel_length=2, travel_repeat=3).zip_config
    assert (config.noise_start, config.travel_length, config.travel_repeat) == (0.7, 2, 3)
    with pytest.raises(ValidationError, match="travel_length"):
        Settings(travel_length=0)


class RecordingPurifier(FakePurifier):
    """Returns its input; records which knobs (variant) each batch was asked to run."""

    def __init__(self) -> None:
        super().__init__()
        self.variants: list[object] = []
        self._lock = threading.Lock()

    def __call__(self, batch: Any, steps: int, generators: object, variant: object = None) -> Any:
        with self._lock:
            self.variants.append(variant)
        return super().__call__(batch, steps, generators)


class CountingVendor:
    """A raw-protocol vendor that answers label 1 and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.headers: list[dict[str, str]] = []
        self.app = FastAPI()

        @self.app.post("/predict")
        async def predict(request: Request) -> JSONResponse:
            await request.body()
            self.calls += 1
            self.headers.append(dict(request.headers))
            return JSONResponse({"label": 1})


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def _predict(url: str, path: str = "/predict", **params: str) -> httpx.Response:
    files = [("image", ("x.png", _png(), "image/png"))]
    return httpx.post(f"{url}{path}", params=params, files=files, timeout=30.0)


@contextlib.contextmanager
def _gateway(tmp_path: Path, **settings: Any) -> Iterator[tuple[str, CountingVendor, RecordingPurifier]]:
    """A running gateway (λ = 0.25 unless set) with a recording purifier, in front of a counting vendor."""
    vendor, purifier = CountingVendor(), RecordingPurifier()
    with (
        serve_asgi(vendor.app) as vendor_url,
        running_gateway(
            gateway_settings(tmp_path, vendor_url, **{"guidance_power": 0.25, **settings}),
            purifier_factory=lambda device: purifier,
        ) as url,
    ):
        yield url, vendor, purifier


def test_strength_presets_through_a_running_gateway(tmp_path: Path) -> None:
    with _gateway(tmp_path) as (url, vendor, purifier):
        default = _predict(url)
        assert default.status_code == 200, default.text
        assert default.json()["purification"]["strength"] == "balanced" and vendor.calls == 1
        assert purifier.variants == [None]  # the configured knobs

        strict = _predict(url, strength="strict", seed="3")
        block = strict.json()["purification"]
        assert strict.status_code == 200 and block["strength"] == "strict"
        assert block["votes"] == 3 and len(block["vote_labels"][0]) == 3 and vendor.calls == 1 + 3
        assert purifier.variants[-1] is None  # strict at the configured λ = 0.25: the same batches as balanced

        light = _predict(url, strength="light")
        block = light.json()["purification"]
        assert light.status_code == 200 and (block["strength"], block["noise_start"], block["votes"]) == (
            "light",
            0.6,
            1,
        )
        variant = purifier.variants[-1]
        assert isinstance(variant, ZipConfig) and (variant.noise_start, variant.guidance_power) == (0.6, 0.5)
        assert block["guidance_power"] == 0.5

        purified = _predict(url, "/purify", strength="light")
        assert purified.status_code == 200 and purified.headers["content-type"] == "image/png"
        assert purifier.variants[-1].noise_start == 0.6  # type: ignore[union-attr]
        strict_purify = _predict(url, "/purify", strength="strict", include="degraded")
        assert strict_purify.json()["purification"]["votes"] == 1  # /purify returns one image: no votes

        unknown = _predict(url, strength="extreme")
        assert unknown.status_code == 422 and "strength" in unknown.text
        scrape = httpx.get(f"{url}/metrics", timeout=10.0).text
        counts = {
            strength: metric_value(scrape, "zipgate_strength_requests_total", strength=strength)
            for strength in ("balanced", "strict", "light")
        }
        assert counts == {"balanced": 1, "strict": 2, "light": 2}  # /purify requests counted too


def test_a_preset_that_needs_more_votes_than_allowed_is_a_client_error(tmp_path: Path) -> None:
    with _gateway(tmp_path, max_votes=2, strength="light") as (url, vendor, purifier):
        refused = _predict(url, strength="strict")
        assert refused.status_code == 400
        assert "votes=3 (strength=strict) exceeds this gateway's max_votes (2)" in refused.json()["error"]["message"]
        assert vendor.calls == 0 and purifier.variants == []  # refused before any work
        assert _predict(url, "/purify", strength="strict").status_code == 200  # one image back: no votes needed
        default = _predict(url)  # the configured default strength
        assert default.json()["purification"]["strength"] == "light"


def test_a_sidecar_request_picks_its_strength_with_a_header_the_vendor_never_sees(tmp_path: Path) -> None:
    with _gateway(tmp_path) as (url, vendor, purifier):

        def sidecar(**headers: str) -> httpx.Response:
            return httpx.post(
                f"{url}/predict", content=_png(), headers={"content-type": "image/png", **headers}, timeout=30.0
            )

        light = sidecar(**{"X-Zipgate-Strength": "light"})
        assert light.status_code == 200 and light.json() == {"label": 1}  # the vendor's answer, relayed
        variant = purifier.variants[-1]
        assert isinstance(variant, ZipConfig) and variant.noise_start == 0.6
        assert "x-zipgate-strength" not in vendor.headers[-1]
        assert sidecar().status_code == 200 and purifier.variants[-1] is None  # the default, balanced
        strict = sidecar(**{"X-Zipgate-Strength": "strict"})
        assert strict.status_code == 200 and vendor.calls == 3  # one relayed call: no votes
        bad = sidecar(**{"X-Zipgate-Strength": "maximal"})
        assert bad.status_code == 422 and "X-Zipgate-Strength" in bad.json()["error"]["message"]
        assert vendor.calls == 3 and len(purifier.variants) == 3  # refused before any work


@pytest.mark.parametrize("spelling", ["STRICT", "Strict", "sTRICT"])
def test_strength_has_one_spelling_in_the_query_and_in_the_header(tmp_path: Path, spelling: str) -> None:
    """Both take the presets' names exactly, in lower case; any other spelling is the same 422, before any work."""
    with _gateway(tmp_path) as (url, vendor, purifier):
        query = _predict(url, strength=spelling)
        header = httpx.post(
            f"{url}/predict",
            content=_png(),
            headers={"content-type": "image/png", "X-Zipgate-Strength": spelling},
            timeout=30.0,
        )
        for response, name in ((query, "strength"), (header, "X-Zipgate-Strength")):
            assert response.status_code == 422, (name, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_request" and name in error["message"], error
        assert vendor.calls == 0 and purifier.variants == []
        # The exact spelling passes both ways.
        assert _predict(url, strength="strict").json()["purification"]["strength"] == "strict"
        exact = httpx.post(
            f"{url}/predict",
            content=_png(),
            headers={"content-type": "image/png", "X-Zipgate-Strength": "strict"},
            timeout=30.0,
        )
        assert exact.status_code == 200 and exact.json() == {"label": 1}


@pytest.mark.parametrize("value", ["3_0", "+3", " 3", "3 ", "3.0", "3e0", "0x3", "\u0663", "\uff13", ""])
def test_integer_query_parameters_take_ascii_digits_only(tmp_path: Path, value: str) -> None:
    """Python's int() (and pydantic's lax int) read "3_0" as 30 and "٣" as 3: the gateway refuses what is not
    plain digits, with a 422 that names the parameter, before any work."""
    with _gateway(tmp_path, max_votes=50) as (url, vendor, purifier):
        for name in ("votes", "seed"):
            response = _predict(url, **{name: value})
            assert response.status_code == 422, (name, value, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_request" and f"query.{name}" in error["message"], error
        assert vendor.calls == 0 and purifier.variants == []
        assert _predict(url, votes="3", seed="30").json()["purification"]["votes"] == 3


@pytest.mark.parametrize("value", ["1_0", "+5", "0x10", "\u0665", "5.", ".5"])
def test_the_request_timeout_header_takes_plain_numbers_only(tmp_path: Path, value: str) -> None:
    with _gateway(tmp_path) as (url, vendor, purifier):
        files = [("image", ("x.png", _png(), "image/png"))]
        headers = {"X-Request-Timeout": value.encode()}  # UTF-8: a header may carry any byte
        response = httpx.post(f"{url}/predict", files=files, headers=headers, timeout=30.0)
        if value in ("5.", ".5"):  # plain decimals, as JSON numbers almost are
            assert response.status_code == 200, response.text
            return
        assert response.status_code == 400 and "X-Request-Timeout" in response.json()["error"]["message"]
        assert vendor.calls == 0
