"""Sidecar mode: the vendor's own request formats on the vendor's own paths, purified and relayed.

A client only changes the host name: the gateway reads the images out of the vendor-format
body, purifies them, writes them back in place (all other fields kept; those must be small, and a
second field that could hold images is refused: `service.upstream.side_content`), forwards the request
to the same path (and query) upstream, and relays the vendor's answer unchanged: status, body,
content type and end-to-end headers. Only the gateway's own failures (bad image, queue full,
vendor unreachable) answer in the gateway's JSON error shape.

Routing of the raw protocol (the body is the image): `POST {upstream_raw_path}`. When that path
is `/predict` (the default) it is shared with the gateway's own API, and the Content-Type
decides: `image/*` or `application/octet-stream` is the sidecar, multipart or JSON is the API
(see routes_predict.py).

The v2 routes also take the binary tensor data extension (`Inference-Header-Content-Length`):
the images are purified inside it and the header length is rewritten; binary outputs
(`binary_data_output`) come back as the vendor framed them. Before a model-named request is
purified, the vendor is asked (`ModelCatalog`, cached briefly) whether it serves the model, so an
unknown model costs a 404, not a purification. The v2 health and metadata routes are in routes_v2.py.

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

from service.api.deps import ERROR_RESPONSES, PROTOCOL_ERROR_RESPONSES, ContextDep, GatewayDep
from service.api.gateway import Gateway
from service.api.inputs import check_image_count
from service.api.schemas import EXAMPLE_PNG_B64, ProtocolErrorResponse
from service.api.security import STRENGTH_HEADER, headers_for_vendor
from service.api.stages import RequestContext
from service.config import model_name_problem
from service.errors import BadRequest, InvalidShape, ModelNotFound
from service.purify.strength import Strength
from service.upstream import RelayedResponse, Upstream, UpstreamProtocol, VendorBody
from service.upstream.catalog import ModelRef
from service.upstream.v2_binary import INFERENCE_HEADER_LENGTH

RAW_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
TFSERVING_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {
                        "instances": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "oneOf": [
                                    {"type": "object", "required": ["b64"], "properties": {"b64": {"type": "string"}}},
                                    {"type": "string", "description": "the base64 image itself (KServe's v1 form)"},
                                ]
                            },
                        }
                    },
                },
                "example": {"instances": [{"b64": EXAMPLE_PNG_B64}]},
            }
        },
    }
}
V2_BODY_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": (
                        f"The binary tensor data extension: a JSON header of {INFERENCE_HEADER_LENGTH} bytes, then "
                        "the raw data of each input with parameters.binary_data_size (BYTES: 4-byte little-endian "
                        "length, then the bytes)."
                    ),
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype", "data"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string", "enum": ["BYTES"]},
                                    "data": {"type": "array"},
                                },
                            },
                        },
                    },
                },
                "example": {
                    "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [EXAMPLE_PNG_B64]}]
                },
            },
        },
    }
}
RELAYED_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The vendor's response, relayed unchanged (any status, body and type).",
        "content": {"application/json": {}},
    },
    # The vendor's statuses are its own (e.g. 404 for an unknown model name): OpenAPI's catch-all.
    "default": {
        "description": "Any other status the vendor answers, relayed unchanged with its body and type; "
        "the statuses listed are the gateway's own errors (JSON ErrorResponse; on /v1/ and /v2/ paths "
        "ProtocolErrorResponse)."
    },
}

# Only the routes with a model name in the path answer it (ModelNotFound); the raw path has none.
MODEL_NOT_EXPOSED_RESPONSE: dict[int | str, dict[str, Any]] = {
    404: {"model": ProtocolErrorResponse, "description": "A model outside UPSTREAM_MODELS."}
}


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
        raise BadRequest(
            "the path holds percent-encoded characters; send the model name as plain letters, digits, '_', '.' and '-'"
        )
    for parameter, value in request.path_params.items():
        if problem := model_name_problem(str(value)):
            raise BadRequest(f"model {parameter} in the path: {problem}")
    name = request.path_params.get("name")
    if exposed_models and name is not None and name not in exposed_models:
        raise ModelNotFound(f"model {name!r} is not exposed by this gateway (upstream_models)")


def vendor_path(request: Request) -> str:
    """The path and query as the client sent them (still percent-encoded), for the same path upstream."""
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string", b"")
    return raw_path.decode("latin-1") + (f"?{query.decode('latin-1')}" if query else "")


def relayed_response(relayed: RelayedResponse) -> Response:
    """The vendor's answer as the gateway's response: status, body and end-to-end headers unchanged."""
    response = Response(content=relayed.body, status_code=relayed.status_code)
    # raw_headers, not a dict: the vendor's repeated headers (e.g. Set-Cookie) must survive.
    response.raw_headers = [(b"content-length", str(len(relayed.body)).encode())] + [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in relayed.headers
    ]
    return response


def model_ref(request: Request, protocol: UpstreamProtocol) -> ModelRef | None:
    """The model a sidecar path names (None for the raw path, which names none)."""
    name = request.path_params.get("name")
    version = request.path_params.get("version")
    return None if name is None else ModelRef(protocol, str(name), None if version is None else str(version))


def headers_for_question(headers: dict[str, str]) -> dict[str, str]:
    """The client's vendor headers for a GET: without those that describe the request's body."""
    return {
        name: value
        for name, value in headers.items()
        if not name.lower().startswith("content-") and name.lower() != INFERENCE_HEADER_LENGTH.lower()
    }


def sidecar_strength(request: Request) -> Strength | None:
    """The strength a sidecar request asks for in X-Zipgate-Strength (None: the gateway's default).

    The same rule as `?strength=`: one of the presets' names exactly, in lower case ("STRICT" is
    refused by both, with the same 422).

    Raises:
        InvalidShape: a value that names no preset (422, as `?strength=` answers).
    """
    value = request.headers.get(STRENGTH_HEADER)
    if value is None:
        return None
    try:
        return Strength(value)
    except ValueError:
        known = ", ".join(s.value for s in Strength)
        raise InvalidShape(
            f"{STRENGTH_HEADER}: {value[:64]!r} is not a strength; use one of {known} (lower case, as ?strength=)"
        ) from None


async def relay(request: Request, gateway: Gateway, adapter: Upstream, ctx: RequestContext) -> Response:
    """Purify the images inside a vendor-format request and relay it to the same path upstream.

    Raises:
        BadRequest: the path (see `check_vendor_path`), the body (its binary framing too) or an image in it.
        ModelNotFound: a model outside `upstream_models`, or one the vendor says it does not serve.
        InvalidShape, UnsupportedMediaType, PayloadTooLarge: the body or an image in it.
        NotReady, Overloaded, DeadlineExceeded, PurificationFailed: from purification.
        UpstreamTimeout, UpstreamError: the vendor could not be reached or timed out.
        ClientDisconnected: the client hung up while the vendor was asked or called.
    """
    check_vendor_path(request, gateway.settings.upstream_models)
    gateway.require_ready()
    choice = gateway.strength_choice(sidecar_strength(request), single=True)
    headers = headers_for_vendor(request.headers, gateway.settings.api_key)
    body = VendorBody.from_headers(await request.body(), request.headers)
    blobs = adapter.extract_images(body)
    check_image_count(len(blobs), gateway.settings.max_images_per_request)
    # After the cheap checks of the body (a malformed one costs the vendor nothing), before purification.
    if (model := model_ref(request, adapter.protocol)) is not None:
        await gateway.require_model(adapter, model, headers_for_question(headers), ctx)
    # The strength's knobs (X-Zipgate-Strength, else the configured default), purified once: a relayed
    # call has one answer, so nothing to vote on.
    prepared = await gateway.prepare(blobs, ctx, choice)
    if prepared.steps is not None:  # purification off: the body and its headers go as they came
        body = adapter.replace_images(body, prepared.blobs, image_content_type=prepared.content_type)
        headers = body.reframe(headers)
    relayed = await gateway.forward(adapter, vendor_path(request), body.content, headers, None, ctx)
    return relayed_response(relayed)


def build_sidecar_router(gateway_dependencies: list[Any], raw_path: str | None) -> APIRouter:
    """The sidecar routes: TF-Serving, v2, and (unless it is /predict) the raw path.

    Args:
        gateway_dependencies: route dependencies (the API key check, when configured).
        raw_path: the raw protocol's path, or None when it is /predict (served by routes_predict).

    Returns:
        The router.
    """
    router = APIRouter(tags=["sidecar"], dependencies=gateway_dependencies)
    infer_v2_doc = (
        "Open Inference Protocol v2 with a BYTES input of images (base64 in JSON, or the binary "
        "tensor extension): purified, forwarded, relayed."
    )

    responses: dict[int | str, dict[str, Any]] = {**RELAYED_RESPONSE, **ERROR_RESPONSES}  # the raw path
    model_responses = {**RELAYED_RESPONSE, **PROTOCOL_ERROR_RESPONSES, **MODEL_NOT_EXPOSED_RESPONSE}  # /v1/, /v2/

    @router.post(
        "/v1/models/{name}:predict",
        responses=model_responses,
        openapi_extra=TFSERVING_BODY_OPENAPI,
        response_class=Response,
    )
    async def tfserving_predict(name: str, request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
        """TF-Serving / Vertex `{"instances": [{"b64": ...}]}` (or KServe's bare base64 strings): purified, forwarded,
        relayed."""
        return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.TFSERVING], ctx)

    @router.post(
        "/v2/models/{name}/infer",
        responses=model_responses,
        openapi_extra=V2_BODY_OPENAPI,
        response_class=Response,
        description=infer_v2_doc,
    )
    async def v2_infer(name: str, request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
        return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.V2], ctx)

    @router.post(
        "/v2/models/{name}/versions/{version}/infer",
        responses=model_responses,
        openapi_extra=V2_BODY_OPENAPI,
        response_class=Response,
        description=infer_v2_doc,
    )
    async def v2_infer_version(
        name: str, version: str, request: Request, gateway: GatewayDep, ctx: ContextDep
    ) -> Response:
        return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.V2], ctx)

    if raw_path is not None:

        @router.post(raw_path, responses=responses, openapi_extra=RAW_BODY_OPENAPI, response_class=Response)
        async def raw_predict(request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
            """Raw protocol: the body is one image; purified, forwarded, relayed."""
            return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.RAW], ctx)

    return router
