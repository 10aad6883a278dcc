"""Units of the v2 additions: the model catalog (vendor asked once, answers kept for a TTL, only a
404 refuses), and the pixel input of the v2 adapter (name, datatype, shape, layout)."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from service.config import ConfigError, load_settings
from service.errors import ModelNotFound
from service.upstream import PixelLayout, TensorDatatype, UpstreamProtocol, V2Codec, V2Input
from service.upstream.catalog import ModelCatalog, ModelRef, status_path
from tests.mock_vendor import RID, adapter, mock_client


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _status_vendor(statuses: dict[str, int], seen: list[str]) -> httpx.AsyncClient:
    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        await asyncio.sleep(0.01)  # long enough for concurrent askers to meet
        return httpx.Response(statuses.get(request.url.path, 500), json={})

    return mock_client(handler)


def test_status_paths_per_protocol() -> None:
    assert status_path(ModelRef(UpstreamProtocol.V2, "m")) == "/v2/models/m/ready"
    assert status_path(ModelRef(UpstreamProtocol.V2, "m", "3")) == "/v2/models/m/versions/3/ready"
    assert status_path(ModelRef(UpstreamProtocol.TFSERVING, "m")) == "/v1/models/m"
    assert status_path(ModelRef(UpstreamProtocol.RAW, "m")) is None


async def test_only_a_404_refuses_and_answers_are_kept_for_the_ttl() -> None:
    seen: list[str] = []
    clock = FakeClock()
    catalog = ModelCatalog(10.0, clock=clock)
    statuses = {"/v2/models/known/ready": 200, "/v2/models/gone/ready": 404}  # anything else: 500
    async with _status_vendor(statuses, seen) as client:
        v2 = adapter(UpstreamProtocol.V2, client)

        async def require(name: str) -> None:
            await catalog.require(v2, ModelRef(UpstreamProtocol.V2, name), {}, request_id=RID, timeout_s=5.0)

        await require("known")
        with pytest.raises(ModelNotFound, match="'gone'"):
            await require("gone")
        await require("flaky")  # a 500 is inconclusive: the request goes on
        await require("flaky")  # ... and is not kept
        await asyncio.gather(*(require("known") for _ in range(3)))
        with pytest.raises(ModelNotFound):
            await require("gone")
        assert seen == [
            "GET /v2/models/known/ready",
            "GET /v2/models/gone/ready",
            "GET /v2/models/flaky/ready",
            "GET /v2/models/flaky/ready",
        ]
        clock.now += 10.5  # past the TTL: asked again, and concurrent askers share one question
        await asyncio.gather(*(require("known") for _ in range(3)))
        assert seen[4:] == ["GET /v2/models/known/ready"]


async def test_an_unreachable_vendor_is_inconclusive_and_ttl_zero_asks_nothing() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with mock_client(refuse) as client:
        v2 = adapter(UpstreamProtocol.V2, client)
        await ModelCatalog(10.0).require(v2, ModelRef(UpstreamProtocol.V2, "m"), {}, request_id=RID, timeout_s=1.0)
    seen: list[str] = []
    async with _status_vendor({}, seen) as client:
        await ModelCatalog(0.0).require(
            adapter(UpstreamProtocol.V2, client), ModelRef(UpstreamProtocol.V2, "m"), {}, request_id=RID, timeout_s=1.0
        )
    assert seen == []
    with pytest.raises(ValueError, match="ttl_s"):
        ModelCatalog(-1.0)


async def test_the_catalog_forgets_the_oldest_beyond_its_bound() -> None:
    seen: list[str] = []
    catalog = ModelCatalog(60.0, max_entries=2)
    async with _status_vendor({f"/v2/models/m{i}/ready": 200 for i in range(3)}, seen) as client:
        v2 = adapter(UpstreamProtocol.V2, client)
        for name in ("m0", "m1", "m2", "m0"):
            await catalog.require(v2, ModelRef(UpstreamProtocol.V2, name), {}, request_id=RID, timeout_s=5.0)
    assert len(seen) == 4  # m0 was forgotten when m2 came, so it is asked again


# --- the v2 adapter's image input ---------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bytes_input_is_named_by_the_setting() -> None:
    spec = V2Input(name="input_1")
    codec = V2Codec("m", spec)
    (tensor,) = codec.encode_request([b"\x89PNG"], RID)["inputs"]
    assert tensor == {"name": "input_1", "shape": [1], "datatype": "BYTES", "data": ["iVBORw=="]}


def test_pixel_inputs_in_both_layouts_and_datatypes() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10  # H=2, W=3, RGB
    image = _png(rgb)
    hwc = V2Codec("m", V2Input("x", TensorDatatype.UINT8, (2, 3, 3), PixelLayout.HWC))
    (tensor,) = hwc.encode_request([image, image], RID)["inputs"]
    assert tensor["shape"] == [2, 2, 3, 3] and tensor["datatype"] == "UINT8"
    assert tensor["data"] == np.stack([rgb, rgb]).ravel().tolist()

    chw = V2Codec("m", V2Input("x", TensorDatatype.FP32, (3, 2, 3), PixelLayout.CHW))
    (tensor,) = chw.encode_request([image], RID)["inputs"]
    assert tensor["shape"] == [1, 3, 2, 3] and tensor["datatype"] == "FP32"
    np.testing.assert_allclose(tensor["data"], (rgb.transpose(2, 0, 1) / 255.0).ravel(), rtol=1e-6)

    gray_small = V2Codec("m", V2Input("x", TensorDatatype.UINT8, (1, 4, 6)))
    (tensor,) = gray_small.encode_request([image], RID)["inputs"]  # converted to gray, resized to 4×6
    assert tensor["shape"] == [1, 1, 4, 6] and len(tensor["data"]) == 24


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dict(upstream_input_datatype="FP32"), "3 positive sizes"),
        (dict(upstream_input_datatype="UINT8", upstream_input_shape="2,28,28"), "2 channels"),
        (dict(upstream_input_shape="1,28,28"), "drop the shape"),
        (dict(upstream_input_datatype="INT8"), "upstream_input_datatype"),
    ],
)
def test_input_settings_are_checked_with_the_settings(spec: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**spec)


def test_input_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIPGATE_UPSTREAM_INPUT_DATATYPE", "FP32")
    monkeypatch.setenv("ZIPGATE_UPSTREAM_INPUT_SHAPE", "28, 28, 1")
    monkeypatch.setenv("ZIPGATE_UPSTREAM_INPUT_LAYOUT", "hwc")
    monkeypatch.setenv("ZIPGATE_UPSTREAM_INPUT_NAME", "pixels")
    spec = load_settings().upstream_input
    assert spec == V2Input("pixels", TensorDatatype.FP32, (28, 28, 1), PixelLayout.HWC)
    assert spec.channels == 1 and spec.height_width == (28, 28)


def test_errors_on_the_protocol_paths_take_the_protocols_shape() -> None:
    from service.errors import error_body

    house = {"error": {"code": "bad_request", "message": "no", "request_id": "r1"}}
    assert error_body("/predict", "bad_request", "no", "r1") == house
    assert error_body("/v2x", "bad_request", "no", "r1") == house  # not a protocol path
    for path in ("/v2", "/v2/models/m/infer", "/v2/health/ready", "/v1/models/m:predict"):
        assert error_body(path, "bad_request", "no", "r1") == {"error": "no", "code": "bad_request", "request_id": "r1"}
    assert error_body("/v1/models/m:predict", "upstream_error", "down", None, upstream_status=503) == {
        "error": "down",
        "code": "upstream_error",
        "request_id": None,
        "upstream_status": 503,
    }
