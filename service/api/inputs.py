"""Images out of a gateway API request: multipart `image` parts, JSON base64, or a raw image body."""

from __future__ import annotations

import enum
import math
import re

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from service.api.schemas import PredictJsonRequest
from service.errors import BadRequest, InvalidShape, PayloadTooLarge, UnsupportedMediaType
from service.upstream.wire import decode_base64_image, is_json_media_type, media_type

IMAGE_FIELD = "image"
# Raw image bodies: any image type, or the generic binary types SageMaker-style clients send.
_RAW_BINARY_TYPES = frozenset({"application/octet-stream", "application/x-image"})


class InputKind(enum.StrEnum):
    """How a request carries its images."""

    MULTIPART = "multipart/form-data"
    JSON = "application/json"
    RAW_IMAGE = "image/*"


def input_kind(content_type: str | None) -> InputKind:
    """Classify a request by its Content-Type.

    Raises:
        UnsupportedMediaType: none of multipart/form-data, JSON, image/* or octet-stream.
    """
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        return InputKind.MULTIPART
    if is_json_media_type(kind):
        return InputKind.JSON
    if kind.startswith("image/") or kind in _RAW_BINARY_TYPES:
        return InputKind.RAW_IMAGE
    raise UnsupportedMediaType(
        f"Content-Type {kind or '(none)'!r} is not accepted; send multipart/form-data with 'image' parts, "
        'application/json {"images": ["<base64>", ...]}, or one image as the body (image/png, image/jpeg, ...)'
    )


async def read_images(request: Request, kind: InputKind, max_images: int, max_image_bytes: int) -> list[bytes]:
    """The encoded images of a request, in order (not decoded yet: `Gateway.decode` checks their headers).

    Args:
        request: the request (its body is read here).
        kind: from `input_kind`.
        max_images: most images allowed.
        max_image_bytes: most bytes per image (base64 strings are checked before decoding).

    Raises:
        PayloadTooLarge: too many images, or one over the byte limit (413).
        InvalidShape: no `image` part, or JSON not of the form {"images": [...]} (422).
        BadRequest: invalid JSON or base64, an empty body (400).
    """
    if kind is InputKind.MULTIPART:
        return await _multipart_images(request, max_images)
    body = await request.body()
    if kind is InputKind.RAW_IMAGE and not body:
        raise BadRequest("the request body is empty; send the image bytes as the body")
    return [body] if kind is InputKind.RAW_IMAGE else _json_images(body, max_images, max_image_bytes)


async def _multipart_images(request: Request, max_images: int) -> list[bytes]:
    # max_files bounds the parts parsed at all; one over the limit is enough to say "too many".
    try:
        form = await request.form(max_files=max_images + 1, max_fields=100)
    except HTTPException as exc:
        # Starlette reports its own part limits as a 400 with this text; for files it is our 413.
        if "too many files" in str(exc.detail).lower():
            raise PayloadTooLarge(
                f"more than {max_images} images in one request; the limit is {max_images} "
                "(max_images_per_request): split the request"
            ) from exc
        raise BadRequest(f"malformed multipart body: {exc.detail}") from exc
    try:
        parts = form.getlist(IMAGE_FIELD)
        if not parts:
            raise InvalidShape(
                f"multipart body has no '{IMAGE_FIELD}' part; send each image as a file "
                f"in a field named '{IMAGE_FIELD}' (curl -F {IMAGE_FIELD}=@x.png)"
            )
        check_image_count(len(parts), max_images)
        images = []
        for i, part in enumerate(parts):
            if not isinstance(part, UploadFile):
                raise InvalidShape(f"multipart '{IMAGE_FIELD}' part {i} is a text field; send it as a file")
            images.append(await part.read())
        return images
    finally:
        await form.close()  # spooled temporary files


def _json_images(body: bytes, max_images: int, max_image_bytes: int) -> list[bytes]:
    try:
        parsed = PredictJsonRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(error["type"] == "json_invalid" for error in errors):
            raise BadRequest('the body is not valid JSON; send {"images": ["<base64>", ...]}') from exc
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:3])
        raise InvalidShape(f'expected {{"images": ["<base64>", ...]}}: {problems}') from exc
    check_image_count(len(parsed.images), max_images)
    images = []
    for i, text in enumerate(parsed.images):
        where = f"images[{i}]"
        plain = standard_base64(text, where)
        if math.ceil(len(plain) / 4) * 3 > max_image_bytes + 2:  # decoded size ≈ 3/4 of the text, checked first
            raise PayloadTooLarge(f"{where} decodes to more than {max_image_bytes} bytes (max_image_bytes)")
        images.append(decode_base64_image(plain, where))  # its exact size is checked again on the bytes
    return images


# The forms clients send base64 in besides the plain standard alphabet: a browser's data URL of an image
# (FileReader.readAsDataURL, canvas.toDataURL), text broken into lines (`base64` and Python's
# encodebytes wrap at 76), and the URL-safe alphabet (RFC 4648 §5), often unpadded.
_DATA_URL = re.compile(r"data:(?P<type>[^,;]*)(?P<params>(?:;[^,;]*)*?);base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")
_STANDARD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URL_SAFE = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/_=-]")
_URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")
_DATA_URL_HEAD_MAX = 256  # a data URL's "data:<type>;<params>;base64," is looked for this far only
_ACCEPTED_FORMS = (
    "send standard base64 (A-Z a-z 0-9 + /, '=' padding) or URL-safe base64 (- _ instead of + /), "
    "optionally wrapped in lines or after a data:image/...;base64, prefix"
)


def standard_base64(text: str, where: str) -> str:
    """A client's base64 image text in the one form `decode_base64_image` reads: the standard alphabet, padded.

    Accepted besides it: a `data:image/<type>;base64,` prefix, ASCII whitespace anywhere (line-wrapped
    base64), the URL-safe alphabet, and missing '=' padding. Nothing is guessed beyond that: a character
    outside both alphabets, both alphabets mixed, or a length no base64 has is refused, naming the cause.

    Raises:
        BadRequest: a data URL of another media type, or text that is not base64 in any accepted form (400).
    """
    text = text.lstrip()
    if match := _DATA_URL.match(text[:_DATA_URL_HEAD_MAX]):
        media = match["type"].strip().lower()
        if not media.startswith("image/"):
            raise BadRequest(f"{where} is a data URL of {media or 'no media type'!r}; send an image (data:image/...)")
        text = text[match.end() :]
    elif text[:5].lower() == "data:":
        raise BadRequest(f"{where} starts like a data URL but not data:image/<type>;base64,; {_ACCEPTED_FORMS}")
    plain = _WHITESPACE.sub("", text)
    if not _STANDARD.fullmatch(plain):
        if not _URL_SAFE.fullmatch(plain):
            bad = _NOT_BASE64.search(plain)
            body = plain.rstrip("=")
            if bad is not None:
                cause = f"{bad.group()!r} at position {bad.start()} is not a base64 character"
            elif "=" in body:
                cause = f"'=' at position {body.index('=')} (padding goes only at the end)"
            elif len(plain) - len(body) > 2:
                cause = "more than two '=' of padding"
            else:
                cause = "it mixes the standard (+ /) and URL-safe (- _) alphabets"
            raise BadRequest(f"{where} is not valid base64: {cause}; {_ACCEPTED_FORMS}")
        plain = plain.translate(_URL_SAFE_TO_STANDARD)
    if len(plain) % 4 == 1:
        raise BadRequest(f"{where} is not valid base64: {len(plain)} characters is no base64 length (cut short?)")
    if "=" not in plain and len(plain) % 4:
        plain += "=" * (-len(plain) % 4)  # unpadded (common with URL-safe base64)
    return plain


def check_image_count(count: int, max_images: int) -> None:
    """The per-request image limit, for every way images arrive (multipart, JSON, a sidecar body).

    Raises:
        PayloadTooLarge: more than `max_images` (the `max_images_per_request` setting).
    """
    if count > max_images:
        raise PayloadTooLarge(
            f"{count} images in one request; the limit is {max_images} (max_images_per_request): split the request"
        )
