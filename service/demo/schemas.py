"""Wire formats of the demo vendor: TF-Serving/Vertex JSON and Open Inference Protocol v2."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Prediction(BaseModel):
    """One image's result, shared by the raw and TF-Serving formats."""

    label: int
    class_name: str
    probabilities: list[float]


class B64Instance(BaseModel):
    """A TF-Serving binary instance: `{"b64": "<base64 image>"}`."""

    b64: str


class TFPredictRequest(BaseModel):
    """`POST /v1/models/{name}:predict` body (extra keys such as `signature_name` are ignored)."""

    instances: list[B64Instance] = Field(min_length=1)


class TFPredictResponse(BaseModel):
    """TF-Serving row format: one prediction per instance, in order."""

    predictions: list[Prediction]


class V2Tensor(BaseModel):
    """A tensor of the Open Inference Protocol v2 (inputs and outputs)."""

    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """`POST /v2/models/{name}/infer` body: one BYTES input of base64 images, shape [N]."""

    id: str | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    """v2 response: `probabilities` (FP32, [N, 10], row-major) and `label` (INT64, [N])."""

    model_name: str
    model_version: str | None = None
    id: str
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    """Name, datatype and shape (−1 = any) of a model input or output."""

    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    """`GET /v2/models/{name}`."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
