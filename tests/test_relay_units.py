"""Units of the sidecar's shared steps (service.api.relay) and of the sidecar and v2 routes as plain
module-level handlers: registered by their builders, callable without an app, bodies documented from types."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from fastapi.routing import APIRoute
from starlette.requests import Request

from service.api import relay as relay_module
from service.api import routes_sidecar, routes_v2
from service.api.openapi_bodies import inline_json_schema
from service.api.routes_sidecar import (
    RAW_BODY_OPENAPI,
    TFSERVING_BODY_OPENAPI,
    V2_BODY_OPENAPI,
    build_sidecar_router,
)
from service.api.routes_v2 import build_v2_router
from service.errors import BadRequest, InvalidShape, ModelNotFound
from service.purify.strength import Strength
from service.upstream import RelayedResponse, UpstreamProtocol


def _request(
    path: str, path_params: dict[str, str] | None = None, query: bytes = b"", headers: dict[str, str] | None = None
) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()],
        "path_params": path_params or {},
    }
    return Request(scope)


def _endpoints(routes: list[Any]) -> dict[str, Any]:
    return {route.path: route.endpoint for route in routes if isinstance(route, APIRoute)}


def test_the_sidecar_routes_are_the_module_level_handlers() -> None:
    assert _endpoints(build_sidecar_router([], "/invocations").routes) == {
        "/v1/models/{name}:predict": routes_sidecar.tfserving_predict,
        "/v1/models/{name}/versions/{version}:predict": routes_sidecar.tfserving_predict_version,
        "/v2/models/{name}/infer": routes_sidecar.v2_infer,
        "/v2/models/{name}/versions/{version}/infer": routes_sidecar.v2_infer_version,
        "/invocations": routes_sidecar.raw_predict,
    }
    assert "/predict" not in _endpoints(build_sidecar_router([], None).routes)  # /predict is routes_predict's


def test_the_v2_routes_are_the_module_level_handlers() -> None:
    assert _endpoints(build_v2_router([]).routes) == {
        "/v2/health/live": routes_v2.v2_live,
        "/v2/health/ready": routes_v2.v2_ready,
        "/v2": routes_v2.v2_server_metadata,
        "/v2/models/{name}": routes_v2.v2_model_metadata,
        "/v2/models/{name}/versions/{version}": routes_v2.v2_model_version_metadata,
        "/v2/models/{name}/ready": routes_v2.v2_model_ready,
        "/v2/models/{name}/versions/{version}/ready": routes_v2.v2_model_version_ready,
    }


async def test_v2_health_handlers_answer_without_an_app() -> None:
    asked: list[str] = []

    async def says_ok(adapter: object, path: str, request_id: str | None) -> bool:
        asked.append(path)
        return True

    gateway: Any = SimpleNamespace(ready=False, probes=SimpleNamespace(says_ok=says_ok), sidecars={})
    gateway.sidecars[UpstreamProtocol.V2] = object()
    not_ready = await routes_v2.v2_ready(gateway)
    assert (not_ready.status_code, json.loads(not_ready.body)) == (503, {"ready": False})
    assert asked == []  # a gateway that is not ready does not ask the vendor
    live = await routes_v2.v2_live(gateway)
    assert (live.status_code, json.loads(live.body)) == (200, {"live": True})
    gateway.ready = True
    ready = await routes_v2.v2_ready(gateway)
    assert (ready.status_code, json.loads(ready.body)) == (200, {"ready": True})
    assert asked == ["/v2/health/live", "/v2/health/ready"]


@pytest.mark.parametrize(
    ("openapi", "media_type"),
    [
        (TFSERVING_BODY_OPENAPI, "application/json"),
        (V2_BODY_OPENAPI, "application/json"),
    ],
)
def test_the_documented_json_bodies_are_self_contained_and_hold_their_example(
    openapi: dict[str, Any], media_type: str
) -> None:
    media = openapi["requestBody"]["content"][media_type]
    assert "$ref" not in json.dumps(media) and "$defs" not in json.dumps(media)  # nothing points outside
    jsonschema.validate(media["example"], media["schema"])
    first_field = media["schema"]["required"][-1]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({first_field: []}, media["schema"])  # at least one image


def test_the_tfserving_body_takes_b64_objects_or_bare_strings() -> None:
    schema = TFSERVING_BODY_OPENAPI["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.validate({"instances": [{"b64": "AA=="}, "AA=="]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"instances": [{"image": "AA=="}]}, schema)


def test_binary_bodies_are_documented_as_binary() -> None:
    assert inline_json_schema(bytes) == {"type": "string", "format": "binary"}
    assert set(RAW_BODY_OPENAPI["requestBody"]["content"]) == {"image/png", "image/jpeg", "application/octet-stream"}
    v2_binary = V2_BODY_OPENAPI["requestBody"]["content"]["application/octet-stream"]["schema"]
    assert v2_binary["format"] == "binary" and "Inference-Header-Content-Length" in v2_binary["description"]


def test_check_vendor_path() -> None:
    relay_module.check_vendor_path(_request("/v2/models/m/infer", {"name": "m"}), ())
    relay_module.check_vendor_path(_request("/v2/models/m/infer", {"name": "m"}), ("m",))
    with pytest.raises(BadRequest, match="percent-encoded"):
        relay_module.check_vendor_path(_request("/v2/models/%2e%2e/infer", {"name": ".."}), ())
    with pytest.raises(BadRequest, match="model name in the path"):
        relay_module.check_vendor_path(_request("/v2/models/../infer", {"name": ".."}), ())
    with pytest.raises(ModelNotFound, match="'other'"):
        relay_module.check_vendor_path(_request("/v2/models/other/infer", {"name": "other"}), ("m",))
    relay_module.check_vendor_path(_request("/invocations"), ("m",))  # the raw path names no model


def test_vendor_path_model_ref_and_question_headers() -> None:
    assert relay_module.vendor_path(_request("/v1/models/m:predict", query=b"a=1&b=%20")) == (
        "/v1/models/m:predict?a=1&b=%20"
    )
    assert relay_module.vendor_path(_request("/invocations")) == "/invocations"
    ref = relay_module.model_ref(_request("/x", {"name": "m", "version": "3"}), UpstreamProtocol.V2)
    assert ref is not None and (ref.name, ref.version) == ("m", "3")
    assert relay_module.model_ref(_request("/invocations"), UpstreamProtocol.RAW) is None
    headers = {"Authorization": "k", "Content-Type": "x", "Inference-Header-Content-Length": "9", "X-Other": "1"}
    assert relay_module.headers_for_question(headers) == {"Authorization": "k", "X-Other": "1"}


def test_sidecar_strength() -> None:
    assert relay_module.sidecar_strength(_request("/x")) is None
    assert relay_module.sidecar_strength(_request("/x", headers={"X-Zipgate-Strength": "strict"})) is Strength.STRICT
    with pytest.raises(InvalidShape, match="not a strength"):
        relay_module.sidecar_strength(_request("/x", headers={"X-Zipgate-Strength": "STRICT"}))


def test_relayed_response_keeps_status_body_and_repeated_headers() -> None:
    relayed = RelayedResponse(
        status_code=418,
        body=b'{"a": 1}',
        content_type="application/json",
        headers=(("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")),
    )
    response = relay_module.relayed_response(relayed)
    assert response.status_code == 418 and response.body == b'{"a": 1}'
    assert response.raw_headers == [
        (b"content-length", b"8"),
        (b"content-type", b"application/json"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
