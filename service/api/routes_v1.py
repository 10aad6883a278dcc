"""KServe's v1 health and model-status routes, so its Python client (`InferenceRESTClient` with
protocol "v1") can use the gateway as it would the vendor.

- `GET /`: liveness, as KServe's `ModelServer` serves it: 200 `{"status": "alive"}` when the
  vendor's own `GET /` answers 200 (the gateway being live, as it answers), else 503
  `{"status": "unavailable"}`. No API key, like `/v2/health/live`; being public, it sends the vendor
  none of the caller's headers and asks it at most once per `PROBE_CACHE_TTL_S` (`service.api.probes`).
- `GET /v1/models/{name}[/versions/{v}]`: the model's status (KServe: `{"name", "ready"}`, 503 when
  not ready; TF-Serving: `model_version_status`), relayed from the vendor unchanged after the
  sidecar's path checks (`check_vendor_path`), once the gateway is ready (503 before), behind the
  API key like the v2 metadata routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.deps import PROTOCOL_ERROR_RESPONSES, GatewayDep
from service.api.relay import MODEL_NOT_EXPOSED_RESPONSE, RELAYED_RESPONSE, check_vendor_path, relayed_response
from service.api.routes_health import ProbeRoute
from service.api.routes_v2 import ask_vendor, vendor_says_yes
from service.upstream import UpstreamProtocol

ALIVE = "alive"  # KServe's client reads `status` and compares it, lower-cased, with this
NOT_ALIVE = "unavailable"

_LIVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": '{"status": "alive"}: the gateway and the vendor are live.',
        "content": {"application/json": {}},
    },
    503: {
        "description": '{"status": "unavailable"}: the vendor is not live or cannot be reached.',
        "content": {"application/json": {}},
    },
}


async def v1_live(gateway: GatewayDep) -> JSONResponse:
    """Live (KServe v1): the vendor's `GET /` answers 200 (the gateway is live, as it answers)."""
    live = await vendor_says_yes(gateway, UpstreamProtocol.TFSERVING, "/")
    return JSONResponse({"status": ALIVE if live else NOT_ALIVE}, status_code=200 if live else 503)


async def v1_model_status(name: str, request: Request, gateway: GatewayDep) -> Response:
    """The vendor's status of a model (KServe: `{"name", "ready"}`), relayed once the gateway is ready."""
    check_vendor_path(request, gateway.settings.upstream_models)
    gateway.require_ready()
    return relayed_response(await ask_vendor(request, gateway, UpstreamProtocol.TFSERVING))


async def v1_model_version_status(name: str, version: str, request: Request, gateway: GatewayDep) -> Response:
    """The vendor's status of one model version (TF-Serving), relayed once the gateway is ready."""
    check_vendor_path(request, gateway.settings.upstream_models)
    gateway.require_ready()
    return relayed_response(await ask_vendor(request, gateway, UpstreamProtocol.TFSERVING))


def build_v1_router(gateway_dependencies: list[Any]) -> APIRouter:
    """The v1 liveness route (no API key) and model-status routes (behind `gateway_dependencies`).

    Args:
        gateway_dependencies: route dependencies of the model-status routes (the API key check, if any).

    Returns:
        The router.
    """
    router = APIRouter(tags=["sidecar"])
    router.add_api_route(
        "/",
        v1_live,
        methods=["GET"],
        responses=_LIVE_RESPONSES,
        response_class=JSONResponse,
        route_class_override=ProbeRoute,  # HEAD too, as load balancers probe
    )
    status = APIRouter(tags=["sidecar"], dependencies=gateway_dependencies)
    relayed = {**RELAYED_RESPONSE, **PROTOCOL_ERROR_RESPONSES, **MODEL_NOT_EXPOSED_RESPONSE}
    status.add_api_route(
        "/v1/models/{name}", v1_model_status, methods=["GET"], responses=relayed, response_class=Response
    )
    status.add_api_route(
        "/v1/models/{name}/versions/{version}",
        v1_model_version_status,
        methods=["GET"],
        responses=relayed,
        response_class=Response,
    )
    router.include_router(status)
    return router
