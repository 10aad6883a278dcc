"""Sidecar paths reach the vendor only as sent and only for allowed models: dot segments and
encoded characters are refused (400), a model outside `upstream_models` is 404. Raw sockets, since
no well-behaved HTTP client sends such paths verbatim."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import gateway_settings, png_bytes, running_gateway
from tests.raw_http import json_error, raw_post, tfserving_body, v2_body

TRAVERSALS = [
    "/v2/models/../infer",  # httpx turns it into /v2/infer on the way out
    "/v2/models/./infer",  # ... and this into /v2/models/infer
    "/v2/models/%2e%2e/infer",
    "/v2/models/%2E%2E/infer",
    "/v2/models/..%5C/infer",
    "/v2/models/..%5c..%5cadmin/infer",
    "/v2/models/%252e%252e/infer",  # double-encoded: a vendor that decodes twice sees ..
    "/v2/models/fm%6eist/infer",  # encoded, even where it decodes to an allowed name
    "/v2/models/a%20b/infer",
    "/v1/models/..:predict",
    "/v1/models/.:predict",
    "/v1/models/%2e%2e:predict",
    "/v1/models/a%3Ab:predict",
]


@pytest.fixture(scope="module")
def recorder_gateway() -> Iterator[tuple[str, StaticApp]]:
    """A gateway without purification (fast) in front of a recording vendor, models allow-listed."""
    recorder = StaticApp(200, b'{"ok": true}')
    with (
        serve_asgi(recorder) as upstream_url,
        running_gateway(gateway_settings(None, upstream_url, upstream_models="fmnist, resnet-50.v1_2")) as url,
    ):
        yield url, recorder


@pytest.mark.parametrize("path", TRAVERSALS)
def test_a_sidecar_path_with_dot_segments_or_encoded_characters_is_400(
    recorder_gateway: tuple[str, StaticApp], path: str
) -> None:
    url, recorder = recorder_gateway
    recorder.requests.clear()
    body = tfserving_body(png_bytes()) if path.startswith("/v1/") else v2_body(png_bytes())
    status, headers, answer = raw_post(url, path, body)
    assert status == 400, (status, answer)
    assert headers["content-type"] == "application/json"
    assert json_error(answer, path)["code"] == "bad_request"
    assert recorder.requests == []  # nothing reached the vendor


def test_allowed_model_names_reach_the_same_path_upstream(recorder_gateway: tuple[str, StaticApp]) -> None:
    url, recorder = recorder_gateway
    recorder.requests.clear()
    assert raw_post(url, "/v2/models/resnet-50.v1_2/infer?x=1", v2_body(png_bytes()))[0] == 200
    assert raw_post(url, "/v1/models/fmnist:predict", tfserving_body(png_bytes()))[0] == 200
    posts = [r.path for r in recorder.requests if r.method == "POST"]  # the GETs ask whether the model exists
    assert posts == ["/v2/models/resnet-50.v1_2/infer?x=1", "/v1/models/fmnist:predict"]


def test_a_model_outside_upstream_models_is_404(recorder_gateway: tuple[str, StaticApp]) -> None:
    url, recorder = recorder_gateway
    recorder.requests.clear()
    for path, body in (
        ("/v2/models/secret-model/infer", v2_body(png_bytes())),
        ("/v1/models/secret-model:predict", tfserving_body(png_bytes())),
    ):
        status, _, answer = raw_post(url, path, body)
        assert status == 404 and json_error(answer, path)["code"] == "model_not_found", path
    assert recorder.requests == []
