"""Sidecar mode: the vendor's own request formats on the vendor's own paths, purified and relayed.

A client only changes the host name: the gateway reads the images out of the vendor-format
body, purifies them, writes them back in place (all other fields kept; those must be small, and a
second field that could hold images is refused: `service.upstream.side_content`), forwards the request
to the same path (and query) upstream, and relays the vendor's answer unchanged: status, body,
content type and end-to-end headers. Only the gateway's own failures (bad image, queue full,
vendor unreachable) answer in the gateway's JSON error shape. The steps are `service.api.relay`'s;
this module holds the routes and the OpenAPI of their bodies. The TF-Serving and v2 routes also name
a model version, as their protocols do (`/v1/models/{name}/versions/{v}:predict`,
`/v2/models/{name}/versions/{v}/infer`); it is checked like the name, and relayed in the path.

Routing of the raw protocol (the body is the image): `POST {upstream_raw_path}`. When that path
is `/predict` (the default) it is shared with the gateway's own API, and the Content-Type
decides: `image/*` or `application/octet-stream` is the sidecar, multipart or JSON is the API
(see routes_predict.py).

The v2 routes also take the binary tensor data extension (`Inference-Header-Content-Length`):
the images are purified inside it and the header length is rewritten; binary outputs
(`binary_data_output`) come back as the vendor framed them. Before a model-named request is
purified, the vendor is asked (`ModelCatalog`, cached briefly) whether it serves the model, so an
unknown model costs a 404, not a purification. The v2 health and metadata routes are in routes_v2.py.

Paths are checked before anything is read or forwarded (`service.api.relay.check_vendor_path`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it (not typing.TypedDict) before Python 3.12

from service.api.deps import ERROR_RESPONSES, PROTOCOL_ERROR_RESPONSES, ContextDep, GatewayDep
from service.api.openapi_bodies import request_body
from service.api.relay import (
    MODEL_NOT_EXPOSED_RESPONSE,
    RELAYED_RESPONSE,
    relay,
)
from service.api.schemas import EXAMPLE_PNG_B64
from service.upstream import UpstreamProtocol
from service.upstream.v2_binary import INFERENCE_HEADER_LENGTH

# The bodies' types, for the OpenAPI only: the body is read by hand (`relay`) and relayed as it came, so
# these document what the vendor's protocol takes; they validate nothing.


class B64Image(TypedDict):
    """An image in TF-Serving's JSON: the base64 of its encoded bytes under "b64"."""

    b64: str


TFServingInstance = B64Image | Annotated[str, Field(description="the base64 image itself (KServe's v1 form)")]


class TFServingPredictRequest(TypedDict):
    """TF-Serving / Vertex / KServe v1 `:predict`: one instance per image."""

    instances: Annotated[list[TFServingInstance], Field(min_length=1)]


class V2BytesInput(TypedDict):
    """An Open Inference Protocol input of images: BYTES, each element the base64 of an encoded image."""

    name: str
    shape: list[int]
    datatype: Literal["BYTES"]
    data: list[Any]


class V2InferRequest(TypedDict):
    """An Open Inference Protocol v2 inference request in JSON."""

    id: NotRequired[str]
    inputs: Annotated[list[V2BytesInput], Field(min_length=1)]


ImageBody = bytes  # the raw protocol: the body is one encoded image
V2BinaryBody = Annotated[
    bytes,
    Field(
        description=(
            f"The binary tensor data extension: a JSON header of {INFERENCE_HEADER_LENGTH} bytes, then "
            "the raw data of each input with parameters.binary_data_size (BYTES: 4-byte little-endian "
            "length, then the bytes)."
        )
    ),
]


RAW_BODY_OPENAPI = request_body(
    {"image/png": ImageBody, "image/jpeg": ImageBody, "application/octet-stream": ImageBody}
)
TFSERVING_BODY_OPENAPI = request_body(
    {"application/json": TFServingPredictRequest},
    TFServingPredictRequest(instances=[B64Image(b64=EXAMPLE_PNG_B64)]),
)
V2_BODY_OPENAPI = request_body(
    {"application/octet-stream": V2BinaryBody, "application/json": V2InferRequest},
    V2InferRequest(inputs=[V2BytesInput(name="image", shape=[1], datatype="BYTES", data=[EXAMPLE_PNG_B64])]),
)
RAW_RESPONSES: dict[int | str, dict[str, Any]] = {**RELAYED_RESPONSE, **ERROR_RESPONSES}  # the raw path
# /v1/ and /v2/: the protocols' error shape, and a 404 for a model that is not exposed.
MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    **RELAYED_RESPONSE,
    **PROTOCOL_ERROR_RESPONSES,
    **MODEL_NOT_EXPOSED_RESPONSE,
}
INFER_V2_DESCRIPTION = (
    "Open Inference Protocol v2 with a BYTES input of images (base64 in JSON, or the binary "
    "tensor extension): purified, forwarded, relayed."
)


async def tfserving_predict(name: str, request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
    """TF-Serving / Vertex `{"instances": [{"b64": ...}]}` (or KServe's bare base64 strings): purified, forwarded,
    relayed."""
    return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.TFSERVING], ctx)


async def tfserving_predict_version(
    name: str, version: str, request: Request, gateway: GatewayDep, ctx: ContextDep
) -> Response:
    """TF-Serving `:predict` of one model version (`/v1/models/{name}/versions/{version}:predict`): purified,
    forwarded, relayed."""
    return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.TFSERVING], ctx)


async def v2_infer(name: str, request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
    """Open Inference Protocol v2 inference (`INFER_V2_DESCRIPTION`)."""
    return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.V2], ctx)


async def v2_infer_version(name: str, version: str, request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
    """Open Inference Protocol v2 inference of one model version (`INFER_V2_DESCRIPTION`)."""
    return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.V2], ctx)


async def raw_predict(request: Request, gateway: GatewayDep, ctx: ContextDep) -> Response:
    """Raw protocol: the body is one image; purified, forwarded, relayed."""
    return await relay(request, gateway, gateway.sidecars[UpstreamProtocol.RAW], ctx)


def build_sidecar_router(gateway_dependencies: list[Any], raw_path: str | None) -> APIRouter:
    """The sidecar routes: TF-Serving, v2, and (unless it is /predict) the raw path.

    Args:
        gateway_dependencies: route dependencies (the API key check, when configured).
        raw_path: the raw protocol's path, or None when it is /predict (served by routes_predict).

    Returns:
        The router.
    """
    router = APIRouter(tags=["sidecar"], dependencies=gateway_dependencies)
    router.add_api_route(
        "/v1/models/{name}:predict",
        tfserving_predict,
        methods=["POST"],
        responses=MODEL_RESPONSES,
        openapi_extra=TFSERVING_BODY_OPENAPI,
        response_class=Response,
    )
    router.add_api_route(
        "/v1/models/{name}/versions/{version}:predict",
        tfserving_predict_version,
        methods=["POST"],
        responses=MODEL_RESPONSES,
        openapi_extra=TFSERVING_BODY_OPENAPI,
        response_class=Response,
    )
    router.add_api_route(
        "/v2/models/{name}/infer",
        v2_infer,
        methods=["POST"],
        responses=MODEL_RESPONSES,
        openapi_extra=V2_BODY_OPENAPI,
        response_class=Response,
        description=INFER_V2_DESCRIPTION,
    )
    router.add_api_route(
        "/v2/models/{name}/versions/{version}/infer",
        v2_infer_version,
        methods=["POST"],
        responses=MODEL_RESPONSES,
        openapi_extra=V2_BODY_OPENAPI,
        response_class=Response,
        description=INFER_V2_DESCRIPTION,
    )
    if raw_path is not None:
        router.add_api_route(
            raw_path,
            raw_predict,
            methods=["POST"],
            responses=RAW_RESPONSES,
            openapi_extra=RAW_BODY_OPENAPI,
            response_class=Response,
        )
    return router
