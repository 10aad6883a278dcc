"""The sidecar's shared steps: check a vendor path, purify the images in a vendor-format body, relay.

`relay` is the whole of a sidecar request (routes_sidecar.py's routes, and an image body on
`/predict` when the raw protocol's path is /predict: routes_predict.py); the helpers are also used
by the routes that only relay a vendor's answer (the v1 and v2 health and metadata routes).

Paths are checked before anything is read or forwarded: the vendor gets the path as the client
sent it, so a model name must be a plain name (`http_paths.MODEL_NAME_PATTERN`), neither a dot
segment that httpx or the vendor resolves into another path (`/v2/models/../infer` is `/v2/infer`)
nor percent-encoded (`%2e%2e`, `..%5C`, `%252e%252e` decode into those at some hop); and with
`upstream_models` set, only those models are exposed.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response

from service.api.gateway import Gateway
from service.api.inputs import check_image_count
from service.api.schemas import ProtocolErrorResponse, RelayedBody
from service.api.security import STRENGTH_HEADER, headers_for_vendor
from service.api.stages import RequestContext
from service.errors import BadRequest, InvalidShape, ModelNotFound
from service.http_paths import model_name_problem
from service.purify.strength import Strength
from service.upstream import RelayedResponse, Upstream, UpstreamProtocol, VendorBody
from service.upstream.catalog import ModelRef
from service.upstream.v2_binary import INFERENCE_HEADER_LENGTH

# The OpenAPI `responses` of a relaying route: whatever the vendor answers.
RELAYED_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "model": RelayedBody,
        "description": "The vendor's response, relayed unchanged (any status, body and type).",
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
    choice = gateway.policy.choose(sidecar_strength(request), single=True)
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
