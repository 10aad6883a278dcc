"""The vendor's side of the public health probes (`GET /`, `/v2/health/live`, `/v2/health/ready`).

These routes need no API key, so anyone can call them as often as they like. Two rules keep a
public probe from becoming a way to reach or hammer the vendor:

- **No caller headers.** The probe call to the vendor carries none of the caller's headers (no
  `Authorization`, `Cookie` or anything else a caller invents): only the gateway's own
  X-Request-ID, and the credentials of `UPSTREAM_URL` if it has any. The answer is shared by every
  caller (next rule), so no caller's headers could be the right ones anyway.
- **One vendor call per probe path per `PROBE_CACHE_TTL_S`.** The vendor's answer (its status, or
  "unreachable") is kept that long, and concurrent probes share the one call in progress, so
  however many probes arrive the vendor sees at most one call per path per period. The caller's
  query string is not forwarded either (it would be a way around the cache).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.errors import UpstreamError
from service.upstream import Upstream

PROBE_CACHE_TTL_S = 1.0  # how long the vendor's answer to a probe path is kept
PROBE_TIMEOUT_S = 5.0  # a probe waits this long for the vendor at most (or upstream_timeout_s, if shorter)


@dataclass(frozen=True)
class _Answer:
    status: int | None  # None: the vendor could not be reached or timed out
    expires_at: float


class VendorProbes:
    """The vendor's answers to the public probe paths, each kept for `ttl_s`; one call per path at a time.

    Args:
        ttl_s: how long an answer is kept (> 0).
        timeout_s: bound on one probe call.
        clock: monotonic seconds (tests pass a fake).

    Raises:
        ValueError: `ttl_s` or `timeout_s` is not positive.
    """

    def __init__(self, ttl_s: float, timeout_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0 or timeout_s <= 0:
            raise ValueError(f"ttl_s and timeout_s must be > 0 seconds, got {ttl_s} and {timeout_s}")
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._answers: dict[str, _Answer] = {}  # keyed by the route's fixed path: bounded by the routes
        self._asking: dict[str, asyncio.Future[int | None]] = {}

    async def says_ok(self, adapter: Upstream, path: str, request_id: str | None) -> bool:
        """Whether the vendor answers GET `path` with 200, asked at most once per `ttl_s`.

        Args:
            adapter: the adapter of the path's protocol (its base URL and credentials).
            path: a fixed probe path, e.g. "/v2/health/ready" (never a caller's path or query).
            request_id: sent as X-Request-ID if this probe makes the call.

        Returns:
            True for a 200; False for any other status, or when the vendor cannot be reached in time.
        """
        answer = self._answers.get(path)
        if answer is None or answer.expires_at <= self._clock():
            status = await self._ask_once(adapter, path, request_id)
        else:
            status = answer.status
        return status == 200

    def _ask_once(self, adapter: Upstream, path: str, request_id: str | None) -> Awaitable[int | None]:
        """The call in progress for `path`, or a new one; shielded, so a caller that leaves cancels nobody's."""
        asking = self._asking.get(path)
        if asking is None:
            asking = asyncio.ensure_future(self._ask(adapter, path, request_id))
            self._asking[path] = asking
            asking.add_done_callback(lambda _: self._asking.pop(path, None))
        return asyncio.shield(asking)

    async def _ask(self, adapter: Upstream, path: str, request_id: str | None) -> int | None:
        try:
            relayed = await adapter.forward("GET", path, b"", {}, request_id=request_id, timeout_s=self._timeout_s)
            status: int | None = relayed.status_code
        except UpstreamError:
            status = None
        self._answers[path] = _Answer(status, self._clock() + self._ttl_s)
        return status
