"""Which models the vendor serves: asked once per model, remembered for a few seconds.

A sidecar request for a model the vendor does not serve would be purified (seconds of compute)
only to meet the vendor's 404. The catalog asks the vendor's model status route first, a cheap
GET: `/v2/models/{name}[/versions/{v}]/ready` (v2) or `/v1/models/{name}[/versions/{v}]`
(TF-Serving, KServe v1). Only a 404 means "no such model"; any other answer or a failure to ask is
inconclusive and lets the request go on, so the check never turns a working vendor away. Answers
are remembered for `ttl_s`, and concurrent requests for one model share one question.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from service.errors import ModelNotFound, UpstreamError
from service.upstream.adapter import Upstream
from service.upstream.codec import UpstreamProtocol
from service.upstream.transport import RelayedResponse

DEFAULT_MAX_ENTRIES = 1024  # model names come from clients: the memory they can claim is bounded


@dataclass(frozen=True)
class ModelRef:
    """A model as a sidecar path names it."""

    protocol: UpstreamProtocol
    name: str
    version: str | None = None

    def describe(self) -> str:
        """E.g. "model 'fmnist' version 2"."""
        return f"model {self.name!r}" + (f" version {self.version}" if self.version else "")


def status_path(model: ModelRef) -> str | None:
    """The vendor's model status path for `model`, or None where the protocol has none (raw)."""
    name = quote(model.name, safe="")
    version = f"/versions/{quote(model.version, safe='')}" if model.version else ""
    if model.protocol is UpstreamProtocol.V2:
        return f"/v2/models/{name}{version}/ready"
    if model.protocol is UpstreamProtocol.TFSERVING:
        return f"/v1/models/{name}{version}"
    return None


@dataclass(frozen=True)
class _Entry:
    found: bool
    expires_at: float


class ModelCatalog:
    """The vendor's answers to "do you serve this model?", each kept for `ttl_s` seconds.

    Args:
        ttl_s: how long an answer is kept; 0 turns the check off.
        max_entries: answers kept at most (the oldest go first).
        clock: monotonic seconds (tests pass a fake).

    Raises:
        ValueError: a negative `ttl_s` or a `max_entries` below 1.
    """

    def __init__(
        self, ttl_s: float, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0 seconds (0 turns the model check off), got {ttl_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[ModelRef, _Entry] = OrderedDict()
        self._asking: dict[ModelRef, asyncio.Future[bool | None]] = {}

    async def require(
        self, adapter: Upstream, model: ModelRef, headers: Mapping[str, str], *, request_id: str, timeout_s: float
    ) -> None:
        """Return if the vendor may serve `model`; raise if it said it does not.

        Args:
            adapter: the adapter of the model's protocol.
            model: the model the request names.
            headers: the client's headers for the vendor (its credentials, if the vendor wants them).
            request_id: sent as X-Request-ID with the question.
            timeout_s: bound on the question.

        Raises:
            ModelNotFound: the vendor answered 404 for the model's status, now or within `ttl_s` (404).
        """
        path = status_path(model)
        if self._ttl_s == 0 or path is None:
            return
        entry = self._entries.get(model)
        found = entry.found if entry is not None and entry.expires_at > self._clock() else None
        if found is None:
            found = await self._ask_once(
                model, lambda: adapter.forward("GET", path, b"", headers, request_id=request_id, timeout_s=timeout_s)
            )
        if found is False:
            raise ModelNotFound(f"the vendor does not serve {model.describe()} (it answers 404 to {path})")

    async def _ask_once(self, model: ModelRef, ask: Callable[[], Awaitable[RelayedResponse]]) -> bool | None:
        """One question per model at a time (`ask` sends it); the others wait for its answer (not
        cancelled with them)."""
        asking = self._asking.get(model)
        if asking is None:
            asking = asyncio.ensure_future(self._ask(model, ask))
            self._asking[model] = asking
            asking.add_done_callback(lambda _: self._asking.pop(model, None))
        return await asyncio.shield(asking)

    async def _ask(self, model: ModelRef, ask: Callable[[], Awaitable[RelayedResponse]]) -> bool | None:
        try:
            answer = await ask()
        except UpstreamError:  # unreachable or slow: the request itself will tell the client
            return None
        found = {200: True, 404: False}.get(answer.status_code)
        if found is not None:
            self._entries[model] = _Entry(found, self._clock() + self._ttl_s)
            self._entries.move_to_end(model)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return found
