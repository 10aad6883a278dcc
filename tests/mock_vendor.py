"""A vendor that is a Python function (httpx.MockTransport), for unit tests of the upstream adapters.

Usage:
    async with mock_client(lambda request: httpx.Response(200, json={"label": 1})) as client:
        result = await adapter(UpstreamProtocol.RAW, client).predict(IMAGES[:1], RID)
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx

from service.upstream import RetryPolicy, Upstream, UpstreamProtocol, build_upstream

BASE = "http://vendor.test"
RID = "req-0123"
IMAGES = [b"\x89PNG-one", b"\x89PNG-second", b"\x89PNG-the-third"]
NO_BACKOFF = RetryPolicy(max_retries=2, backoff_s=0.0)

Handler = Callable[[httpx.Request], Any]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mock_client(handler: Handler) -> httpx.AsyncClient:
    """A client whose every request is answered by `handler` (sync or async); close it after use."""
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def adapter(protocol: UpstreamProtocol, client: httpx.AsyncClient, base_url: str = BASE, **kw: Any) -> Upstream:
    """The adapter for `protocol` and model "fmnist", resending without backoff unless `retry` is given."""
    kw.setdefault("retry", NO_BACKOFF)
    return build_upstream(protocol, client, base_url, "fmnist", **kw)


def good_answer(protocol: UpstreamProtocol, count: int = 1) -> dict[str, Any]:
    """A well-formed vendor answer for `count` images in `protocol` (raw: for one image)."""
    if protocol is UpstreamProtocol.RAW:
        return {"label": 0}
    if protocol is UpstreamProtocol.TFSERVING:
        return {"predictions": [{"label": i} for i in range(count)]}
    return {"outputs": [{"name": "label", "shape": [count], "datatype": "INT64", "data": list(range(count))}]}
