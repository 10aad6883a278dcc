"""TF-Serving / Vertex AI REST "predict" in the row format: `{"instances": [{"b64": ...}]}`."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from service.errors import InvalidShape
from service.upstream.base import UpstreamProtocol
from service.upstream.client import DEFAULT_MAX_RESPONSE_BYTES, RetryPolicy
from service.upstream.json_upstream import JsonUpstream
from service.upstream.wire import describe_json, encode_base64_image

# The one documented instance shape: a binary value, base64 under the key "b64".
_B64 = "b64"


class TFServingUpstream(JsonUpstream):
    """`POST {base_url}/v1/models/{model}:predict` → `{"predictions": [one per instance]}`."""

    protocol: ClassVar[UpstreamProtocol] = UpstreamProtocol.TFSERVING

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        model_name: str,
        retry: RetryPolicy = RetryPolicy(),
        total_timeout_s: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        """Bind the adapter to a vendor model.

        Args:
            client: the shared client; not closed here.
            base_url: the vendor's root URL.
            model_name: the served model's name, as in /v1/models/{model_name}.
            retry: resends after failures to connect.
            total_timeout_s: wall-clock bound on one call with its retries.
            max_response_bytes: limit on a vendor answer's decoded body.

        Raises:
            ValueError: a bad base URL or timeout, or an empty model name.
        """
        super().__init__(
            client, base_url, retry=retry, total_timeout_s=total_timeout_s, max_response_bytes=max_response_bytes
        )
        if not model_name:
            raise ValueError("the tfserving upstream needs a model name (the {model} in /v1/models/{model})")
        self._model_name = model_name

    @property
    def predict_path(self) -> str:
        """`/v1/models/{model}:predict`, the model name percent-encoded."""
        return f"/v1/models/{quote(self._model_name, safe='')}:predict"

    def encode_request(self, images: list[bytes], request_id: str) -> dict[str, Any]:
        """`{"instances": [{"b64": ...}, ...]}`; the request id travels in the header only."""
        return {"instances": [{_B64: encode_base64_image(image)} for image in images]}

    def decode_predictions(self, payload: Any, count: int) -> list[Any]:
        """The `predictions` list, one JSON value per instance."""
        if not isinstance(payload, dict) or not isinstance(payload.get("predictions"), list):
            raise ValueError(f'expected {{"predictions": [...]}}, got {describe_json(payload)}')
        return payload["predictions"]

    def read_image_fields(self, payload: dict[str, Any]) -> list[Any]:
        """The `b64` value of every instance; other top-level keys (e.g. signature_name) are kept."""
        return [instance[_B64] for instance in _image_instances(payload)]

    def write_image_fields(self, payload: dict[str, Any], encoded: list[str]) -> None:
        """Set each instance's `b64`."""
        for instance, text in zip(_image_instances(payload), encoded, strict=True):
            instance[_B64] = text


def _image_instances(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The `instances` of a row-format request, each checked to be `{"b64": <str>}`."""
    if "instances" not in payload:
        hint = ' (the columnar "inputs" format is not supported)' if "inputs" in payload else ""
        raise InvalidShape(f'expected {{"instances": [{{"b64": "<base64 image>"}}, ...]}}{hint}')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidShape('"instances" must be a non-empty list of {"b64": "<base64 image>"} objects')
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or set(instance) != {_B64}:
            raise InvalidShape(
                f'instances[{i}] must be {{"b64": "<base64 image>"}} (a binary value, nothing else), '
                f"got {describe_json(instance)}"
            )
    return instances
