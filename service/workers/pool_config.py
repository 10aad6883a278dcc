"""The worker pool's configuration: batching, admission and drain limits, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolConfig:
    """How the pool batches and admits work; validated at construction.

    Args:
        devices: resolved torch devices, one worker each (see `resolve_devices`).
        max_batch_size: most images in one batch.
        max_wait_ms: how long a partial batch waits for more images after its first arrived.
        queue_limit: most images waiting at once, across requests.
        drain_timeout_s: how long `drain` lets queued and running work finish.
        default_steps: sampling steps when a request does not say.
        adaptive_steps_min: enables adaptive steps, never running fewer than this; None = off.
        adaptive_target_wait_ms: expected queue wait above which adaptive steps start lowering steps.
    """

    devices: tuple[str, ...]
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    queue_limit: int = 64
    drain_timeout_s: float = 30.0
    default_steps: int = 20
    adaptive_steps_min: int | None = None
    adaptive_target_wait_ms: float = 2000.0

    def __post_init__(self) -> None:
        checks = [
            (len(self.devices) > 0, "devices is empty; give at least one, e.g. ('cpu',)"),
            (self.max_batch_size >= 1, f"max_batch_size must be >= 1, got {self.max_batch_size}"),
            (self.max_wait_ms >= 0, f"max_wait_ms must be >= 0, got {self.max_wait_ms}"),
            (self.queue_limit >= 1, f"queue_limit must be >= 1, got {self.queue_limit}"),
            (self.drain_timeout_s >= 0, f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}"),
            (self.default_steps >= 1, f"default_steps must be >= 1, got {self.default_steps}"),
            (
                self.adaptive_steps_min is None or 1 <= self.adaptive_steps_min <= self.default_steps,
                f"adaptive_steps_min must be in [1, default_steps={self.default_steps}] or None (off), "
                f"got {self.adaptive_steps_min}",
            ),
            (
                self.adaptive_target_wait_ms > 0,
                f"adaptive_target_wait_ms must be > 0, got {self.adaptive_target_wait_ms}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
