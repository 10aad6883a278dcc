"""What a sidecar request may carry beside its images: small values only, too small to hold an image.

The gateway purifies the image fields of a vendor-format request and forwards everything else as
it came. A vendor that read an image from any other field (a second input, a parameter, an unknown
key) would see it unpurified, so the rest of the request is bounded: at most `MAX_SIDE_VALUES`
JSON values in all (numbers, strings, booleans, nulls), no string longer than `MAX_SIDE_CHARS`,
and no binary tensor data (v2's binary extension) longer than `MAX_SIDE_CHARS` bytes. The smallest
image the gateway purifies (28 × 28 pixels) needs 784 values or a few hundred bytes of PNG, so
nothing within these bounds is one; what passes is ids, names, shapes, flags and small settings.
A second image field (v1 `inputs` beside `instances`, a second v2 BYTES input) is refused by its
protocol's adapter before this check, with a message that names it.
"""

from __future__ import annotations

from typing import Any

from service.errors import BadRequest

MAX_SIDE_VALUES = 64
MAX_SIDE_CHARS = 128


def check_side_content(rest: Any, where: str = "the request") -> None:
    """Refuse a request whose content beside its images could hold an image.

    Args:
        rest: the decoded JSON request with its image fields taken out.
        where: what `rest` is, for the message.

    Raises:
        BadRequest: more than `MAX_SIDE_VALUES` values, or a string over `MAX_SIDE_CHARS` characters.
    """
    values = 0
    stack: list[tuple[str, Any]] = [("", rest)]
    while stack:  # iterative: a client controls the nesting depth
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
            continue
        if isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
            continue
        values += 1
        if values > MAX_SIDE_VALUES:
            raise BadRequest(
                f"{where} holds more than {MAX_SIDE_VALUES} values beside its images; the gateway forwards only "
                "small side values unpurified (ids, names, shapes, flags), since a larger one could carry an image"
            )
        if isinstance(value, str) and len(value) > MAX_SIDE_CHARS:
            raise BadRequest(
                f"{path or 'a value'} in {where} is a string of {len(value)} characters; beside the images the "
                f"gateway forwards strings of at most {MAX_SIDE_CHARS} (a longer one could carry an unpurified image)"
            )


def check_side_bytes(data: bytes, where: str) -> None:
    """Refuse binary tensor data beside the images that is long enough to hold an image.

    Args:
        data: the raw data of a non-image input (v2's binary extension).
        where: the input, for the message.

    Raises:
        BadRequest: `data` is longer than `MAX_SIDE_CHARS` bytes.
    """
    if len(data) > MAX_SIDE_CHARS:
        raise BadRequest(
            f"{where} carries {len(data)} bytes of binary data beside the image input; the gateway forwards at most "
            f"{MAX_SIDE_CHARS} bytes of a non-image input (a larger one could carry an unpurified image)"
        )
