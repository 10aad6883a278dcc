"""Serving purification: dynamic batching and one worker per device (docs/design.md, "Request flow and timings")."""

from service.workers.devices import resolve_devices
from service.workers.pool import (
    BatchPurifier,
    PoolConfig,
    PoolResult,
    PurifierFactory,
    WorkerInfo,
    WorkerPool,
    check_queue_room,
)
from service.workers.purifier import zip_purifier_factory

__all__ = [
    "BatchPurifier",
    "PoolConfig",
    "PoolResult",
    "PurifierFactory",
    "WorkerInfo",
    "WorkerPool",
    "check_queue_room",
    "resolve_devices",
    "zip_purifier_factory",
]
