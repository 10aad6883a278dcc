"""FastAPI app serving one vendor model in three vendor wire formats.

- raw (SageMaker-style): `POST /predict`, body = the image bytes;
- TF-Serving / Vertex: `POST /v1/models/{name}:predict`, `{"instances": [{"b64": ...}]}`;
- Open Inference Protocol v2 (KServe/Triton): `POST /v2/models/{name}/infer`, one BYTES input
  of base64 images, plus the v2 health and metadata routes, and KServe v1's liveness `GET /` and
  model status `GET /v1/models/{name}`.

The model has one version, `MODEL_VERSION` ("1", as its metadata and status list it): every model
path also answers under `/versions/1` (`/v1/models/{name}/versions/1:predict`,
`/v2/models/{name}/versions/1/infer`, ...), and another version is a 404 `model_not_found`.

Errors are JSON `{"error": {"code", "message", "request_id"}}` (on /v1/ and /v2/ paths the
protocols' `{"error": "<message>"}`, with the code and request id beside it) with a 4xx status for
bad input, never a bare 500. `X-Request-ID` is taken from the request (or made), echoed and logged.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__
from service.api.logging import configure_logging
from service.demo.decoding import InputLimits, decode_base64
from service.demo.predictor import EncodedImage, ImagePrediction, VendorPredictor
from service.demo.schemas import (
    Prediction,
    TFPredictRequest,
    TFPredictResponse,
    V2InferRequest,
    V2InferResponse,
    V2ModelMetadata,
    V2Tensor,
    V2TensorMetadata,
)
from service.errors import (
    BadRequest,
    GatewayError,
    InvalidShape,
    ModelNotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_body,
)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,200}")  # printable, no spaces: safe to log and echo
_RAW_CONTENT_TYPES = ("image/", "application/octet-stream")
MODEL_VERSION = "1"  # the model's one version, listed by its metadata and status, served under /versions/1
SchemaT = TypeVar("SchemaT", bound=BaseModel)


def _request_id(request: Request) -> str:
    """The client's X-Request-ID if it is a sane token, else a fresh one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex


def _error_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    return JSONResponse(error_body(request.url.path, code, message, request_id), status_code=status, headers=headers)


async def _read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, refusing it as soon as it passes `limit_bytes` (declared or streamed).

    Raises:
        PayloadTooLarge: the body is over the limit.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLarge(f"body of {declared} bytes, the limit is {limit_bytes}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLarge(f"body over the limit of {limit_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(body: bytes, schema: type[SchemaT]) -> SchemaT:
    """Validate a JSON body against a pydantic schema.

    Raises:
        BadRequest: empty body or not JSON.
        InvalidShape: JSON that does not match the schema (the first problems are named).
    """
    if not body.strip():
        raise BadRequest("empty body: send a JSON object")
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if any(error["type"] == "json_invalid" for error in errors):
            raise BadRequest("the body is not valid JSON") from exc
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:3])
        raise InvalidShape(f"the body does not match {schema.__name__}: {problems}") from exc


def _check_name(name: str, predictor: VendorPredictor) -> None:
    if name != predictor.name:
        raise ModelNotFound(f"model {name!r} not found; this server serves {predictor.name!r}")


def _check_version(name: str, version: str, predictor: VendorPredictor) -> None:
    _check_name(name, predictor)
    if version != MODEL_VERSION:
        raise ModelNotFound(
            f"model {name!r} version {version!r} not found; this server serves version {MODEL_VERSION!r}"
        )


def _to_wire(prediction: ImagePrediction) -> Prediction:
    return Prediction(
        label=prediction.label, class_name=prediction.class_name, probabilities=list(prediction.probabilities)
    )


def _v2_images(request: V2InferRequest, limits: InputLimits) -> list[EncodedImage]:
    """The base64 images of a v2 request's single BYTES input of shape [N].

    Raises:
        InvalidShape: not exactly one input, not BYTES, a shape that is not [len(data)], or
            data items that are not strings.
        BadRequest, PayloadTooLarge: see `decode_base64`.
    """
    if len(request.inputs) != 1:
        raise InvalidShape(f'expected exactly one input ("image"), got {len(request.inputs)}')
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidShape(f"input {tensor.name!r} must have datatype BYTES (base64 images), got {tensor.datatype}")
    if tensor.shape != [len(tensor.data)]:
        raise InvalidShape(
            f"input {tensor.name!r} has shape {tensor.shape} but {len(tensor.data)} data items; "
            "use shape [N] for N images"
        )
    if len(tensor.data) > limits.max_batch:
        raise PayloadTooLarge(f"{len(tensor.data)} images in one request, the limit is {limits.max_batch}")
    whats = [f"inputs[0].data[{i}]" for i in range(len(tensor.data))]
    return [
        EncodedImage(what, decode_base64(item, limits, what)) for what, item in zip(whats, tensor.data, strict=True)
    ]


def _v2_outputs(predictions: list[ImagePrediction]) -> list[V2Tensor]:
    n = len(predictions)
    classes = len(predictions[0].probabilities) if predictions else 0
    return [
        V2Tensor(
            name="probabilities",
            shape=[n, classes],
            datatype="FP32",
            data=[p for prediction in predictions for p in prediction.probabilities],
        ),
        V2Tensor(name="label", shape=[n], datatype="INT64", data=[p.label for p in predictions]),
    ]


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as `{"error": {...}}`: ours, routing 404/405, and FastAPI validation."""

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(request, exc.status_code, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(request, exc.status_code, code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(request, 422, InvalidShape.code, str(exc.errors()[:3]))


def _install_request_ids(app: FastAPI) -> None:
    """Take or make each request's id, echo it in the response header, and log the request with it."""

    @app.middleware("http")
    async def request_id_and_log(request: Request, call_next) -> Response:  # noqa: ANN001 (Starlette's type)
        request.state.request_id = _request_id(request)
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # the last line of defence: log it, answer JSON, keep the request id
            log.exception("unhandled error", extra={"request_id": request.state.request_id})
            response = _error_response(request, 500, GatewayError.code, "internal error")
        response.headers[REQUEST_ID_HEADER] = request.state.request_id
        elapsed_ms = (time.perf_counter() - started) * 1e3
        log.info(
            "%s %s -> %d in %.1f ms",
            request.method,
            request.url.path,
            response.status_code,
            elapsed_ms,
            extra={
                "request_id": request.state.request_id,
                "status": response.status_code,
                "duration_ms": round(elapsed_ms, 3),
            },
        )
        return response


def _predictor(request: Request) -> VendorPredictor:
    """The app's predictor (`app.state.predictor`, set by `create_vendor_app`)."""
    predictor: VendorPredictor = request.app.state.predictor
    return predictor


async def _run(predictor: VendorPredictor, images: list[EncodedImage]) -> list[ImagePrediction]:
    """Predict in a worker thread, so the event loop keeps serving while the model runs."""
    return await run_in_threadpool(predictor.predict, images)


async def predict_raw(request: Request) -> Prediction:
    """SageMaker-style: the body is one encoded image (`Content-Type: image/*`)."""
    predictor = _predictor(request)
    content_type = request.headers.get("content-type", "").lower()
    if content_type and not content_type.startswith(_RAW_CONTENT_TYPES):
        raise UnsupportedMediaType(f"Content-Type {content_type!r}: send the image bytes as image/*")
    body = await _read_body(request, predictor.limits.max_image_bytes)
    (prediction,) = await _run(predictor, [EncodedImage("body", body)])
    return _to_wire(prediction)


async def predict_tf(name: str, request: Request) -> TFPredictResponse:
    """TF-Serving / Vertex AI row format with binary instances."""
    predictor = _predictor(request)
    limits = predictor.limits
    _check_name(name, predictor)
    parsed = _parse_json(await _read_body(request, limits.max_body_bytes), TFPredictRequest)
    if len(parsed.instances) > limits.max_batch:
        raise PayloadTooLarge(f"{len(parsed.instances)} instances, the limit is {limits.max_batch}")
    images = [
        EncodedImage(f"instances[{i}].b64", decode_base64(item.b64, limits, f"instances[{i}].b64"))
        for i, item in enumerate(parsed.instances)
    ]
    return TFPredictResponse(predictions=[_to_wire(p) for p in await _run(predictor, images)])


async def status_tf(name: str, request: Request) -> dict:
    """TF-Serving model status."""
    _check_name(name, _predictor(request))
    return {
        "model_version_status": [
            {"version": MODEL_VERSION, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


async def infer_v2(name: str, request: Request) -> V2InferResponse:
    """Open Inference Protocol v2 inference."""
    predictor = _predictor(request)
    _check_name(name, predictor)
    parsed = _parse_json(await _read_body(request, predictor.limits.max_body_bytes), V2InferRequest)
    predictions = await _run(predictor, _v2_images(parsed, predictor.limits))
    return V2InferResponse(
        model_name=predictor.name,
        model_version=MODEL_VERSION,
        id=parsed.id or request.state.request_id,
        outputs=_v2_outputs(predictions),
    )


async def metadata_v2(name: str, request: Request) -> V2ModelMetadata:
    """v2 model metadata: one BYTES input, two outputs."""
    predictor = _predictor(request)
    _check_name(name, predictor)
    classes = len(predictor.class_names)
    return V2ModelMetadata(
        name=predictor.name,
        versions=[MODEL_VERSION],
        platform="pytorch",
        inputs=[V2TensorMetadata(name="image", datatype="BYTES", shape=[-1])],
        outputs=[
            V2TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, classes]),
            V2TensorMetadata(name="label", datatype="INT64", shape=[-1]),
        ],
    )


# The handlers below have no docstring, as before: FastAPI would publish one as the route's description.
async def model_ready_v2(name: str, request: Request) -> dict:
    predictor = _predictor(request)
    _check_name(name, predictor)
    return {"name": predictor.name, "ready": True}


async def server_metadata_v2() -> dict:
    return {"name": "zipgate-demo-vendor", "version": __version__, "extensions": []}


async def ready_v2() -> dict:
    return {"ready": True}  # the model loads in the factory, so a running server is ready


async def live_v2() -> dict:
    return {"live": True}


async def live_v1() -> dict:
    """KServe v1 liveness (its ModelServer's `GET /`)."""
    return {"status": "alive"}


async def healthz(request: Request) -> dict:
    predictor = _predictor(request)
    return {"status": "ok", "model": predictor.name, "attack": predictor.attack}


# A model version's paths: the version checked, then the model's own handler.
ModelHandler = Callable[[str, Request], Awaitable[Any]]


def _of_version(handler: ModelHandler) -> Callable[[str, str, Request], Awaitable[Any]]:
    """`handler` under `/versions/{version}`: the version checked first (another is a 404 model_not_found)."""

    async def versioned(name: str, version: str, request: Request) -> Any:
        _check_version(name, version, _predictor(request))
        return await handler(name, request)

    versioned.__doc__ = handler.__doc__  # the route's description, as on the model's own path
    return versioned


def _install_version_routes(app: FastAPI) -> None:
    """The model's paths under `/versions/{version}`, as TF-Serving and the v2 protocol name a version."""
    app.add_api_route(
        "/v1/models/{name}/versions/{version}:predict",
        _of_version(predict_tf),
        methods=["POST"],
        response_model=TFPredictResponse,
    )
    app.add_api_route("/v1/models/{name}/versions/{version}", _of_version(status_tf), methods=["GET"])
    app.add_api_route(
        "/v2/models/{name}/versions/{version}/infer",
        _of_version(infer_v2),
        methods=["POST"],
        response_model=V2InferResponse,
        response_model_exclude_none=True,
    )
    app.add_api_route(
        "/v2/models/{name}/versions/{version}",
        _of_version(metadata_v2),
        methods=["GET"],
        response_model=V2ModelMetadata,
    )
    app.add_api_route("/v2/models/{name}/versions/{version}/ready", _of_version(model_ready_v2), methods=["GET"])


def _install_routes(app: FastAPI) -> None:
    """Register the three wire formats' routes and the health routes; the handlers find the model in `app.state`."""
    app.add_api_route("/predict", predict_raw, methods=["POST"], response_model=Prediction)
    app.add_api_route("/v1/models/{name}:predict", predict_tf, methods=["POST"], response_model=TFPredictResponse)
    app.add_api_route("/v1/models/{name}", status_tf, methods=["GET"])
    app.add_api_route(
        "/v2/models/{name}/infer",
        infer_v2,
        methods=["POST"],
        response_model=V2InferResponse,
        response_model_exclude_none=True,
    )
    app.add_api_route("/v2/models/{name}", metadata_v2, methods=["GET"], response_model=V2ModelMetadata)
    app.add_api_route("/v2/models/{name}/ready", model_ready_v2, methods=["GET"])
    app.add_api_route("/v2", server_metadata_v2, methods=["GET"])
    app.add_api_route("/v2/health/ready", ready_v2, methods=["GET"])
    app.add_api_route("/v2/health/live", live_v2, methods=["GET"])
    app.add_api_route("/", live_v1, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    _install_version_routes(app)


def create_vendor_app(model_dir: Path, model_name: str = "fmnist", limits: InputLimits = InputLimits()) -> FastAPI:
    """The demo vendor API for the model in `model_dir`, served under `model_name`.

    Args:
        model_dir: a folder written by `train_vendor` (config.json + model.safetensors).
        model_name: the `{name}` of the TF-Serving and v2 routes.
        limits: request size limits.

    Returns:
        The FastAPI app; the model is loaded here, so a bad folder fails at start, not per request.

    Raises:
        FileNotFoundError, ValueError, RuntimeError: see `load_vendor`.
    """
    predictor = VendorPredictor(Path(model_dir), model_name, limits)
    app = FastAPI(title=f"zipgate demo vendor ({model_name}, {predictor.attack})", version=__version__)
    app.state.predictor = predictor
    _install_error_handlers(app)
    _install_request_ids(app)
    _install_routes(app)
    return app


def run_demo_vendor(model_dir: Path, host: str = "127.0.0.1", port: int = 9000, model_name: str = "fmnist") -> None:
    """Serve `model_dir` with uvicorn until interrupted (blocking).

    Raises:
        FileNotFoundError, ValueError, RuntimeError: the model folder is missing or invalid.
    """
    configure_logging("info")  # JSON lines, one object each, as the gateway logs (uvicorn's own included)
    uvicorn.run(create_vendor_app(Path(model_dir), model_name), host=host, port=port, log_config=None)
