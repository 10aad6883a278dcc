"""TF-Serving / Vertex AI REST "predict" in the row format: `{"instances": [{"b64": ...}]}`.

In a sidecar request each instance is an image: `{"b64": "<base64>"}`, or the bare base64 string
as KServe's v1 takes it; each purified image goes back in the form its original came in. The
columnar `inputs` is refused (400), alone or beside `instances` (TF-Serving itself refuses both
together); the other keys (`signature_name`) pass unchanged within `side_content`'s bounds.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

from service.errors import BadRequest, InvalidShape
from service.upstream.codec import UpstreamProtocol
from service.upstream.json_codec import JsonCodec
from service.upstream.wire import describe_json, encode_base64_image

# The one documented instance shape: a binary value, base64 under the key "b64".
_B64 = "b64"


class TFServingCodec(JsonCodec):
    """`POST {base_url}/v1/models/{model}:predict` → `{"predictions": [one per instance]}`."""

    protocol: ClassVar[UpstreamProtocol] = UpstreamProtocol.TFSERVING

    def __init__(self, model_name: str) -> None:
        """Name the vendor's model.

        Args:
            model_name: the served model's name, as in /v1/models/{model_name}.

        Raises:
            ValueError: an empty model name.
        """
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
        """Every instance's base64 text (`b64` value or bare string); other keys (e.g. signature_name) are kept."""
        return [instance if isinstance(instance, str) else instance[_B64] for instance in _image_instances(payload)]

    def write_image_fields(self, payload: dict[str, Any], encoded: list[str]) -> None:
        """Set each instance in its original form: `{"b64": text}`, or the bare text."""
        instances = _image_instances(payload)
        for i, (instance, text) in enumerate(zip(instances, encoded, strict=True)):
            instances[i] = text if isinstance(instance, str) else {_B64: text}

    def without_images(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Every key but `instances` (whose items are all images)."""
        _image_instances(payload)  # the shape, and no columnar `inputs` beside
        return {key: value for key, value in payload.items() if key != "instances"}


def _image_instances(payload: dict[str, Any]) -> list[Any]:
    """The `instances` of a row-format request, each checked to be `{"b64": <str>}` or a base64 string.

    Raises:
        BadRequest: the request holds the columnar `inputs` (alone or beside `instances`).
        InvalidShape: no `instances`, or an instance of another shape.
    """
    if "inputs" in payload:
        beside = (
            'both "instances" and "inputs": use one (TF-Serving refuses both too)'
            if "instances" in payload
            else 'the columnar "inputs" format, which the gateway does not purify'
        )
        raise BadRequest(f'the request holds {beside}; send {{"instances": [{{"b64": "<base64 image>"}}, ...]}}')
    if "instances" not in payload:
        raise InvalidShape('expected {"instances": [{"b64": "<base64 image>"}, ...]}')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidShape('"instances" must be a non-empty list of {"b64": "<base64 image>"} objects')
    for i, instance in enumerate(instances):
        if isinstance(instance, str):
            continue
        if not isinstance(instance, dict) or set(instance) != {_B64}:
            raise InvalidShape(
                f'instances[{i}] must be {{"b64": "<base64 image>"}} or the base64 string itself (an image, '
                f"nothing else), got {describe_json(instance)}"
            )
    return instances
