"""The upstream settings: the vendor API's address, protocol, models, timeouts and limits, and the v2 image input.

A field mixin that `service.config.Settings` composes (env `ZIPGATE_<FIELD>`, see there).
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from service.http_paths import model_name_problem, reserved_path_problem
from service.upstream.client import DEFAULT_MAX_RESPONSE_BYTES
from service.upstream.codec import UpstreamProtocol
from service.upstream.failures import redact_url
from service.upstream.v2_input import PixelLayout, TensorDatatype, V2Input


class UpstreamFields(BaseModel):
    """How the gateway reaches the vendor; `upstream_input` bundles the v2 image input."""

    # repr=False: credentials in it (user:pass@) must not reach a log line through repr(settings).
    upstream_url: str = Field("http://127.0.0.1:9000", repr=False, description="Vendor API root URL.")
    upstream_protocol: UpstreamProtocol = Field(UpstreamProtocol.RAW, description="raw | tfserving | v2.")
    upstream_model: str = Field("fmnist", min_length=1, description="Model name in tfserving/v2 paths.")
    upstream_raw_path: str = Field("/predict", description="Vendor path of the raw protocol; also the sidecar path.")
    upstream_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Vendor models the sidecar exposes (comma-separated; empty = all)."
    )
    upstream_connect_timeout_s: float = Field(2.0, gt=0, description="TCP connect timeout to the vendor.")
    upstream_timeout_s: float = Field(30.0, gt=0, description="Bound on one vendor call, retries included.")
    upstream_retries: int = Field(2, ge=0, le=10, description="Resends after failures to connect only.")
    upstream_max_connections: int = Field(100, ge=1, description="Connection pool size to the vendor.")
    upstream_max_response_bytes: int = Field(
        DEFAULT_MAX_RESPONSE_BYTES,
        ge=1,
        description="Limit on a vendor answer's decoded body; larger answers are cut off with a 502.",
    )
    # The v2 model's image input (`V2Input`): encoded images (BYTES, base64) or pixels (FP32 in [0, 1], UINT8).
    upstream_input_name: str = Field("image", min_length=1, description="Name of the v2 model's image input.")
    upstream_input_datatype: TensorDatatype = Field(
        TensorDatatype.BYTES,
        description="BYTES (encoded images, base64) | FP32 (pixels in [0, 1]) | UINT8 (pixels 0-255).",
    )
    upstream_input_shape: Annotated[tuple[int, ...], NoDecode] = Field(
        (),
        description="One image's shape for "
        "FP32/UINT8 in upstream_input_layout order, "
        "e.g. '1,28,28' (images are converted and "
        "resized to it); empty for BYTES.",
    )
    upstream_input_layout: PixelLayout = Field(
        PixelLayout.CHW, description="chw | hwc: where a pixel input keeps its channels."
    )
    upstream_model_check_ttl_s: float = Field(
        10.0,
        ge=0,
        description="Sidecar: ask the vendor whether it serves "
        "a model before purifying for it, and remember the answer this "
        "long (0 = do not ask).",
    )

    @field_validator("upstream_url")
    @classmethod
    def _check_upstream_url(cls, url: str) -> str:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:  # not a ValueError: pydantic would let it escape unformatted
            raise ValueError(f"is not a valid URL ({exc}): {redact_url(url)!r}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"must be an absolute http(s) URL such as http://vendor:8080, got {redact_url(url)!r}")
        if parsed.query or parsed.fragment:
            raise ValueError(f"must not carry a query or fragment, got {redact_url(url)!r}")
        return url.rstrip("/")

    @field_validator("upstream_raw_path")
    @classmethod
    def _check_raw_path(cls, path: str) -> str:
        if not path.startswith("/") or path == "/":
            raise ValueError(f"must be a path such as '/predict' or '/invocations', got {path!r}")
        if problem := reserved_path_problem(path):
            raise ValueError(problem)
        return path

    @field_validator("upstream_models", "upstream_input_shape", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        # The env form is "a,b" or "1,28,28" (pydantic-settings would expect JSON); a file may give a list.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("upstream_models")
    @classmethod
    def _check_models(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        problems = [problem for name in names if (problem := model_name_problem(name))]
        if problems:
            raise ValueError("; ".join(problems))
        return names

    @property
    def upstream_input(self) -> V2Input:
        """The v2 model's image input (validated with the settings)."""
        return V2Input(
            self.upstream_input_name,
            self.upstream_input_datatype,
            self.upstream_input_shape,
            self.upstream_input_layout,
        )
