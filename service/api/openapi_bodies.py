"""Request bodies in the OpenAPI from types, for routes that read their body by hand.

The gateway reads its bodies itself (multipart, JSON base64, raw images, the vendors' own formats),
so FastAPI cannot derive their schema from a parameter. These build the `openapi_extra` of such a
route from the Python types that describe the body (TypedDicts, pydantic models, `bytes`).
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter


def inline_json_schema(type_: Any) -> dict[str, Any]:
    """`type_`'s JSON Schema with its definitions written in place of their references.

    An operation's `openapi_extra` is copied into the document as it is, where a `#/$defs/...`
    reference would point nowhere; the body types are not recursive, so inlining ends.
    """
    schema = TypeAdapter(type_).json_schema()
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return _inline_refs(schema, definitions)


def _inline_refs(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            rest = {key: value for key, value in node.items() if key != "$ref"}
            return _inline_refs({**definitions[node["$ref"].removeprefix("#/$defs/")], **rest}, definitions)
        return {key: _inline_refs(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline_refs(item, definitions) for item in node]
    return node


def request_body(content: dict[str, Any], example: Any = None) -> dict[str, Any]:
    """The `openapi_extra` of a route whose body is read by hand: media type → body type (and a JSON example)."""
    media: dict[str, dict[str, Any]] = {}
    for media_type, type_ in content.items():
        media[media_type] = {"schema": inline_json_schema(type_)}
        if example is not None and media_type == "application/json":
            media[media_type]["example"] = example
    return {"requestBody": {"required": True, "content": media}}
