"""The gateway's settings: one pydantic-settings class, from env (`ZIPGATE_*`) and a config file.

Precedence, highest first: keyword arguments (the CLI), environment variables
(`ZIPGATE_STEPS=10`), the config file (`--config F` or `ZIPGATE_CONFIG_FILE=F`; YAML or JSON,
keys are the field names without the prefix), then the defaults below. The defaults run the
shipped Fashion-MNIST model on CPU against the demo vendor on 127.0.0.1:9000.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import httpx
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from service.config_file import ENV_PREFIX, ConfigError, ConfigFileSource
from service.config_sources import SettingSource, SourceKind, config_file_path, env_variable, setting_sources
from service.cpus import default_torch_threads
from service.paths import resolve_model_path
from service.purify.options import (
    DEFAULT_DTYPE,
    Acceleration,
    CompileMode,
    DType,
    Method,
    SmallImageFit,
    ZipConfig,
    check_eta,
    check_guidance_power,
    check_transforms,
)
from service.purify.strength import Strength, StrengthChoice, apply_strength
from service.shadow.labels import OTHER_LABEL, LabelExtractor, bounded_label
from service.shadow.policy import DefensePolicy
from service.upstream.base import UpstreamProtocol
from service.upstream.client import DEFAULT_MAX_RESPONSE_BYTES
from service.upstream.failures import redact_url
from service.upstream.v2_input import PixelLayout, TensorDatatype, V2Input

# Paths the gateway serves itself: a raw sidecar path must not shadow them (/predict is the
# exception: a raw image body on it is routed to the sidecar, see api/routes_predict.py).
RESERVED_PATHS = (
    "/purify",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/v1/",
    "/v2/",
    "/targets",
)
# A vendor model name as a path segment: nothing a server or proxy could decode or resolve into
# another path (no "/", backslash or "%", no dot segments); see api/routes_sidecar.py.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
# max_request_pixels unless set, or max_image_pixels when that is larger.
DEFAULT_MAX_REQUEST_PIXELS = 4096 * 4096


def model_name_problem(name: str) -> str | None:
    """Why `name` cannot be a vendor model name (or version) in a path, or None when it can."""
    if not MODEL_NAME_PATTERN.fullmatch(name):
        return f"{name!r} may hold only letters, digits, '_', '.' and '-', unencoded"
    if name in (".", ".."):
        return f"{name!r} is a dot segment, not a name"
    return None


class LogLevel(enum.StrEnum):
    """Log levels accepted by `log_level` (lower-case, as uvicorn spells them)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Settings(BaseSettings):
    """Everything the gateway can be configured with; see the README's Configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, use_enum_values=False, validate_default=True
    )

    config_file: Path | None = Field(None, description="YAML/JSON file with further settings (env wins over it).")

    # --- server ---
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 in a container.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 = any free port).")
    log_level: LogLevel = Field(LogLevel.INFO, description="Minimum level of the JSON logs.")
    # Below the common 1024 open-files limit, with room for the vendor pool and the model files.
    # At least 2: uvicorn counts the request's own connection, so with 1 every request would get 503.
    max_connections: int = Field(
        512,
        ge=2,
        description="Open connections at most (uvicorn's limit_concurrency): "
        "a request arriving with this many open, its own included, gets uvicorn's "
        "plain-text 503 (/healthz too).",
    )

    # --- purification (the engine) ---
    purification_enabled: bool = Field(True, description="False: forward images without purifying them.")
    model_path: Path = Field(Path("models/fmnist-ddpm"), description="diffusers UNet2DModel directory.")
    # ZIP's knobs: defaults and validation are `ZipConfig`'s (one source; jblur:4 and λ = 0.25 are chosen
    # by the worst case over the attack zoo, docs/defense.md, "The default"). `zip_config` bundles them.
    transforms: str = Field(
        ZipConfig.transforms, description="Degradations, e.g. 'blur:4' or 'blur:4,gray' (averaged)."
    )
    steps: int = Field(ZipConfig.steps, ge=1, le=1000, description="Sampling steps S of the reverse process.")
    guidance_power: float = Field(
        ZipConfig.guidance_power, description="λ of the time-dependent mix (> 0); 'inf' disables it."
    )
    eta: float = Field(ZipConfig.eta, description="η of the DDIM step, in [0, 1] (1 = ancestral noise).")
    noise_start: float = Field(
        ZipConfig.noise_start,
        gt=0.0,
        le=1.0,
        description="t*/T: start from the input noised to t* instead of pure noise (1); more "
        "clean accuracy, weaker on low-frequency triggers (docs/defense.md).",
    )
    travel_length: int = Field(
        ZipConfig.travel_length, ge=1, description="RePaint time travel L: jump back L steps (1 = no time travel)."
    )
    travel_repeat: int = Field(
        ZipConfig.travel_repeat,
        ge=1,
        description="RePaint time travel R: every L steps, go back and redo them R - 1 more times "
        "(L = R = 2 costs 2.8x the forwards at 20 steps; docs/defense.md, 'Time travel').",
    )
    method: Method = Field(
        ZipConfig.method,
        description="global: ZIP over the whole image; local: localise the trigger, repaint those blocks and "
        "keep the rest, then a DiffPure pass at polish_noise (docs/defense.md).",
    )
    polish_noise: float = Field(
        ZipConfig.polish_noise,
        ge=0.0,
        lt=1.0,
        description="method=local: t/T of the DiffPure pass over the restored image (0 skips it).",
    )
    strength: Strength = Field(
        Strength.BALANCED,
        description="Strength preset of requests that do not send ?strength=: light (λ ≥ 0.5, t* ≤ 0.6), "
        "balanced (the knobs above), strict (λ ≤ 0.25, at least 3 votes). docs/defense.md, 'Strength presets'.",
    )
    vendor_mirror: bool = Field(
        False,
        description="Mirror purified images left-right before the vendor sees them "
        "(/predict and sidecar; /purify returns them unmirrored). Moves a trigger stamped "
        "at a fixed place to where the backdoor does not look; only for vendors whose "
        "task is mirror-invariant (docs/defense.md).",
    )
    small_image_fit: SmallImageFit = Field(
        SmallImageFit.PAD,
        description="An image smaller than the model's "
        "canvas: 'pad' (centred on black, as the shipped model was trained on "
        "28² in 32²) or 'resize' (scaled up).",
    )
    devices: str = Field("auto", description="'auto' (every CUDA device, else CPU) or a list: 'cuda:0,cuda:1'.")
    dtype: DType = Field(DEFAULT_DTYPE, description="ε-model compute dtype: auto (fp16 on CUDA) | fp32 | bf16 | fp16.")
    channels_last: bool = Field(False, description="The UNet's weights and inputs in NHWC order (for GPUs).")
    compile_mode: CompileMode = Field(
        CompileMode.OFF,
        description="torch.compile of the UNet: off | default | reduce-overhead (CUDA graphs) | "
        "max-autotune. Batches are padded to power-of-two buckets, each compiled before ready.",
    )
    torch_threads: int = Field(
        default_factory=default_torch_threads,
        ge=1,
        description="CPU threads for torch "
        "(default: OMP_NUM_THREADS if set, else usable cores - 1, at least 1; usable = "
        "affinity, capped by a cgroup CPU quota). Torch's own one per core collapses next to "
        "other CPU load.",
    )

    # --- worker pool ---
    max_batch_size: int = Field(16, ge=1, description="Images per purification batch at most.")
    max_wait_ms: float = Field(10.0, ge=0, description="How long a batch waits to fill before it runs.")
    queue_limit: int = Field(256, ge=1, description="Images queued at most; beyond it requests get 429.")
    request_timeout_s: float = Field(60.0, gt=0, description="Default deadline of a request.")
    max_request_timeout_s: float = Field(300.0, gt=0, description="Upper bound of an X-Request-Timeout header.")
    drain_timeout_s: float = Field(30.0, ge=0, description="On shutdown, time given to queued and running work.")
    adaptive_steps_min: int | None = Field(None, ge=1, description="Opt-in: fewer steps (down to this) under load.")
    adaptive_target_wait_ms: float = Field(1000.0, gt=0, description="Queue wait above which adaptive steps start.")

    # --- upstream (the vendor API) ---
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

    # --- limits and security ---
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1, description="Request body size limit.")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1, description="Encoded size limit of one image.")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="Width × height limit, checked before decoding.")
    # One request at 4096² peaks under 1.5 GiB (README, Configuration; tests/test_image_limits.py). The
    # default follows a raised max_image_pixels, so a deployment that raised only that still starts.
    max_request_pixels: int = Field(
        default_factory=lambda data: max(data.get("max_image_pixels", 0), DEFAULT_MAX_REQUEST_PIXELS),
        ge=1,
        description="Width × height summed over a request's images, checked "
        "before decoding (default: max(max_image_pixels, 4096²)).",
    )
    body_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Total upload time: from a request's arrival to "
        "the end of its body, however fast it flows meanwhile; a slower body gets "
        "408. The default lets a max_request_bytes body (16 MiB) arrive at 0.56 MB/s "
        "(4.5 Mbit/s) or faster.",
    )
    max_images_per_request: int = Field(64, ge=1, description="Images in one request at most.")
    api_key: SecretStr | None = Field(None, description="If set: required as 'Authorization: Bearer' or X-API-Key.")
    public_docs: bool | None = Field(
        None, description="Serve /docs, /redoc, /openapi.json without the API key (default: only when no key is set)."
    )

    # --- votes and shadow mode (docs/design.md, "Votes" and "Shadow mode") ---
    votes: int = Field(
        1,
        ge=1,
        description="Purify each image K times (K seeds, one batch), call the vendor K "
        "times, answer with the majority label's response; ?votes=K overrides, up to max_votes.",
    )
    max_votes: int = Field(5, ge=1, description="Upper bound of votes and of a request's ?votes=K.")
    vote_label: str = Field(
        "label",
        description="Where a prediction's label lives, for votes and shadow "
        "mode: a dotted path ('label', 'outputs.0.class') or 'argmax:<path>' over scores.",
    )
    shadow_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of /predict requests whose raw images the "
        "vendor also sees, after the client has its answer, to compare labels (0 = off).",
    )
    shadow_allow_header: bool = Field(
        False, description="Let a request ask for the comparison with 'X-Zipgate-Shadow: 1', whatever shadow_rate says."
    )
    shadow_max_inflight: int = Field(4, ge=1, description="Shadow vendor calls at once; more are dropped.")
    shadow_max_labels: int = Field(
        100,
        ge=1,
        description="Distinct labels in the disagreement metric; later ones are counted as 'other'. Each is "
        "bounded first: over 64 characters or unprintable, it is 'h:' + 12 hex digits of its SHA-256.",
    )
    shadow_capture_dir: Path | None = Field(
        None,
        description="Opt-in: write each disagreement's raw and purified "
        "images and vendor answers here (stores user images; see README).",
    )
    shadow_capture_max_files: int = Field(
        5000,
        ge=5,
        description="Files the capture folder holds at most (5 per record); the oldest records go first "
        "(records deleted by hand are dropped from the count).",
    )
    shadow_capture_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1, description="Bytes the capture folder holds at most; the oldest records go first."
    )

    # --- the closed loop (docs/design.md, "The closed loop") ---
    policy: DefensePolicy = Field(
        DefensePolicy.ALWAYS,
        description="Which answer /predict returns: always (the purified image's), on_alarm (the raw image's unless "
        "its raw label is a named backdoor target), until_alarm (purified until a target is named, then as "
        "on_alarm). The loop policies purify every image and ask the vendor about the raw one too (2 calls).",
    )
    suspected_targets: tuple[str, ...] = Field(
        (),
        description="Raw labels held as backdoor targets from the start (comma list), e.g. the label the "
        "Prometheus alert named; the gateway's own alarm and PUT /targets/{label} add more.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then env, then the config file, then defaults."""
        init_kwargs = init_settings() if callable(init_settings) else {}
        return init_settings, env_settings, ConfigFileSource(settings_cls, init_kwargs, env_settings)

    # ZipConfig's own checks, per field, so that an error names the setting and its env variable.
    _check_transforms = field_validator("transforms")(check_transforms)
    _check_guidance_power = field_validator("guidance_power")(check_guidance_power)
    _check_eta = field_validator("eta")(check_eta)

    @field_validator("model_path")
    @classmethod
    def _find_shipped_model(cls, path: Path) -> Path:
        # The default names the shipped model relative to the project: found from any working directory.
        return resolve_model_path(path)

    @field_validator("torch_threads", mode="before")
    @classmethod
    def _default_torch_threads(cls, threads: Any) -> Any:
        # null in a file, or ZIPGATE_TORCH_THREADS="" / "auto": the default, never torch's one per core.
        return default_torch_threads() if threads is None or str(threads).strip().lower() in ("", "auto") else threads

    @field_validator("vote_label")
    @classmethod
    def _check_vote_label(cls, value: str) -> str:
        LabelExtractor.parse(value)  # raises LabelSpecError (a ValueError) naming the bad segment
        return value

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
        if any(
            path == reserved.rstrip("/") or path.startswith(reserved.rstrip("/") + "/") for reserved in RESERVED_PATHS
        ):
            raise ValueError(f"{path!r} is served by the gateway itself; reserved: {', '.join(RESERVED_PATHS)}")
        return path

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, key: SecretStr | None) -> SecretStr | None:
        # ZIPGATE_API_KEY="" in a compose file means "no key", not "the empty key".
        return key if key is not None and key.get_secret_value() else None

    @field_validator("upstream_models", "suspected_targets", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        # The env form is "a,b" (pydantic-settings would expect JSON); a file may give a list.
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("suspected_targets")
    @classmethod
    def _check_targets(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if OTHER_LABEL in labels:
            raise ValueError(f"'{OTHER_LABEL}' is the bucket of labels past shadow_max_labels, not one vendor label")
        return tuple(bounded_label(label) for label in labels)  # as the shadow counters name labels

    @field_validator("upstream_input_shape", mode="before")
    @classmethod
    def _split_shape(cls, value: Any) -> Any:
        # The env form is "1,28,28"; a file may give a list.
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

    @field_validator("public_docs")
    @classmethod
    def _docs_public_without_key(cls, public: bool | None, info: ValidationInfo) -> bool:
        # Unset: the API pages are as open as the API (they list every route and parameter).
        return public if public is not None else info.data.get("api_key") is None

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError(
                f"request_timeout_s ({self.request_timeout_s}) exceeds max_request_timeout_s "
                f"({self.max_request_timeout_s}); raise the maximum or lower the default"
            )
        if self.adaptive_steps_min is not None and self.adaptive_steps_min > self.steps:
            raise ValueError(
                f"adaptive_steps_min ({self.adaptive_steps_min}) exceeds steps ({self.steps}); "
                "it is the lower bound adaptive steps may fall to"
            )
        if self.votes > self.max_votes:
            raise ValueError(f"votes ({self.votes}) exceeds max_votes ({self.max_votes})")
        if self.policy.asks_raw and not self.purification_enabled:
            raise ValueError(f"policy={self.policy} compares purified and raw answers; it needs purification_enabled")
        if (needed := self.strength_choice(self.strength).votes) > self.max_votes:
            raise ValueError(f"strength '{self.strength}' purifies {needed} times; max_votes is {self.max_votes}")
        if self.max_image_bytes > self.max_request_bytes:
            raise ValueError(
                f"max_image_bytes ({self.max_image_bytes}) exceeds max_request_bytes ({self.max_request_bytes}); "
                "one image must fit in a request"
            )
        if self.max_image_pixels > self.max_request_pixels:
            raise ValueError(
                f"max_image_pixels ({self.max_image_pixels}) exceeds max_request_pixels ({self.max_request_pixels}); "
                "one image must fit in a request's pixel budget"
            )
        try:
            self.upstream_input  # noqa: B018 (built to be checked)
        except ValueError as exc:
            raise ValueError(f"upstream_input_*: {exc}") from None
        return self

    @property
    def upstream_input(self) -> V2Input:
        """The v2 model's image input (validated with the settings)."""
        return V2Input(
            self.upstream_input_name,
            self.upstream_input_datatype,
            self.upstream_input_shape,
            self.upstream_input_layout,
        )

    @property
    def zip_config(self) -> ZipConfig:
        """ZIP's knobs as the engine takes them."""
        return ZipConfig.from_knobs(self)

    @property
    def acceleration(self) -> Acceleration:
        """How the ε-model runs on its devices (channels-last, torch.compile)."""
        return Acceleration(channels_last=self.channels_last, compile_mode=self.compile_mode)

    def strength_choice(
        self, strength: Strength | None = None, votes: int | None = None, *, base: ZipConfig | None = None
    ) -> StrengthChoice:
        """The knobs and votes a request runs: its `strength` (else `strength`) applied to `base` (else
        `zip_config`, built now: the gateway passes the one it built once), with `votes` (the request's
        ?votes=K, else `votes`)."""
        chosen = self.strength if strength is None else strength
        return apply_strength(chosen, self.zip_config if base is None else base, self.votes if votes is None else votes)


def load_settings(
    config_file: Path | str | None = None, *, flags: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build `Settings` from keyword overrides, the environment and an optional config file.

    Args:
        config_file: a YAML or JSON file (else ZIPGATE_CONFIG_FILE, else none).
        flags: how the command line spells an override's flag, where not `--<name with dashes>`.
        overrides: setting values that win over env and file (e.g. from CLI options).

    Returns:
        The validated settings.

    Raises:
        ConfigError: a bad file or value; the message names each setting, where its value came from
            (flag, env variable, config file) and what is expected.
    """
    if config_file is not None:
        overrides["config_file"] = Path(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        sources = setting_sources(Settings.model_fields, overrides, config_file_path(config_file), flags)
        message = format_validation_error(exc, sources)
    # Raised outside the except block, so the ValidationError is not chained to it: its input_value
    # (a model-level error carries every input) would print upstream_url's credentials in a traceback.
    raise ConfigError(message)


def format_validation_error(exc: ValidationError, sources: Mapping[str, SettingSource] | None = None) -> str:
    """One line per bad setting: its name, where its value came from, and pydantic's reason."""
    lines = ["invalid zipgate settings:"]
    for error in exc.errors(include_url=False):
        if error["type"] == "default_factory_not_called":  # a default derived from a setting listed as bad
            continue
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        source = (sources or {}).get(name)
        if not error["loc"]:
            where = "settings"
        elif source is None or source.kind is SourceKind.DEFAULT:  # e.g. an unknown keyword
            where = f"{name} (env {env_variable(name)})"
        else:
            where = f"{name} (from {source})"
        lines.append(f"  - {where}: {error['msg']}")
    return "\n".join(lines)
