"""Serving purification: dynamic batching and one worker per device (DESIGN.md §3-4)."""

from service.workers.devices import resolve_devices
from service.workers.pool import BatchPurifier, PoolConfig, PoolResult, PurifierFactory, WorkerPool
from service.workers.purifier import zip_purifier_factory

__all__ = ["BatchPurifier", "PoolConfig", "PoolResult", "PurifierFactory", "WorkerPool", "resolve_devices",
           "zip_purifier_factory"]
