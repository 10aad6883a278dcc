"""Keep-it-fixed fuzzing of every POST route with bad inputs: no 5xx, and every 4xx a JSON error with its id.

One gateway (the tiny ε-model, 2 steps) and the demo vendor serve the whole module. Hypothesis runs
derandomized (a fixed seed), so the same 1,150 requests go out on every run and a failure reproduces.
Purifying valid images is not the point: the inputs are damaged images (truncated, bytes flipped,
a magic number before garbage, headers declaring huge sizes), foreign bytes, wrong content types,
broken multipart, bad base64, JSON of the wrong shape, v2 tensors whose shape lies, empty and
oversized bodies, and bad headers and query parameters. The raw sidecar runs on its own path
(`/invocations`), so `/predict` also gets image bodies as the gateway API.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.gateway_servers import (
    error_details,
    gateway_settings,
    png_header_claiming,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")]

RAW_SIDECAR_PATH = "/invocations"
MAX_IMAGES = 4
MAX_REQUEST_BYTES = 256 * 1024
MAX_IMAGE_BYTES = 128 * 1024
# 1,150 in all, of which about 1,090 differ (hypothesis draws some twice): at least 1,000 are wanted.
EXAMPLES_PER_ROUTE = {"predict": 300, "purify": 250, "tfserving": 200, "v2": 200, "raw": 200}


@dataclass(frozen=True)
class FuzzRequest:
    """One request as sent: path and query, headers (Content-Type among them), raw body."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# ---- images to damage -------------------------------------------------------------------------------


def _encode(mode: str, fmt: str, size: tuple[int, int] = (12, 10), **options: object) -> bytes:
    image = Image.new(mode, size)
    image.putdata(
        [(i * 37) % 251 for i in range(size[0] * size[1])]
        if mode in ("L", "P", "I;16", "F", "1")
        else [tuple((i * k) % 251 for k in (37, 11, 5, 3)[: len(mode)]) for i in range(size[0] * size[1])]
    )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


VALID_IMAGES: tuple[bytes, ...] = (
    _encode("L", "PNG"),
    _encode("RGB", "PNG"),
    _encode("RGBA", "PNG"),
    _encode("P", "PNG"),
    _encode("I;16", "PNG"),
    _encode("1", "PNG"),
    _encode("L", "JPEG"),
    _encode("RGB", "JPEG", progressive=True),
    _encode("CMYK", "JPEG"),
    _encode("P", "GIF"),
    _encode("RGB", "BMP"),
    _encode("RGB", "TIFF"),
    _encode("F", "TIFF"),
    _encode("RGB", "WEBP"),
    _encode("RGBA", "WEBP", lossless=True),
)
MAGIC_NUMBERS = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"%PDF-1.4",
    b"<svg",
    b"PK\x03\x04",
)
DIMENSIONS = (0, 1, 2, 255, 4097, 65_535, 100_000, 2**31 - 1, 2**32 - 1)


def _jpeg_header_claiming(width: int, height: int) -> bytes:
    """SOI, a baseline SOF0 declaring width × height (3 components), EOI: a header and no pixels."""
    sof = struct.pack(">HBHHB", 17, 8, height & 0xFFFF, width & 0xFFFF, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8\xff\xc0" + sof + b"\xff\xd9"


def _gif_header_claiming(width: int, height: int) -> bytes:
    """A GIF whose screen and one frame declare width × height, with an empty pixel stream."""
    size = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    return b"GIF89a" + size + b"\x00\x00\x00" + b"," + b"\x00" * 4 + size + b"\x00" + b"\x02\x00" + b";"


def _bmp_header_claiming(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width & 0x7FFFFFFF, height & 0x7FFFFFFF, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info)) + info + b"\x00" * 16


@st.composite
def _flipped(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def _truncated(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(VALID_IMAGES))
    return data[: draw(st.integers(0, len(data) - 1))]


_huge_header = st.builds(
    lambda make, w, h: make(w, h),
    st.sampled_from([png_header_claiming, _jpeg_header_claiming, _gif_header_claiming, _bmp_header_claiming]),
    st.sampled_from(DIMENSIONS),
    st.sampled_from(DIMENSIONS),
)

damaged_images: st.SearchStrategy[bytes] = st.one_of(
    _truncated(),
    _flipped(),
    _huge_header,
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGIC_NUMBERS), st.binary(max_size=200)),
    st.binary(max_size=300),
    st.just(b""),
    st.builds(lambda image, junk: image + junk, st.sampled_from(VALID_IMAGES), st.binary(min_size=1, max_size=64)),
    st.builds(lambda image: image + b"\x00" * (MAX_IMAGE_BYTES + 1 - len(image)), st.sampled_from(VALID_IMAGES)),
    st.sampled_from(VALID_IMAGES),  # now and then a good one among the bad (a 2xx is fine)
)


# ---- text that should be base64 ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _wrapped(text: str) -> str:
    """Base64 broken into short lines, as some encoders write it."""
    return " \n".join(text[i : i + 8] for i in range(0, len(text), 8))


bad_base64: st.SearchStrategy[str] = st.one_of(
    damaged_images.map(_b64),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9+/]{1,40}={0,3}", fullmatch=True),  # wrong lengths and padding
    damaged_images.map(lambda data: base64.urlsafe_b64encode(data).decode("ascii")),
    damaged_images.map(lambda data: "data:image/png;base64," + _b64(data)),
    damaged_images.map(lambda data: _wrapped(_b64(data))),
    st.sampled_from(["", "=", "====", "\u00e9\u00e9\u00e9\u00e9", "iVBORw0KGgo", "null"]),
)
json_values: st.SearchStrategy[object] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def _json_body(value: object) -> bytes:
    return json.dumps(value).encode()


broken_json: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from(
        [
            b"",
            b"{",
            b"[",
            b'{"images": [',
            b"{'images': []}",
            b'{"images": ["a",]}',
            b"NaN",
            b'{"images": [NaN]}',
            b"\xff\xfe{\x00}\x00",
            b'{"images": "\xff"}',
            b"{}" * 3,
        ]
    ),
    st.binary(max_size=64),
    json_values.map(lambda value: _json_body(value)[:-1] if _json_body(value)[1:] else b"{"),  # cut short
)


# ---- content types, headers, query --------------------------------------------------------------------

WRONG_CONTENT_TYPES = (
    "text/plain",
    "application/xml",
    "application/x-www-form-urlencoded",
    "multipart/mixed",
    "application/json-patch+json",
    "text/html; charset=utf-8",
    "video/mp4",
    "foo",
    "/",
    "image",
    ";;;",
    "application/vnd.api+json; charset=latin-1",
)
IMAGE_CONTENT_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/tiff",
    "image/x-unknown",
    "application/octet-stream",
    "application/x-image",
    "IMAGE/PNG; q=1",
)
headers_extra: st.SearchStrategy[dict[str, str]] = st.fixed_dictionaries(
    {},
    optional={
        "X-Request-Timeout": st.sampled_from(["", "soon", "-1", "0", "nan", "inf", "-inf", "1e999", "0x10", "1 2"]),
        "X-Request-ID": st.one_of(
            st.from_regex(r"[0-9a-f]{8,32}", fullmatch=True), st.sampled_from(["", "a" * 200, "id with spaces", "{}"])
        ),
        "Content-Encoding": st.sampled_from(["gzip", "br", "identity", "x-unknown"]),
        "Accept": st.sampled_from(["application/xml", "*/*", "image/png", ""]),
    },
)
query: st.SearchStrategy[str] = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            "?seed=-1",
            "?seed=abc",
            "?seed=1.5",
            "?seed=99999999999999999999999",
            "?seed=",
            "?include=nothing",
            "?include=degraded&include=what",
            "?seed=1&seed=x",
            "?%zz=1",
        ]
    ),
)


def _with_headers(draw: st.DrawFn, path: str, body: bytes, content_type: str | None) -> FuzzRequest:
    headers = dict(draw(headers_extra))
    if content_type is not None:
        headers["Content-Type"] = content_type
    return FuzzRequest(path=path + draw(query), body=body, headers=headers)


# ---- bodies per route ---------------------------------------------------------------------------------


def _multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str) -> bytes:
    """A multipart/form-data body: (field name, filename or None for a text field, part type, data)."""
    out = b""
    for name, filename, part_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if part_type is not None:
            out += f"Content-Type: {part_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


_multipart_parts = st.lists(
    st.tuples(
        st.sampled_from(["image", "image", "image", "images", "file", ""]),
        st.sampled_from(["x.png", "x.jpg", "", None, "../../etc/passwd"]),
        st.sampled_from(["image/png", "application/octet-stream", "text/plain", None]),
        damaged_images,
    ),
    max_size=MAX_IMAGES + 2,
)
_boundaries = st.from_regex(r"[A-Za-z0-9]{1,30}", fullmatch=True)


@st.composite
def multipart_requests(draw: st.DrawFn, path: str) -> FuzzRequest:
    boundary = draw(_boundaries)
    body = _multipart(draw(_multipart_parts), boundary)
    variant = draw(st.sampled_from(["ok", "ok", "cut", "no-boundary", "other-boundary", "garbage"]))
    content_type = f"multipart/form-data; boundary={boundary}"
    if variant == "cut":
        body = body[: draw(st.integers(0, max(0, len(body) - 1)))]
    elif variant == "no-boundary":
        content_type = "multipart/form-data"
    elif variant == "other-boundary":
        content_type = "multipart/form-data; boundary=not-the-one"
    elif variant == "garbage":
        body = draw(st.binary(max_size=200))
    return _with_headers(draw, path, body, content_type)


@st.composite
def gateway_json_requests(draw: st.DrawFn, path: str) -> FuzzRequest:
    body = draw(
        st.one_of(
            st.lists(bad_base64, min_size=1, max_size=MAX_IMAGES).map(lambda images: _json_body({"images": images})),
            st.lists(bad_base64, min_size=MAX_IMAGES + 1, max_size=MAX_IMAGES + 4).map(
                lambda images: _json_body({"images": images})
            ),
            json_values.map(lambda value: _json_body({"images": value})),
            json_values.map(_json_body),
            st.builds(
                lambda images, extra: _json_body({"images": images, **extra}),
                st.lists(bad_base64, max_size=2),
                st.dictionaries(st.text(min_size=1, max_size=6), json_values, min_size=1, max_size=2),
            ),
            broken_json,
        )
    )
    content_type = draw(
        st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "text/json", "application/problem+json", None]
        )
    )
    return _with_headers(draw, path, body, content_type)


@st.composite
def raw_image_requests(draw: st.DrawFn, path: str) -> FuzzRequest:
    return _with_headers(draw, path, draw(damaged_images), draw(st.sampled_from(IMAGE_CONTENT_TYPES)))


@st.composite
def wrong_type_requests(draw: st.DrawFn, path: str) -> FuzzRequest:
    body = draw(st.one_of(damaged_images, broken_json, st.just(_json_body({"images": [_b64(VALID_IMAGES[0])]}))))
    return _with_headers(draw, path, body, draw(st.sampled_from(WRONG_CONTENT_TYPES + (None, ""))))


@st.composite
def oversized_requests(draw: st.DrawFn, path: str) -> FuzzRequest:
    padding = b"\x00" * (MAX_REQUEST_BYTES + draw(st.integers(1, 4096)))
    content_type = draw(st.sampled_from(["image/png", "application/json", "multipart/form-data; boundary=b"]))
    return _with_headers(draw, path, draw(st.sampled_from(VALID_IMAGES)) + padding, content_type)


def gateway_api_requests(path: str) -> st.SearchStrategy[FuzzRequest]:
    """/predict and /purify: multipart, JSON, an image body, and everything around them."""
    return st.one_of(
        multipart_requests(path),
        gateway_json_requests(path),
        raw_image_requests(path),
        wrong_type_requests(path),
        oversized_requests(path),
    )


model_names = st.one_of(
    st.sampled_from(
        ["fmnist", "fmnist", "other", "..", ".", "a.b", "-", "x" * 300, "%2e%2e", "a%2Fb", "fmnist%00", "%C3%A9"]
    ),
    st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
)


_tf_instance = st.one_of(
    st.builds(lambda text: {"b64": text}, bad_base64),
    json_values,
    st.builds(lambda text: {"b64": text, "extra": 1}, bad_base64),
    st.builds(lambda value: {"b64": value}, json_values),
)
_tf_bodies = st.one_of(
    st.lists(_tf_instance, max_size=MAX_IMAGES + 2).map(lambda items: _json_body({"instances": items})),
    st.lists(_tf_instance, max_size=3).map(lambda items: _json_body({"inputs": items})),
    st.builds(lambda value: _json_body({"instances": value}), json_values),
    st.builds(
        lambda items, name: _json_body({"instances": items, "signature_name": name}),
        st.lists(_tf_instance, min_size=1, max_size=2),
        json_values,
    ),
    json_values.map(_json_body),
    broken_json,
)


@st.composite
def tfserving_requests(draw: st.DrawFn) -> FuzzRequest:
    path = f"/v1/models/{draw(model_names)}:predict"
    body = draw(_tf_bodies)
    content_type = draw(st.sampled_from(["application/json", "application/json", None, "text/plain", "image/png"]))
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(wrong_type_requests(path), raw_image_requests(path), oversized_requests(path)))
    return _with_headers(draw, path, body, content_type)


_v2_tensor = st.fixed_dictionaries(
    {
        "name": st.one_of(st.just("image"), json_values),
        "shape": st.one_of(
            st.lists(st.integers(-2, 6), max_size=3),
            st.sampled_from([[2**31], [2**63], [2**64], [1, 2**40], [1.5], ["1"], [True], None, 3, "1"]),
        ),
        "datatype": st.sampled_from(["BYTES", "BYTES", "FP32", "bytes", "UINT8", None, 7]),
        "data": st.one_of(
            st.lists(bad_base64, max_size=MAX_IMAGES + 2),
            json_values,
            st.lists(st.lists(bad_base64, max_size=2), max_size=2),
            st.lists(st.builds(lambda text: {"b64": text}, bad_base64), max_size=2),
        ),
    },
    optional={"parameters": json_values},
)
_v2_bodies = st.one_of(
    st.lists(_v2_tensor, max_size=3).map(lambda inputs: _json_body({"inputs": inputs})),
    st.builds(
        lambda inputs, request_id, outputs: _json_body({"id": request_id, "inputs": inputs, "outputs": outputs}),
        st.lists(_v2_tensor, min_size=1, max_size=2),
        json_values,
        json_values,
    ),
    st.builds(lambda value: _json_body({"inputs": value}), json_values),
    json_values.map(_json_body),
    broken_json,
)


@st.composite
def v2_requests(draw: st.DrawFn) -> FuzzRequest:
    path = f"/v2/models/{draw(model_names)}/infer"
    body = draw(_v2_bodies)
    if draw(st.integers(0, 9)) == 0:  # the binary tensor extension, which is not supported
        return _with_headers(draw, path, body + draw(damaged_images), "application/octet-stream")
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(wrong_type_requests(path), oversized_requests(path)))
    return _with_headers(draw, path, body, draw(st.sampled_from(["application/json", None, "application/json"])))


def raw_sidecar_requests() -> st.SearchStrategy[FuzzRequest]:
    """The raw protocol's own path: the body is the image."""
    return st.one_of(
        raw_image_requests(RAW_SIDECAR_PATH),
        raw_image_requests(RAW_SIDECAR_PATH),
        wrong_type_requests(RAW_SIDECAR_PATH),
        multipart_requests(RAW_SIDECAR_PATH),
        oversized_requests(RAW_SIDECAR_PATH),
    )


# ---- the gateway and the check ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("models")
    with running_vendor(tiny_vendor_dir(root)) as vendor_url:
        settings_ = gateway_settings(
            tiny_ddpm_dir(root),
            vendor_url,
            max_images_per_request=MAX_IMAGES,
            max_request_bytes=MAX_REQUEST_BYTES,
            max_image_bytes=MAX_IMAGE_BYTES,
            upstream_raw_path=RAW_SIDECAR_PATH,
        )
        with running_gateway(settings_) as url, httpx.Client(base_url=url, timeout=60.0) as http:
            yield http


def check_answer(request: FuzzRequest, response: httpx.Response) -> None:
    """No 5xx; a 4xx is `{"error": {"code", "message", "request_id"}}` naming the id in X-Request-ID."""
    where = f"POST {request.path} {request.headers} body[:80]={request.body[:80]!r}"
    assert response.status_code < 500, f"{response.status_code} for {where}: {response.text[:500]}"
    if response.status_code < 400:
        return
    assert response.headers.get("content-type", "").startswith("application/json"), (where, response.text[:300])
    body = response.json()
    error = error_details(body, request.path)
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), (where, body)
    assert isinstance(error.get("request_id"), str) and error["request_id"], (where, body)
    assert error["request_id"] == response.headers.get("x-request-id"), (where, body, response.headers)
    sent_id = request.headers.get("X-Request-ID", "")
    if sent_id.isalnum() and len(sent_id) <= 128:
        assert error["request_id"] == sent_id, (where, body)


def fuzz(client: httpx.Client, requests: st.SearchStrategy[FuzzRequest], examples: int) -> list[FuzzRequest]:
    """Send `examples` derandomized requests, checking each answer; returns the requests that went out."""
    sent: list[FuzzRequest] = []

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests)
    def run(request: FuzzRequest) -> None:
        response = client.post(request.path, content=request.body, headers=request.headers)
        sent.append(request)
        check_answer(request, response)

    run()
    return sent


ROUTES: dict[str, Callable[[], st.SearchStrategy[FuzzRequest]]] = {
    "predict": lambda: gateway_api_requests("/predict"),
    "purify": lambda: gateway_api_requests("/purify"),
    "tfserving": tfserving_requests,
    "v2": v2_requests,
    "raw": raw_sidecar_requests,
}


def test_a_thousand_bad_inputs_over_every_post_route_get_json_4xx_and_never_5xx(client: httpx.Client) -> None:
    sent = {route: fuzz(client, strategy(), EXAMPLES_PER_ROUTE[route]) for route, strategy in ROUTES.items()}
    for route, requests in sent.items():
        assert len(requests) >= EXAMPLES_PER_ROUTE[route], route  # hypothesis ran them all (none filtered away)
    # At least 1,000 different bad inputs went out, not merely 1,000 requests.
    distinct = {
        (request.path, request.body, tuple(sorted(request.headers.items())))
        for requests in sent.values()
        for request in requests
    }
    assert len(distinct) >= 1000, len(distinct)
