"""KServe's own Python client (`InferenceRESTClient`, v1 and v2) making every call it has against one server.

It runs in the KServe venv (.venv-kserve, built by scripts/setup.sh), as tests/kserve_vendor.py
does; tests/test_kserve_upstream.py runs it against KServe's ModelServer directly and through the
gateway and compares the outcomes:

    .venv-kserve/bin/python tests/kserve_client_calls.py http://127.0.0.1:8085 fmnist image.png

It prints one JSON object: call name → {"ok": true, "value": ...} (the part of the answer that
purification does not change: booleans, output names and shapes, prediction keys) or
{"ok": false, "status": <HTTP status, or null when no answer came>}.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, InferResponse, RESTConfig

UNKNOWN_MODEL = "no-such-model"


def _summary(answer: Any) -> Any:
    """What purification leaves alone: a v2 answer's output names, shapes and types; a v1 answer's keys."""
    if isinstance(answer, InferResponse):
        return sorted((o.name, list(o.shape), o.datatype) for o in answer.outputs)
    if isinstance(answer, dict) and isinstance(answer.get("predictions"), list):
        return [sorted(p) if isinstance(p, dict) else type(p).__name__ for p in answer["predictions"]]
    return answer


def _v2_request(text: str, *, binary: bool) -> InferRequest:
    tensor = InferInput(name="image", shape=[1], datatype="BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_), binary_data=binary)
    return InferRequest(model_name="", infer_inputs=[tensor], request_id="kserve-client-1")


async def _calls(base: str, model: str, text: str) -> dict[str, dict[str, Any]]:
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=120))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "v1 is_server_live": lambda: v1.is_server_live(base),
        "v1 is_model_ready": lambda: v1.is_model_ready(base, model),
        "v1 is_model_ready unknown": lambda: v1.is_model_ready(base, UNKNOWN_MODEL),
        "v1 infer b64 objects": lambda: v1.infer(base, {"instances": [{"b64": text}]}, model),
        "v1 infer bare base64": lambda: v1.infer(base, {"instances": [text]}, model),
        "v1 infer unknown model": lambda: v1.infer(base, {"instances": [{"b64": text}]}, UNKNOWN_MODEL),
        "v1 explain": lambda: v1.explain(base, {"instances": [{"b64": text}]}, model),
        "v2 is_server_live": lambda: v2.is_server_live(base),
        "v2 is_server_ready": lambda: v2.is_server_ready(base),
        "v2 is_model_ready": lambda: v2.is_model_ready(base, model),
        "v2 is_model_ready unknown": lambda: v2.is_model_ready(base, UNKNOWN_MODEL),
        "v2 infer json": lambda: v2.infer(base, _v2_request(text, binary=False), model),
        "v2 infer binary": lambda: v2.infer(base, _v2_request(text, binary=True), model),
        "v2 infer unknown model": lambda: v2.infer(base, _v2_request(text, binary=False), UNKNOWN_MODEL),
    }
    outcomes: dict[str, dict[str, Any]] = {}
    try:
        for name, call in calls.items():
            try:
                outcomes[name] = {"ok": True, "value": _summary(await call())}
            except httpx.HTTPStatusError as exc:
                outcomes[name] = {"ok": False, "status": exc.response.status_code}
            except Exception as exc:  # noqa: BLE001 (any other failure of the call is its outcome)
                outcomes[name] = {"ok": False, "status": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        await v1.close()
        await v2.close()
    return outcomes


def main() -> None:
    base, model, image_path = sys.argv[1:4]
    text = base64.b64encode(Path(image_path).read_bytes()).decode()
    print(json.dumps(asyncio.run(_calls(base, model, text))))


if __name__ == "__main__":
    main()
