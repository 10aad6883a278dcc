"""How a request stage's wait ends: its work finishes, or the deadline, the drain or the client ends it first.

    work finishes               → its result (or its error)
    the request's deadline      → DeadlineExceeded (504)
    the drain budget is spent   → NotReady (503, Retry-After): `Lifecycle.stop_in_flight`
    the client hangs up         → ClientDisconnected (499, only counted), where the caller watches for it

In every early end the work is cancelled (the pool withdraws queued images; httpx closes the
vendor connection); a thread already running is abandoned, its result unused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from starlette.types import Receive

from service.errors import DRAINING_RETRY_AFTER_S, ClientDisconnected, DeadlineExceeded, NotReady

T = TypeVar("T")


def time_left(deadline: float, request_id: str, before: str) -> float:
    """Seconds until `deadline` (time.monotonic()), checked before a stage starts.

    Raises:
        DeadlineExceeded: no time is left for the stage named by `before` (e.g. "calling the vendor").
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded(f"request {request_id}: deadline passed before {before}")
    return remaining


async def guarded(
    work: Awaitable[T],
    *,
    request_id: str,
    what: str,
    stopped: asyncio.Future[None],
    deadline: float | None,
    receive: Receive | None = None,
) -> T:
    """Await `work`, ending it early at the deadline, at the end of the drain, or when the client leaves.

    Args:
        work: the stage's awaitable (a coroutine becomes a task).
        request_id: for messages.
        what: the stage, for messages (e.g. "the vendor call").
        stopped: `Lifecycle.in_flight_stopped()`; never cancelled here (it is shared).
        deadline: time.monotonic() seconds; None when `work` enforces the deadline itself (the pool).
        receive: the server's receive, to notice a client that hangs up; only after the body was
            read, from when on it yields nothing but `http.disconnect`.

    Returns:
        What `work` returns.

    Raises:
        DeadlineExceeded: the deadline passed first.
        NotReady: the drain ran out first (503 with Retry-After: another replica can take it).
        ClientDisconnected: the client left first.
        Exception: whatever `work` raises, or `receive` while it watches for the client.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    waited: set[asyncio.Future[Any]] = {task, stopped}
    if watcher is not None:
        waited.add(watcher)
    done: set[asyncio.Future[Any]] = set()
    try:
        done, _ = await asyncio.wait(waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        if watcher is not None:
            watcher.cancel()
        await asyncio.gather(*(f for f in (task, watcher) if f is not None), return_exceptions=True)
    if task in done:  # finished first (also when something else ended at the same moment)
        return task.result()
    if stopped.done():
        raise NotReady(
            f"request {request_id}: the gateway shut down during {what} (drain_timeout_s spent); "
            "retry on another replica",
            retry_after_s=DRAINING_RETRY_AFTER_S,
        )
    if watcher is not None and watcher in done:
        if (error := watcher.exception()) is not None:
            raise error  # receive itself failed: that error, not a client that left
        raise ClientDisconnected(f"the client disconnected during {what}")
    raise DeadlineExceeded(f"request {request_id}: deadline passed during {what}")


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
