"""Probes and scrapes: `GET /healthz`, `GET /readyz`, `GET /metrics` (no API key, also while draining).

Every probe route answers HEAD as well (`ProbeRoute`): load balancers and `curl -I` probe with it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from service.api.deps import GatewayDep
from service.api.schemas import HealthResponse, Readiness, ReadyResponse
from service.metrics import GatewayMetrics

PROBE_METHODS = frozenset({"GET", "HEAD"})


class ProbeRoute(APIRoute):
    """A GET route that answers HEAD too: the GET's status and headers, without the body (uvicorn sends none
    for a HEAD). The OpenAPI lists the GET only: HEAD is the same operation, and two would share an
    operation id. A 405 lists both methods in Allow."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is Match.PARTIAL and scope.get("method") == "HEAD":
            match = Match.FULL  # the path matched; only the method (HEAD, not GET) did not
        return match, child_scope

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in PROBE_METHODS:
            raise HTTPException(405, headers={"Allow": ", ".join(sorted(PROBE_METHODS))})
        await self.app(scope, receive, send)


async def healthz() -> HealthResponse:
    """Liveness: the process serves HTTP (also while starting and draining)."""
    return HealthResponse()


async def readyz(gateway: GatewayDep) -> JSONResponse:
    """Readiness: 200 once the model is loaded and the workers run; 503 while starting, draining or failed."""
    ready = gateway.ready
    status = gateway.lifecycle.state
    if not ready and status is Readiness.READY:
        status = Readiness.FAILED  # started fine, but a worker died since
    body = ReadyResponse(
        status=status,
        detail="" if ready else gateway.not_ready_reason(),
        purification_enabled=gateway.pool is not None,
        queue_depth=gateway.pool.queue_depth if gateway.pool is not None else 0,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics of this process (see the README for each metric)."""
    metrics: GatewayMetrics = request.app.state.metrics  # the app's own registry, there before the lifespan
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def build_health_router() -> APIRouter:
    """The probe routes; `/metrics` reads the registry the app holds in `app.state.metrics`."""
    router = APIRouter(tags=["operations"], route_class=ProbeRoute)
    router.add_api_route("/healthz", healthz, methods=["GET"], response_model=HealthResponse)
    router.add_api_route(
        "/readyz", readyz, methods=["GET"], response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}
    )
    router.add_api_route(
        "/metrics",
        prometheus_metrics,
        methods=["GET"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}},
    )
    return router
