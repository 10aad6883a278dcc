"""Fuzzing the sidecar shapes that once reached the vendor unpurified, and clients that hang up mid-call.

- Mixed v1 keys: `instances` (objects or bare base64) with `inputs`, `signature_name`, unknown keys.
- Extra v2 inputs: the image input with a second BYTES input, pixel tensors, small numeric inputs,
  images in `parameters`, in JSON or the binary tensor extension.

Whatever hypothesis draws, no original image reaches the vendor (its base64 text or its bytes), no
pixel tensor large enough to be an image does either, and every answer is a 2xx or a JSON 4xx.

- A client that hangs up during the vendor call, on every route: each vendor call is cancelled
  (the vendor sees its connection close) and each request is counted as 499, never 5xx or 504.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.upstream.v2_binary import encode_bytes_elements
from tests.fault_servers import HangingApp, StaticApp, serve_asgi
from tests.gateway_servers import (
    error_details,
    gateway_settings,
    get,
    metric_value,
    png_bytes,
    raw_request,
    running_gateway,
    tiny_ddpm_dir,
    wait_until,
)

pytestmark = pytest.mark.slow

IMAGES = tuple(png_bytes(seed=seed) for seed in range(3))
PIXELS = 784  # a 28 x 28 image's pixel count: a tensor this long beside the image input could be one
EXAMPLES = 60
# Derandomized: the same requests go out on every run, so a failure reproduces.
FUZZING = settings(
    max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StaticApp, httpx.Client]]:
    vendor = StaticApp(200, b'{"predictions": [], "outputs": []}')
    with (
        serve_asgi(vendor) as vendor_url,
        running_gateway(
            gateway_settings(tiny_ddpm_dir(tmp_path_factory.mktemp("models")), vendor_url, upstream_model_check_ttl_s=0)
        ) as url,
        httpx.Client(base_url=url, timeout=60.0) as client,
    ):
        yield vendor, client


def _check(vendor: StaticApp, before: int, response: httpx.Response, path: str, where: str) -> None:
    """A 2xx or a JSON 4xx; no original image, in base64 or as bytes, nor a pixel tensor reached the vendor."""
    assert response.status_code < 500, (where, response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = error_details(response.json(), path)
        assert error["request_id"] == response.headers["x-request-id"], (where, error)
    for call in vendor.requests[before:]:
        for image in IMAGES:
            assert _b64(image) not in call.body.decode("latin-1") and image not in call.body, where
        assert b"[" + b"0," * (PIXELS - 1) not in call.body.replace(b" ", b""), where
        assert bytes(PIXELS) not in call.body, where


image_text = st.sampled_from([_b64(image) for image in IMAGES])
side_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.text(max_size=8),
    image_text,  # an image where no image belongs
    st.just([0] * PIXELS),  # a whole image's pixels
)

# ---- mixed v1 keys ----------------------------------------------------------------------------------

v1_instances = st.lists(st.one_of(image_text, image_text.map(lambda text: {"b64": text})), min_size=1, max_size=2)
v1_bodies = st.builds(
    lambda instances, extra: {**({"instances": instances} if instances else {}), **extra},
    st.one_of(st.none(), v1_instances),
    st.dictionaries(
        st.sampled_from(["inputs", "signature_name", "image2", "instances2", "parameters"]),
        st.one_of(side_values, v1_instances, st.builds(lambda text: {"b64": text}, image_text)),
        max_size=3,
    ),
)


def test_mixed_v1_keys_never_carry_an_unpurified_image_to_the_vendor(
    recorded: tuple[StaticApp, httpx.Client],
) -> None:
    vendor, client = recorded

    @FUZZING
    @given(body=v1_bodies)
    def run(body: dict[str, Any]) -> None:
        before = len(vendor.requests)
        path = "/v1/models/fmnist:predict"
        _check(vendor, before, client.post(path, json=body), path, json.dumps(body)[:200])

    run()


# ---- extra v2 inputs --------------------------------------------------------------------------------

image_input = st.lists(image_text, min_size=1, max_size=2).map(
    lambda texts: {"name": "image", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
)
extra_inputs = st.one_of(
    st.builds(
        lambda text, name: {"name": name, "shape": [1], "datatype": "BYTES", "data": [text]},
        image_text,
        st.text(max_size=6),
    ),
    st.builds(lambda name: {"name": name, "shape": [1], "datatype": "BYTES", "data": ["hello"]}, st.text(max_size=6)),
    st.just({"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * PIXELS}),
    st.just({"name": "threshold", "shape": [1], "datatype": "FP32", "data": [0.5]}),
)
v2_bodies = st.builds(
    lambda image, extras, order, parameters: {
        "inputs": ([image, *extras] if order else [*extras, image]),
        **({"parameters": parameters} if parameters is not None else {}),
    },
    image_input,
    st.lists(extra_inputs, max_size=2),
    st.booleans(),
    st.one_of(st.none(), st.dictionaries(st.sampled_from(["image2", "flag", "note"]), side_values, max_size=2)),
)


def _binary(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The same request in the binary tensor extension: every input's data as raw bytes after the header."""
    header: dict[str, Any] = {key: value for key, value in body.items() if key != "inputs"}
    header["inputs"], raws = [], []
    for tensor in body["inputs"]:
        data = tensor["data"]
        if tensor["datatype"] == "BYTES":
            raw = encode_bytes_elements([base64.b64decode(x) if x in _IMAGE_TEXTS else x.encode() for x in data])
        elif tensor["datatype"] == "UINT8":
            raw = bytes(data)
        else:
            raw = struct.pack(f"<{len(data)}f", *data)
        header["inputs"].append(
            {key: value for key, value in tensor.items() if key != "data"}
            | {"parameters": {"binary_data_size": len(raw)}}
        )
        raws.append(raw)
    header_json = json.dumps(header).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header_json))}
    return header_json + b"".join(raws), headers


_IMAGE_TEXTS = {_b64(image) for image in IMAGES}


def test_extra_v2_inputs_never_carry_an_unpurified_image_to_the_vendor(
    recorded: tuple[StaticApp, httpx.Client],
) -> None:
    vendor, client = recorded

    @FUZZING
    @given(body=v2_bodies, binary=st.booleans())
    def run(body: dict[str, Any], binary: bool) -> None:
        before = len(vendor.requests)
        path = "/v2/models/fmnist/infer"
        if binary:
            content, headers = _binary(body)
            response = client.post(path, content=content, headers=headers)
        else:
            response = client.post(path, json=body)
        _check(vendor, before, response, path, f"binary={binary} {json.dumps(body)[:200]}")

    run()


# ---- clients that hang up during the vendor call ----------------------------------------------------


HANG_UP_ROUTES = {
    "/predict": lambda: {"files": [("image", ("x.png", IMAGES[0], "image/png"))]},
    "/v1/models/fmnist:predict": lambda: {"json": {"instances": [_b64(IMAGES[0])]}},
    "/v2/models/fmnist/infer": lambda: {
        "json": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [_b64(IMAGES[1])]}]}
    },
}


def test_clients_that_hang_up_during_the_vendor_call_are_499_and_cancel_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    vendor = HangingApp()
    model = tiny_ddpm_dir(tmp_path_factory.mktemp("models"))
    sent: list[str] = []
    with (
        serve_asgi(vendor) as vendor_url,
        running_gateway(
            # The vendor's timeout is far away: only the client's hang-up can end a call within the test.
            gateway_settings(
                model, vendor_url, upstream_timeout_s=300, request_timeout_s=300, upstream_model_check_ttl_s=0
            )
        ) as url,
    ):
        address = (httpx.URL(url).host, httpx.URL(url).port or 80)

        @settings(FUZZING, max_examples=12)  # each example waits for a vendor call and a hang-up
        @given(
            path=st.sampled_from(sorted(HANG_UP_ROUTES)), request_id=st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True)
        )
        def run(path: str, request_id: str) -> None:
            arrived = len(vendor.arrived)
            with socket.create_connection(address, timeout=30) as client:
                raw = raw_request(path, **HANG_UP_ROUTES[path]())
                client.sendall(raw.replace(b"\r\n\r\n", f"\r\nX-Request-ID: {request_id}\r\n\r\n".encode(), 1))
                wait_until(lambda: len(vendor.arrived) > arrived, timeout_s=60, what=f"{path}: the call at the vendor")
            sent.append(path)

        run()
        wait_until(
            lambda: len(vendor.hung_up) == len(vendor.arrived) == len(sent),
            timeout_s=60,
            what="every vendor call cancelled",
        )

        def counted(status: str) -> float:
            text = get(f"{url}/metrics").text
            return sum(metric_value(text, "zipgate_requests_total", endpoint=e, status=status) for e in _endpoints())

        wait_until(lambda: counted("499") == len(sent), timeout_s=60, what="every hung-up request counted as 499")
        assert counted("504") == counted("500") == counted("502") == 0


def _endpoints() -> list[str]:
    return ["/predict", "/v1/models/{name}:predict", "/v2/models/{name}/infer"]
