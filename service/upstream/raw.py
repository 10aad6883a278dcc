"""Raw image POST (SageMaker-style): one image per request, the body is the image bytes."""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import httpx

from service.errors import BadRequest, UnsupportedMediaType
from service.upstream.base import Upstream, UpstreamProtocol, UpstreamResult, VendorBody
from service.upstream.client import DEFAULT_MAX_RESPONSE_BYTES, RetryPolicy
from service.upstream.wire import decode_response_json, media_type

# What a client may send as a raw image body: any image type, or the generic binary types that
# SageMaker clients use. JSON or form bodies are not images and are refused early.
_GENERIC_BINARY = frozenset({"", "application/octet-stream", "application/x-image"})


class RawUpstream(Upstream):
    """`POST {base_url}{path}` with the image as the body; the whole JSON answer is its prediction.

    N images are N concurrent requests (the shared client's pool bounds the concurrency).
    """

    protocol: ClassVar[UpstreamProtocol] = UpstreamProtocol.RAW

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        path: str = "/predict",
        retry: RetryPolicy = RetryPolicy(),
        total_timeout_s: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        """Bind the adapter to a vendor.

        Args:
            client: the shared client; not closed here.
            base_url: the vendor's root URL.
            path: the inference path under base_url, e.g. "/invocations" for SageMaker.
            retry: resends after failures to connect.
            total_timeout_s: wall-clock bound on one image's call with its retries.
            max_response_bytes: limit on a vendor answer's decoded body.

        Raises:
            ValueError: a bad base URL or timeout, or a path without a leading "/".
        """
        super().__init__(
            client, base_url, retry=retry, total_timeout_s=total_timeout_s, max_response_bytes=max_response_bytes
        )
        if not path.startswith("/"):
            raise ValueError(f"the raw upstream path must start with '/', e.g. '/predict'; got {path!r}")
        self._path = path

    @property
    def predict_path(self) -> str:
        """The vendor's inference path under base_url."""
        return self._path

    async def predict(
        self,
        images: list[bytes],
        request_id: str,
        content_type: str = "image/png",
        *,
        timeout_s: float | None = None,
    ) -> UpstreamResult:
        """See `Upstream.predict`. The first failing image fails the call and cancels the rest.

        The images' requests run concurrently, so `timeout_s` bounds each of them and the call.

        Returns:
            The predictions in image order; `status_code` is the highest 2xx the vendor sent.
        """
        if not images:
            raise ValueError("predict needs at least one image")
        started = time.perf_counter()
        tasks = [asyncio.create_task(self._predict_one(image, request_id, content_type, timeout_s)) for image in images]
        try:
            answers = await asyncio.gather(*tasks)
        except BaseException:
            # gather does not cancel the siblings of a failed task; they must not outlive the call.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return UpstreamResult(
            predictions=[prediction for _, prediction in answers],
            status_code=max(status for status, _ in answers),
            latency_s=time.perf_counter() - started,
        )

    async def _predict_one(
        self, image: bytes, request_id: str, content_type: str, timeout_s: float | None
    ) -> tuple[int, Any]:
        response = await self._post(self._path, image, content_type, request_id, timeout_s)
        return response.status_code, decode_response_json(response)

    def extract_images(self, body: VendorBody) -> list[bytes]:
        """See `Upstream.extract_images`: the body is the one image."""
        _check_image_media_type(body.content_type)
        if not body.content:
            raise BadRequest("the request body is empty; send the image bytes as the body")
        return [body.content]

    def replace_images(
        self,
        body: VendorBody,
        images: list[bytes],
        *,
        image_content_type: str = "image/png",
    ) -> VendorBody:
        """See `Upstream.replace_images`: the new body is the one new image."""
        self.extract_images(body)
        if len(images) != 1:
            raise ValueError(f"a raw request holds exactly one image, got {len(images)} replacements")
        return VendorBody(images[0], image_content_type)


def _check_image_media_type(content_type: str) -> None:
    kind = media_type(content_type)
    if not (kind.startswith("image/") or kind in _GENERIC_BINARY):
        raise UnsupportedMediaType(
            f"a raw request body must be an image (Content-Type: image/png, image/jpeg, ... or "
            f"application/octet-stream), got {kind!r}"
        )
