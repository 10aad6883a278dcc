"""`create_app(settings)`: the FastAPI gateway, its middleware, routes, and the one lifespan.

The lifespan opens the shared httpx client and the worker pool and closes both. The pool loads
its models in the background, so `/healthz` answers at once and `/readyz` turns 200 when the
workers run; on shutdown `/readyz` turns 503, queued work drains, then everything closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import torch
from fastapi import Depends, FastAPI

from service import __version__
from service.api.errors import install_error_handlers
from service.api.gateway import Gateway
from service.api.lifecycle import Lifecycle
from service.api.middleware import GatewayMiddleware
from service.api.routes_alerts import build_alerts_router
from service.api.routes_docs import mount_docs
from service.api.routes_health import build_health_router
from service.api.routes_predict import RAW_SIDECAR_ON_PREDICT, build_predict_router
from service.api.routes_sidecar import build_sidecar_router
from service.api.routes_targets import build_targets_router
from service.api.routes_v1 import build_v1_router
from service.api.routes_v2 import build_v2_router
from service.api.security import api_key_dependency
from service.api.stages import EngineInfo
from service.config import ConfigError, Settings
from service.metrics import GatewayMetrics
from service.paths import missing_model_hint
from service.ui.routes import mount_ui
from service.upstream import RetryPolicy, Upstream, UpstreamProtocol, build_upstream, make_http_client
from service.workers import PoolConfig, PurifierFactory, WorkerPool, resolve_devices, zip_purifier_factory

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Purifies every image with ZIP (zero-shot diffusion purification) before a black-box vendor model
sees it. `POST /predict` returns the vendor's predictions; `POST /purify` returns the purified
images; the vendor's own paths (`/v1/models/{name}:predict`, `/v2/models/{name}/infer`, and the
raw image path) work as a drop-in sidecar. Every error is `{"error": {"code", "message", "request_id"}}`.
"""


def create_app(
    settings: Settings, *, purifier_factory: PurifierFactory | None = None, metrics: GatewayMetrics | None = None
) -> FastAPI:
    """Build the gateway app for `settings`.

    Args:
        settings: the validated settings.
        purifier_factory: device → purifier; default ZIP with `settings.model_path` (tests inject fakes).
        metrics: collectors to record into (default: a fresh registry for this app).

    Returns:
        The FastAPI app; nothing is opened until its lifespan starts.

    Raises:
        ConfigError: the devices spec is invalid, or the model path does not exist.
    """
    metrics = metrics or GatewayMetrics()
    lifecycle = Lifecycle()
    pool_setup: tuple[PoolConfig, PurifierFactory] | None = None  # None: purification is off
    if settings.purification_enabled:
        pool_setup = (_pool_config(settings), purifier_factory or _zip_factory(settings))
    # FastAPI's own API pages load their scripts from a CDN: off, and routes_docs serves them from the package,
    # public or behind the key (none when private without a key).
    app = FastAPI(
        title="zipgate",
        version=__version__,
        description=DESCRIPTION,
        lifespan=functools.partial(
            _lifespan, settings=settings, metrics=metrics, lifecycle=lifecycle, pool_setup=pool_setup
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # No 307 to the path with (or without) a trailing slash: an empty-bodied redirect of a POST that many
        # clients do not follow. The 404 names the route instead (api/errors.py, `missing_route_message`).
        redirect_slashes=False,
    )
    app.state.lifecycle = lifecycle  # for the server's signal handler (drain before uvicorn stops)
    app.state.metrics = metrics  # /metrics reads it, also before the lifespan has built the gateway
    install_error_handlers(app)
    _mount_routes(app, settings)
    app.add_middleware(
        GatewayMiddleware,
        metrics=metrics,
        lifecycle=lifecycle,
        max_request_bytes=settings.max_request_bytes,
        body_read_timeout_s=settings.body_read_timeout_s,
    )
    return app


@asynccontextmanager
async def _lifespan(
    app: FastAPI,
    *,
    settings: Settings,
    metrics: GatewayMetrics,
    lifecycle: Lifecycle,
    pool_setup: tuple[PoolConfig, PurifierFactory] | None,
) -> AsyncIterator[dict[str, Any]]:
    """Open the vendor client and the pool, serve, then drain and close them (the one lifespan)."""
    torch.set_num_threads(settings.torch_threads)  # process-wide, so here and not per worker
    client = make_http_client(
        settings.upstream_connect_timeout_s, settings.upstream_timeout_s, settings.upstream_max_connections
    )
    pool = None if pool_setup is None else WorkerPool(*pool_setup, metrics)
    # The peers' own client: a peer that hangs never takes a connection the vendor calls need.
    peer_client = _peer_client(settings) if settings.target_peers else None
    starting: asyncio.Task[None] | None = None
    gateway: Gateway | None = None
    try:
        gateway = Gateway(
            settings,
            metrics,
            lifecycle,
            pool,
            _upstream(settings, client, settings.upstream_protocol),
            {protocol: _upstream(settings, client, protocol) for protocol in UpstreamProtocol},
            peer_client=peer_client,
        )
        # The gauge's only writer: readiness as /readyz reports it (loading, draining, a dead worker),
        # read at scrape time, since `Lifecycle` may not touch metrics from a signal handler.
        metrics.ready.set_function(lambda: float(gateway.ready))
        if pool is None:
            lifecycle.mark_ready()
        else:
            starting = asyncio.create_task(_start_pool(pool, lifecycle), name="zipgate-pool-start")
        yield {"gateway": gateway}
    finally:
        await _stop(settings, lifecycle, gateway, starting, pool)
        await client.aclose()
        if peer_client is not None:
            await peer_client.aclose()
        logger.info("gateway stopped")


async def _stop(
    settings: Settings,
    lifecycle: Lifecycle,
    gateway: Gateway | None,
    starting: asyncio.Task[None] | None,
    pool: WorkerPool | None,
) -> None:
    """The drain: shadow work first (best effort, never held for a drain), a pool still starting, then the pool."""
    lifecycle.begin_drain()
    if gateway is not None and gateway.peers is not None:
        await gateway.peers.close()  # best effort, like the shadow work
    if gateway is not None and gateway.shadow is not None:
        await gateway.shadow.close()
    if starting is not None and not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
    if pool is not None:
        await pool.drain(lifecycle.drain_time_left(settings.drain_timeout_s), began=lifecycle.drain_started)
        await pool.close()


def _mount_routes(app: FastAPI, settings: Settings) -> None:
    """Every router, behind the API key where one is set; the API pages as `public_docs` says."""
    dependencies = [Depends(api_key_dependency(settings.api_key))] if settings.api_key is not None else []
    if settings.public_docs or dependencies:
        mount_docs(app, [] if settings.public_docs else dependencies)
    raw_on_predict = settings.upstream_raw_path == RAW_SIDECAR_ON_PREDICT
    app.include_router(build_predict_router(dependencies, raw_on_predict, settings.purification_enabled))
    app.include_router(build_sidecar_router(dependencies, None if raw_on_predict else settings.upstream_raw_path))
    app.include_router(build_v1_router(dependencies))
    app.include_router(build_v2_router(dependencies))
    app.include_router(build_alerts_router(dependencies))  # before /targets/{label}, which also matches its path
    app.include_router(build_targets_router(dependencies))
    app.include_router(build_health_router())
    mount_ui(app, dependencies)


def _zip_factory(settings: Settings) -> PurifierFactory:
    """The ZIP purifier factory for `settings.model_path` (checked now, loaded per device at start-up)."""
    if not settings.model_path.is_dir():
        raise ConfigError(f"model_path {missing_model_hint(settings.model_path)}; or disable purification")
    return zip_purifier_factory(
        settings.model_path,
        settings.zip_config,
        settings.dtype,
        settings.acceleration,
        max_batch_size=settings.max_batch_size,
    )


def _pool_config(settings: Settings) -> PoolConfig:
    try:
        devices = resolve_devices(settings.devices)
    except ValueError as exc:
        raise ConfigError(f"devices {settings.devices!r}: {exc}") from exc
    return PoolConfig(
        devices=devices,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        queue_limit=settings.queue_limit,
        drain_timeout_s=settings.drain_timeout_s,
        default_steps=settings.steps,
        adaptive_steps_min=settings.adaptive_steps_min,
        adaptive_target_wait_ms=settings.adaptive_target_wait_ms,
    )


def _peer_client(settings: Settings) -> httpx.AsyncClient:
    """The client that relays named targets: each call is bounded by target_peer_timeout_s (the relay bounds
    the whole call too), connections by target_peer_max_inflight."""
    return make_http_client(
        min(settings.upstream_connect_timeout_s, settings.target_peer_timeout_s),
        settings.target_peer_timeout_s,
        settings.target_peer_max_inflight,
    )


def _upstream(settings: Settings, client: Any, protocol: UpstreamProtocol) -> Upstream:
    return build_upstream(
        protocol,
        client,
        settings.upstream_url,
        settings.upstream_model,
        settings.upstream_raw_path,
        image_input=settings.upstream_input,
        retry=RetryPolicy(max_retries=settings.upstream_retries),
        total_timeout_s=settings.upstream_timeout_s,
        max_response_bytes=settings.upstream_max_response_bytes,
    )


async def _start_pool(pool: WorkerPool, lifecycle: Lifecycle) -> None:
    """Load the models and start the workers; readiness follows, or FAILED with the reason."""
    try:
        await pool.start()
        EngineInfo.from_device_info(pool.device_info)  # the request path needs size and channels
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bad model or device must show in /readyz and the log, not vanish in a task
        logger.exception("the worker pool failed to start")
        lifecycle.mark_failed(f"start-up failed: {type(exc).__name__}: {exc}")
        return
    lifecycle.mark_ready()
    logger.info("gateway ready", extra={"devices": [dataclasses.asdict(info) for info in pool.device_info]})
