"""Sidecar mode: the vendor's own request formats on the vendor's own paths, purified and relayed.

A client only changes the host name: the gateway reads the images out of the vendor-format
body, purifies them, writes them back in place (all other fields kept), forwards the request
to the same path (and query) upstream, and relays the vendor's answer unchanged: status, body,
content type and end-to-end headers. Only the gateway's own failures (bad image, queue full,
vendor unreachable) answer in the gateway's JSON error shape.

Routing of the raw protocol (the body is the image): `POST {upstream_raw_path}`. When that path
is `/predict` (the default) it is shared with the gateway's own API, and the Content-Type
decides: `image/*` or `application/octet-stream` is the sidecar, multipart or JSON is the API
(see routes_predict.py).

Paths are checked before anything is read or forwarded: the vendor gets the path as the client
sent it, so a model name must be a plain name (`config.MODEL_NAME_PATTERN`), neither a dot
segment that httpx or the vendor resolves into another path (`/v2/models/../infer` is `/v2/infer`)
nor percent-encoded (`%2e%2e`, `..%5C`, `%252e%252e` decode into those at some hop); and with
`upstream_models` set, only those models are exposed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.deps import ERROR_RESPONSES, ContextDep, GatewayDep
from service.api.gateway import Gateway, RequestContext
from service.api.schemas import EXAMPLE_PNG_B64, ErrorResponse
from service.api.security import headers_for_vendor
from service.config import model_name_problem
from service.errors import BadRequest, ModelNotFound, PayloadTooLarge
from service.upstream import Upstream, UpstreamProtocol

RAW_BODY_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
}}}
TFSERVING_BODY_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["instances"], "properties": {"instances": {
        "type": "array", "minItems": 1,
        "items": {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string"}}}}}},
    "example": {"instances": [{"b64": EXAMPLE_PNG_B64}]},
}}}}
V2_BODY_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
                "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string", "enum": ["BYTES"]}, "data": {"type": "array"}}}}}},
    "example": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [EXAMPLE_PNG_B64]}]},
}}}}
RELAYED_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "The vendor's response, relayed unchanged (any status, body and type).",
          "content": {"application/json": {}}},
    # The vendor's statuses are its own (e.g. 404 for an unknown model name): OpenAPI's catch-all.
    "default": {"description": "Any other status the vendor answers, relayed unchanged with its body and type; "
                               "the statuses listed are the gateway's own errors (JSON ErrorResponse)."},
}

# Only the routes with a model name in the path answer it (ModelNotFound); the raw path has none.
MODEL_NOT_EXPOSED_RESPONSE: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "A model outside UPSTREAM_MODELS."}}


def check_vendor_path(request: Request, exposed_models: tuple[str, ...]) -> None:
    """Refuse a sidecar path that could reach another vendor path, or a model that is not exposed.

    Args:
        request: the sidecar request; its path parameters (model name, version) are checked.
        exposed_models: `upstream_models`; empty exposes every model.

    Raises:
        BadRequest: percent-encoding anywhere in the path, or a path parameter that is not a plain name.
        ModelNotFound: `exposed_models` is set and the model is not in it.
    """
    raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
    if b"%" in raw_path:
        raise BadRequest("the path holds percent-encoded characters; send the model name as plain "
                         "letters, digits, '_', '.' and '-'")
    for parameter, value in request.path_params.items():
        if problem := model_name_problem(str(value)):
            raise BadRequest(f"model {parameter} in the path: {problem}")
    name = request.path_params.get("name")
    if exposed_models and name is not None and name not in exposed_models:
        raise ModelNotFound(f"model {name!r} is not exposed by this gateway (upstream_models)")


async def relay(request: Request, gateway: Gateway, adapter: Upstream, ctx: RequestContext) -> Response:
    """Purify the images inside a vendor-format request and relay it to the same path upstream.

    Raises:
        BadRequest: the path (see `check_vendor_path`), the body or an image in it.
        ModelNotFound: a model outside `upstream_models`.
        InvalidShape, UnsupportedMediaType, PayloadTooLarge: the body or an image in it.
        NotReady, Overloaded, DeadlineExceeded, PurificationFailed: from purification.
        UpstreamTimeout, UpstreamError: the vendor could not be reached or timed out.
    """
    check_vendor_path(request, gateway.settings.upstream_models)
    gateway.require_ready()
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    blobs = adapter.extract_images(body, content_type)
    limit = gateway.settings.max_images_per_request
    if len(blobs) > limit:
        raise PayloadTooLarge(f"{len(blobs)} images in one request; the limit is {limit} (max_images_per_request)")
    prepared = await gateway.prepare(blobs, ctx)
    forwarded_type: str | None = None  # purification off: the body and its type go as they came
    if prepared.steps is not None:
        body, forwarded_type = adapter.replace_images(body, content_type, prepared.blobs,
                                                      image_content_type=prepared.content_type)
    # The raw path as sent (still percent-encoded), so the vendor sees exactly the client's path.
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    path = raw_path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")
    relayed = await gateway.forward(adapter, path, body, headers_for_vendor(request.headers, gateway.settings.api_key),
                                    forwarded_type, ctx)
    response = Response(content=relayed.body, status_code=relayed.status_code)
    # raw_headers, not a dict: the vendor's repeated headers (e.g. Set-Cookie) must survive.
    response.raw_headers = [(b"content-length", str(len(relayed.body)).encode())] + [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in relayed.headers]
    return response


def build_sidecar_router(gateway_dependencies: list[Any], raw_path: str | None) -> APIRouter:
    """The sidecar routes: TF-Serving, v2, and (unless it is /predict) the raw path.

    Args:
        gateway_dependencies: route dependencies (the API key check, when configured).
        raw_path: the raw protocol's path, or None when it is /predict (served by routes_predict).

    Returns:
        The router.
    """
    router = APIRouter(tags=["sidecar"], dependencies=gateway_dependencies)

    responses: dict[int | str, dict[str, Any]] = {**RELAYED_RESPONSE, **ERROR_RESPONSES}
    model_responses = {**responses, **MODEL_NOT_EXPOSED_RESPONSE}

    @router.post("/v1/models/{name}:predict", responses=model_responses, openapi_extra=TFSERVING_BODY_OPENAPI,
                 response_class=Response)
    async def tfserving_predict(name: str, request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
        """TF-Serving / Vertex `{"instances": [{"b64": ...}]}`: purified, forwarded, relayed."""
        return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.TFSERVING], ctx)

    @router.post("/v2/models/{name}/infer", responses=model_responses, openapi_extra=V2_BODY_OPENAPI,
                 response_class=Response)
    async def v2_infer(name: str, request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
        """Open Inference Protocol v2 with a BYTES input of base64 images: purified, forwarded, relayed."""
        return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.V2], ctx)

    if raw_path is not None:
        @router.post(raw_path, responses=responses, openapi_extra=RAW_BODY_OPENAPI, response_class=Response)
        async def raw_predict(request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
            """Raw protocol: the body is one image; purified, forwarded, relayed."""
            return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.RAW], ctx)

    return router
