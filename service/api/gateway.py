"""The gateway's runtime: resources the lifespan opens, and the request stages that use them.

A request moves through `decode` (headers checked first; large images in a thread) → `purify`
(worker pool) → `predict` or `forward` (vendor API); each stage is timed into the request's
`RequestTimings` (docs/design.md, "Request flow and timings"). The request's deadline bounds all of
them together, and the end of a drain ends any of them with a 503 (`service.api.guard`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import httpx
import torch

from service.api.decode import ImageLimits, open_images
from service.api.guard import guarded, time_left
from service.api.lifecycle import Lifecycle
from service.api.logging import REQUEST_ID
from service.api.probes import PROBE_CACHE_TTL_S, PROBE_TIMEOUT_S, VendorProbes
from service.api.request_policy import RequestPolicy
from service.api.schemas import Readiness
from service.api.stages import (
    PNG,
    DecodedBatch,
    EngineInfo,
    Prediction,
    PreparedImages,
    PurifiedBatch,
    RequestContext,
    decode_batch,
    finish_batch,
    finish_masks,
    originals_for_vendor,
)
from service.api.upstream_call import UpstreamCall
from service.api.votes import majority
from service.config import Settings
from service.errors import (
    DRAINING_RETRY_AFTER_S,
    LOADING_RETRY_AFTER_S,
    NotReady,
    UpstreamError,
)
from service.metrics import GatewayMetrics, Stage
from service.purify.local_restore import split_mask_channel
from service.purify.pipeline import FittedBatch
from service.purify.seeds import vote_canvas_seeds
from service.purify.strength import StrengthChoice
from service.shadow.history import ShadowHistory
from service.shadow.labels import LabelExtractor
from service.shadow.monitor import build_shadow_monitor
from service.shadow.peer_urls import parse_peer
from service.shadow.peers import RelayMetrics, TargetRelay
from service.shadow.targets import NamedTarget, TargetBoard
from service.upstream import RelayedResponse, Upstream, UpstreamProtocol, UpstreamResult
from service.upstream.catalog import ModelCatalog, ModelRef
from service.workers import WorkerPool

T = TypeVar("T")
# Up to this many pixels per request, decoding on the event loop (tens of µs) beats a hop to a
# thread, which under GIL contention costs up to the 5 ms switch interval. Larger ones go to a thread.
INLINE_DECODE_MAX_PIXELS = 256 * 256
RAW_REQUEST_SUFFIX = "-raw"  # the vendor's logs tell the closed loop's raw call from the purified one


def _target_relay(settings: Settings, client: httpx.AsyncClient | None, metrics: RelayMetrics) -> TargetRelay | None:
    """The relay of named targets to `target_peers`; None without peers or without a client."""
    if not settings.target_peers or client is None:
        return None
    return TargetRelay(
        client,
        tuple(parse_peer(peer) for peer in settings.target_peers),
        metrics,
        api_key=None if settings.api_key is None else settings.api_key.get_secret_value(),
        timeout_s=settings.target_peer_timeout_s,
        max_inflight=settings.target_peer_max_inflight,
    )


def purification_disabled() -> NotReady:
    """The 503 of a purifying stage on a gateway that does not purify: waiting will not help (no Retry-After)."""
    return NotReady("purification is disabled on this gateway (purification_enabled=false)", retry_after_s=None)


class Gateway:
    """The resources of one running gateway and the stages of a request.

    Args:
        settings: the validated settings.
        metrics: the app's collectors.
        lifecycle: readiness, flipped by the lifespan and the server.
        pool: the worker pool (None when purification is off).
        upstream: the adapter `POST /predict` sends to (the configured protocol).
        sidecars: one adapter per protocol for the sidecar routes (same vendor and client).
        peer_client: the client that relays named targets to `target_peers` (None: no relay).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        lifecycle: Lifecycle,
        pool: WorkerPool | None,
        upstream: Upstream,
        sidecars: Mapping[UpstreamProtocol, Upstream],
        peer_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.pool = pool
        self.upstream = upstream
        self.sidecars = dict(sidecars)
        self.models = ModelCatalog(settings.upstream_model_check_ttl_s)  # which models the vendor serves
        # The vendor's answers to the public probes: cached, so that a public route cannot hammer it.
        self.probes = VendorProbes(PROBE_CACHE_TTL_S, min(PROBE_TIMEOUT_S, settings.upstream_timeout_s))
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        self.vote_label = LabelExtractor.parse(settings.vote_label)
        self.zip_config = settings.zip_config  # built (and validated) once, not per request
        self.policy = RequestPolicy(settings, self.zip_config, purifying=pool is not None)  # what a request runs
        history = ShadowHistory()
        self.relay_metrics = RelayMetrics(metrics.registry)  # received relays are counted on every gateway
        self.peers = _target_relay(settings, peer_client, self.relay_metrics)
        # The backdoor targets named so far; the closed-loop policies purify their answers.
        self.targets = TargetBoard(
            metrics.registry,
            settings.suspected_targets,
            history,
            max_targets=settings.shadow_max_labels,
            on_named=None if self.peers is None else self._relay_name,
        )
        self.shadow = build_shadow_monitor(
            settings, upstream, metrics.shadow, pool, self.vote_label, history=history, on_counted=self.targets.judge
        )
        self._engine: EngineInfo | None = None

    def _relay_name(self, target: NamedTarget) -> None:
        """A new name goes to the peers with the id of the request that caused it (the alarm's: a comparison's)."""
        if self.peers is not None:
            self.peers.named(target, REQUEST_ID.get())

    @property
    def ready(self) -> bool:
        """Started, not draining, and (when purifying) every worker alive."""
        return self.lifecycle.state is Readiness.READY and (self.pool is None or self.pool.ready)

    @property
    def engine(self) -> EngineInfo:
        """The loaded model (size, channels, devices).

        Raises:
            NotReady: the pool has not started yet (or purification is off).
        """
        if self._engine is None:
            if self.pool is None:
                raise purification_disabled()
            if not self.pool.ready:
                raise self.not_ready_error()
            self._engine = EngineInfo.from_device_info(self.pool.device_info)
        return self._engine

    def not_ready_reason(self) -> str:
        """Why requests are refused right now (for 503 messages and /readyz)."""
        if self.lifecycle.state is Readiness.READY and self.pool is not None and not self.pool.ready:
            return "the worker pool stopped; see the server log"
        return self.lifecycle.detail or "not ready"

    def not_ready_error(self) -> NotReady:
        """The 503 for now: Retry-After while starting or draining; none where waiting will not help
        (start-up failed; or READY yet not ready: the worker pool stopped)."""
        retry_after_s = {Readiness.STARTING: LOADING_RETRY_AFTER_S, Readiness.DRAINING: DRAINING_RETRY_AFTER_S}.get(
            self.lifecycle.state
        )
        return NotReady(self.not_ready_reason(), retry_after_s=retry_after_s)

    def require_ready(self) -> None:
        """Raises NotReady (503) unless requests can be served now."""
        if not self.ready:
            raise self.not_ready_error()

    # --- stages -----------------------------------------------------------------------------

    async def decode(self, blobs: list[bytes], ctx: RequestContext, *, fit: bool) -> DecodedBatch:
        """Decode (each image's limits, then the request's pixel budget, checked on the headers first)
        and, with `fit`, convert to tensors at the model size.

        Raises:
            BadRequest, PayloadTooLarge, UnsupportedMediaType: see `service.api.decode`.
        """
        engine = self.engine if fit else None
        time_left(ctx.deadline, ctx.request_id, "decoding")
        with ctx.timings.measure(Stage.DECODE):
            opened = open_images(blobs, self.limits, self.settings.max_request_pixels)  # headers only
            if sum(image.width * image.height for image in opened) <= INLINE_DECODE_MAX_PIXELS:
                return decode_batch(blobs, opened, engine, self.settings.small_image_fit)
            return await self._guarded(
                asyncio.to_thread(decode_batch, blobs, opened, engine, self.settings.small_image_fit), ctx, "decoding"
            )

    async def purify(
        self,
        decoded: DecodedBatch,
        ctx: RequestContext,
        *,
        include_degraded: bool = False,
        mirror: bool = False,
        choice: StrengthChoice | None = None,
    ) -> PurifiedBatch:
        """Purify in the pool (withdrawn if the client hangs up); PNGs at the original sizes (mirrored if asked).

        `choice` (default: the configured strength and votes) sets ZIP's knobs and the votes K: the
        canvases are purified K times in one submission, vote k with the seeds `vote_canvas_seeds`
        gives it (so `?seed=s` repeats every vote).

        Raises:
            NotReady, Overloaded, DeadlineExceeded, PurificationFailed, PayloadTooLarge: from the pool.
            NotReady: the drain ran out while the images waited (503).
            ClientDisconnected: the client left while its images waited.
        """
        if self.pool is None or decoded.fitted is None:
            raise purification_disabled()
        fitted = decoded.fitted
        choice = self.policy.choose(single=True) if choice is None else choice
        self.metrics.strength_requests.labels(choice.strength.value).inc()
        votes = choice.votes
        # The configured knobs travel as None, so every request that runs them shares batches.
        variant = None if choice.config == self.zip_config else choice.config
        count = fitted.canvases.shape[0]
        canvases, seeds = fitted.canvases, None
        if votes > 1:
            canvases = fitted.canvases.repeat(votes, 1, 1, 1)
            seeds = vote_canvas_seeds(secrets.randbits(62) if ctx.seed is None else ctx.seed, votes, count)
        # deadline=None: the pool enforces it, dropping queued images and late results (its metrics say which).
        result = await guarded(
            self.pool.submit(
                canvases,
                request_id=ctx.request_id,
                deadline=ctx.deadline,
                seed=ctx.seed,
                seeds=seeds,
                variant=variant,
            ),
            request_id=ctx.request_id,
            what="purification",
            stopped=self.lifecycle.in_flight_stopped(),
            deadline=None,
            receive=ctx.receive,
        )
        ctx.timings.add(Stage.QUEUE, result.queue_s)
        ctx.timings.add(Stage.PURIFY, result.purify_s)
        return await self._encode(result.images, result.steps, fitted, ctx, include_degraded, mirror)

    async def _encode(
        self,
        purified: torch.Tensor,
        steps: int,
        fitted: FittedBatch,
        ctx: RequestContext,
        include_degraded: bool,
        mirror: bool,
    ) -> PurifiedBatch:
        """The pool's canvases (every vote's) back at the original sizes as PNG, with the masks a localising
        engine hands back as one more channel (the first vote's)."""
        count = fitted.canvases.shape[0]
        degrade = self.settings.transforms if include_degraded else None
        images, keep = split_mask_channel(purified, fitted.canvases.shape[1])
        with ctx.timings.measure(Stage.PURIFY):  # cutting back to the original sizes and PNG encoding
            pngs, degraded = await self._guarded(
                asyncio.to_thread(finish_batch, fitted, images.split(count), degrade, mirror), ctx, "encoding"
            )
            masks = None if keep is None else await asyncio.to_thread(finish_masks, fitted, keep[:count])
        if masks is None:
            return PurifiedBatch(votes=pngs, degraded_pngs=degraded, steps=steps)
        for fraction in masks[1]:
            self.metrics.masked_fraction.observe(fraction)
        return PurifiedBatch(pngs, degraded, steps, mask_pngs=masks[0], masked_fraction=masks[1])

    async def require_model(
        self, adapter: Upstream, model: ModelRef, headers: Mapping[str, str], ctx: RequestContext
    ) -> None:
        """Ask the vendor whether it serves `model` (`ModelCatalog.require`), within the request's deadline,
        the drain, and until the client hangs up (the question is shared: it goes on for the others).

        Raises:
            ModelNotFound: the vendor says it does not serve `model`.
            DeadlineExceeded, NotReady, ClientDisconnected: see `service.api.guard`.
        """
        timeout_s = time_left(ctx.deadline, ctx.request_id, "asking the vendor")
        question = self.models.require(adapter, model, headers, request_id=ctx.request_id, timeout_s=timeout_s)
        await self._guarded(question, ctx, "asking the vendor", watch_client=True)

    async def prepare(self, blobs: list[bytes], ctx: RequestContext, choice: StrengthChoice) -> PreparedImages:
        """Decode and purify images for the vendor (as `choice` says, K times with votes); with purification
        off, validate and pass the originals."""
        purifying = self.pool is not None
        decoded = await self.decode(blobs, ctx, fit=purifying)
        if not purifying:
            originals, content_type = originals_for_vendor(decoded)
            return PreparedImages([originals], content_type, steps=None, decoded=decoded)
        purified = await self.purify(decoded, ctx, mirror=self.settings.vendor_mirror, choice=choice)
        return PreparedImages(
            purified.votes, PNG, purified.steps, decoded, purified.masked_fraction, purified.mask_pngs
        )

    async def predict(self, prepared: PreparedImages, ctx: RequestContext) -> Prediction:
        """Send images to the vendor in the configured protocol; one prediction per image.

        With K votes: K calls at once, and per image the answer of the majority label (`votes.majority`).

        Raises:
            UpstreamTimeout, UpstreamError, UpstreamRejected: see `Upstream.predict` (any vote's call).
            DeadlineExceeded: the request's deadline passed before or during the call.
            NotReady: the drain ran out during the call.
            ClientDisconnected: the client hung up during the call (which is cancelled: httpx closes the connection).
        """
        remaining = time_left(ctx.deadline, ctx.request_id, "calling the vendor")

        def send(blobs: list[bytes], request_id: str) -> Awaitable[UpstreamResult]:
            # The remaining budget caps the call; the guard is the outer bound, whatever the adapter does.
            return self.upstream.predict(blobs, request_id, prepared.content_type, timeout_s=remaining)

        async def call(blobs: list[bytes], request_id: str) -> UpstreamResult:
            with self._upstream_call(None) as outcome:  # one of several overlapping calls: timed together below
                result = await send(blobs, request_id)
                outcome.status = str(result.status_code)
            return result

        if len(prepared.votes) == 1:
            # The guard inside the timing, so that its ends are counted as what they are (timeout, cancelled).
            with self._upstream_call(ctx) as timed:
                result = await self._guarded(
                    send(prepared.blobs, ctx.request_id), ctx, "the vendor call", watch_client=True
                )
                timed.status = str(result.status_code)
            return Prediction(result.predictions, vote_labels=None, chosen_votes=[0] * len(result.predictions))
        with ctx.timings.measure(Stage.UPSTREAM):  # the calls overlap: the stage is their wall time, not a sum
            results = await self._guarded(
                asyncio.gather(*[call(blobs, f"{ctx.request_id}-vote{k}") for k, blobs in enumerate(prepared.votes)]),
                ctx,
                "the vendor calls",
                watch_client=True,
            )
        outcome = majority([r.predictions for r in results], self.vote_label)
        return Prediction(outcome.predictions, vote_labels=outcome.labels, chosen_votes=outcome.chosen)

    async def ask_raw(self, decoded: DecodedBatch, ctx: RequestContext) -> list[Any]:
        """Ask the vendor about the client's images as they came (the closed loop); one prediction per image.

        Raises:
            UpstreamError: the vendor answered a different number of predictions.
            the errors of `predict`.
        """
        originals, content_type = originals_for_vendor(decoded)
        remaining = time_left(ctx.deadline, ctx.request_id, "calling the vendor")
        with self._upstream_call(ctx) as timed:
            result = await self._guarded(
                self.upstream.predict(
                    originals, ctx.request_id + RAW_REQUEST_SUFFIX, content_type, timeout_s=remaining
                ),
                ctx,
                "the vendor call on the raw images",
                watch_client=True,
            )
            timed.status = str(result.status_code)
        if len(result.predictions) != len(originals):
            raise UpstreamError(
                f"the vendor answered {len(result.predictions)} predictions for {len(originals)} raw images"
            )
        return list(result.predictions)

    async def forward(
        self,
        adapter: Upstream,
        path: str,
        body: bytes,
        headers: Mapping[str, str],
        content_type: str | None,
        ctx: RequestContext,
    ) -> RelayedResponse:
        """Relay a (rewritten) sidecar request to the same path upstream; the answer comes back unchanged.

        Raises:
            UpstreamTimeout, UpstreamError: transport failures only (a vendor 4xx/5xx is relayed).
            DeadlineExceeded: the request's deadline passed before or during the call.
            NotReady: the drain ran out during the call.
            ClientDisconnected: the client hung up during the call (which is cancelled: httpx closes the connection).
        """
        remaining = time_left(ctx.deadline, ctx.request_id, "calling the vendor")
        with self._upstream_call(ctx) as outcome:
            relayed = await self._guarded(
                adapter.forward(
                    "POST",
                    path,
                    body,
                    headers,
                    request_id=ctx.request_id,
                    content_type=content_type,
                    timeout_s=remaining,
                ),
                ctx,
                "the vendor call",
                watch_client=True,
            )
            outcome.status = str(relayed.status_code)
        return relayed

    def _upstream_call(self, ctx: RequestContext | None) -> UpstreamCall:
        """One vendor call's metrics, and its time in the request's upstream stage (not with `ctx` None: calls
        that overlap are timed together by their caller)."""
        return UpstreamCall(self.metrics, None if ctx is None else ctx.timings)

    async def _guarded(self, work: Awaitable[T], ctx: RequestContext, what: str, *, watch_client: bool = False) -> T:
        """`work` within the request's deadline and the drain (see `service.api.guard`); with `watch_client`
        (only once the body has been read), also until the client hangs up (ClientDisconnected, 499)."""
        return await guarded(
            work,
            request_id=ctx.request_id,
            what=what,
            stopped=self.lifecycle.in_flight_stopped(),
            deadline=ctx.deadline,
            receive=ctx.receive if watch_client else None,
        )
