"""All Prometheus collectors of the gateway, in one place, on a per-app registry.

A registry per `GatewayMetrics` (not prometheus-client's global default) keeps apps built in
one process (tests, the demo) from sharing counters. Names follow Prometheus conventions:
`_total` counters, `_seconds` durations, base units only.
"""

from __future__ import annotations

import enum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Purification takes seconds on CPU and tens of ms on a GPU: buckets span both.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STEPS_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 50, 100, 250, 1000)


class Stage(enum.StrEnum):
    """Request stages timed in `latency_ms`, `Server-Timing` and the stage histogram."""

    DECODE = "decode"
    QUEUE = "queue"
    PURIFY = "purify"
    UPSTREAM = "upstream"


class DropReason(enum.StrEnum):
    """Why an image left the queue without being purified."""

    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    OVERLOAD = "overload"
    DRAINING = "draining"


class GatewayMetrics:
    """The gateway's collectors; `registry` is what `/metrics` exposes.

    The collectors are created by concern (requests, purification, upstream, queue and workers,
    shadow and readiness), in this order, which is the order `/metrics` lists them in.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self._add_request_collectors(r)
        self._add_purification_collectors(r)
        self._add_upstream_collectors(r)
        self._add_queue_and_worker_collectors(r)
        # Written only by the app (`create_app`), from the gateway's readiness at scrape time.
        self.shadow = ShadowMetrics(r)
        self.ready = Gauge("zipgate_ready", "1 when the model is loaded and workers run, else 0.", registry=r)
        self._precreate_series()

    def _add_request_collectors(self, r: CollectorRegistry) -> None:
        """HTTP requests: answers by endpoint and status, their durations, those in flight, and each stage."""
        self.requests = Counter(
            "zipgate_requests_total",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "zipgate_request_duration_seconds",
            "End-to-end request duration.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inflight = Gauge("zipgate_inflight_requests", "Requests being processed now.", registry=r)
        self.stage_duration = Histogram(
            "zipgate_stage_duration_seconds",
            "Duration of each request stage (decode, queue, purify, upstream).",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

    def _add_purification_collectors(self, r: CollectorRegistry) -> None:
        """What purification did: images purified, the share repainted, closed-loop answers, strengths."""
        self.images_purified = Counter("zipgate_images_purified_total", "Images purified by the workers.", registry=r)
        self.masked_fraction = Histogram(
            "zipgate_masked_fraction",
            "Share of each localised image that was repainted as suspect (method=local).",
            buckets=(0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0),
            registry=r,
        )
        self.answers = Counter(
            "zipgate_answers_total",
            "Images answered under a closed-loop policy, by the image the answer came from (purified or raw).",
            ["answer"],
            registry=r,
        )
        for answer in ("purified", "raw"):
            self.answers.labels(answer)
        self.strength_requests = Counter(
            "zipgate_strength_requests_total",
            "Purifying requests by strength preset (strict costs 3x: the mix is the compute bill).",
            ["strength"],
            registry=r,
        )

    def _add_upstream_collectors(self, r: CollectorRegistry) -> None:
        """Calls to the vendor API: by status, and their durations."""
        self.upstream_requests = Counter(
            "zipgate_upstream_requests_total",
            "Calls to the vendor API, by HTTP status ('error' = no response).",
            ["status"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "zipgate_upstream_duration_seconds", "Vendor API call duration.", buckets=LATENCY_BUCKETS_S, registry=r
        )

    def _add_queue_and_worker_collectors(self, r: CollectorRegistry) -> None:
        """The queue (depth, limit, drops) and the workers (batches, busy time, OOM splits, failures, steps)."""
        self.queue_depth = Gauge("zipgate_queue_depth", "Images waiting for a worker (the scaling signal).", registry=r)
        # Exported so alerts can compare the depth with the limit (429s start there) whatever it is set to.
        self.queue_limit = Gauge(
            "zipgate_queue_limit", "Images the queue holds at most (the queue_limit setting).", registry=r
        )
        self.batch_size = Histogram(
            "zipgate_batch_size", "Images per purification batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.worker_busy = Counter(
            "zipgate_worker_busy_seconds_total", "Seconds each worker spent computing.", ["device"], registry=r
        )
        self.dropped = Counter(
            "zipgate_dropped_images_total", "Images not purified, by reason.", ["reason"], registry=r
        )
        self.oom_splits = Counter(
            "zipgate_oom_splits_total", "Batches split in half after running out of memory.", ["device"], registry=r
        )
        self.batch_failures = Counter(
            "zipgate_batch_failures_total", "Batches that failed (their items got 500).", ["device"], registry=r
        )
        self.steps_used = Histogram(
            "zipgate_purify_steps", "Sampling steps used per batch (adaptive steps).", buckets=STEPS_BUCKETS, registry=r
        )

    def _precreate_series(self) -> None:
        """Create the labelled series dashboards and alerts need before their first event."""
        for stage in Stage:
            self.stage_duration.labels(stage.value)  # export every stage from the start (dashboards, alerts)
        for reason in DropReason:
            self.dropped.labels(reason.value)
        # A labelled series appears at its first event, so rate() would miss the first 429s or
        # 504s on a dashboard; create the answers worth alerting on up front.
        for endpoint in ("/predict", "/purify"):
            for status in ("200", "429", "503", "504"):
                self.requests.labels(endpoint, status)


class ShadowMetrics:
    """The shadow collectors, on the gateway's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.comparisons = Counter(
            "zipgate_shadow_comparisons_total",
            "Images whose raw and purified vendor labels were compared, by the label on the raw image.",
            ["raw_label"],  # the baseline alarm's denominator: each label's disagreement rate
            registry=r,
        )
        self.disagreements = Counter(
            "zipgate_shadow_disagreements_total",
            "Compared images whose vendor label on the raw image differs from the label on the purified one.",
            ["raw_label", "purified_label"],
            registry=r,
        )
        self.unlabelled = Counter(
            "zipgate_shadow_unlabelled_total",
            "Shadow comparisons skipped: a vendor answer had no readable label.",
            registry=r,
        )
        self.dropped = Counter(
            "zipgate_shadow_dropped_total",
            "Requests sampled for shadow mode but not compared, by reason.",
            ["reason"],
            registry=r,
        )
        self.failures = Counter(
            "zipgate_shadow_failures_total", "Shadow vendor calls that failed (never seen by the client).", registry=r
        )
        self.captured = Counter(
            "zipgate_shadow_captured_total", "Disagreements written to the capture folder.", registry=r
        )
        self.capture_disabled = Gauge(
            "zipgate_shadow_capture_disabled", "1 when forensic capture stopped after an I/O error.", registry=r
        )
        for reason in ("busy", "load", "closed"):
            self.dropped.labels(reason)
