"""Raw image POST (SageMaker-style): one image per request, the body is the image bytes."""

from __future__ import annotations

from typing import Any, ClassVar

from service.errors import BadRequest, UnsupportedMediaType
from service.upstream.codec import UpstreamProtocol, VendorBody, VendorCodec, WireRequest
from service.upstream.wire import media_type

# What a client may send as a raw image body: any image type, or the generic binary types that
# SageMaker clients use. JSON or form bodies are not images and are refused early.
_GENERIC_BINARY = frozenset({"", "application/octet-stream", "application/x-image"})


class RawCodec(VendorCodec):
    """`POST {base_url}{path}` with the image as the body; the whole JSON answer is its prediction.

    N images are N requests (sent concurrently; the shared client's pool bounds the concurrency).
    """

    protocol: ClassVar[UpstreamProtocol] = UpstreamProtocol.RAW

    def __init__(self, path: str = "/predict") -> None:
        """Set the inference path.

        Args:
            path: the inference path under base_url, e.g. "/invocations" for SageMaker.

        Raises:
            ValueError: a path without a leading "/".
        """
        if not path.startswith("/"):
            raise ValueError(f"the raw upstream path must start with '/', e.g. '/predict'; got {path!r}")
        self._path = path

    @property
    def predict_path(self) -> str:
        """The vendor's inference path under base_url."""
        return self._path

    def encode_predict(self, images: list[bytes], request_id: str, content_type: str) -> list[WireRequest]:
        """See `VendorCodec.encode_predict`: one request per image, the image as the body."""
        return [WireRequest(image, content_type, 1) for image in images]

    def decode_predictions(self, payload: Any, count: int) -> list[Any]:
        """See `VendorCodec.decode_predictions`: the whole answer is the one image's prediction."""
        return [payload]

    def extract_images(self, body: VendorBody) -> list[bytes]:
        """See `VendorCodec.extract_images`: the body is the one image."""
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
        """See `VendorCodec.replace_images`: the new body is the one new image."""
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
