"""The gateway's settings: one pydantic-settings class, from env (`ZIPGATE_*`) and a config file.

Precedence, highest first: keyword arguments (the CLI), environment variables
(`ZIPGATE_STEPS=10`), the config file (`--config F` or `ZIPGATE_CONFIG_FILE=F`; YAML or JSON,
keys are the field names without the prefix), then the defaults below. The defaults run the
shipped Fashion-MNIST model on CPU against the demo vendor on 127.0.0.1:9000.

`Settings` composes the fields of each part it configures, each defined (with its checks) where that
part lives: the server, request limits and worker pool in `server_settings.py`, purification in
`purify/settings.py`, the vendor in `upstream/settings.py`, votes, shadow mode and the closed loop in
`shadow/settings.py`. Every field stays a flat attribute (`settings.steps`) and env variable
(`ZIPGATE_STEPS`); what relates fields of different parts is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.config_file import ENV_PREFIX, ConfigError, ConfigFileSource
from service.config_sources import SettingSource, SourceKind, config_file_path, env_variable, setting_sources
from service.purify.options import ZipConfig
from service.purify.settings import PurifyFields
from service.purify.strength import Strength, StrengthChoice, apply_strength
from service.server_settings import PoolFields, RequestLimitFields, ServerFields
from service.shadow.settings import ShadowFields
from service.upstream.settings import UpstreamFields


class ConfigFileField(BaseModel):
    """The file the other settings may come from (read by `ConfigFileSource`)."""

    config_file: Path | None = Field(None, description="YAML/JSON file with further settings (env wins over it).")


# pydantic orders the fields base class first (the MRO reversed), so the parts are listed last to first:
# the fields keep one order (config_file, server, purification, pool, upstream, limits, shadow), in
# which errors, repr and the override warnings list them.
class Settings(
    ShadowFields,
    RequestLimitFields,
    UpstreamFields,
    PoolFields,
    PurifyFields,
    ServerFields,
    ConfigFileField,
    BaseSettings,
):
    """Everything the gateway can be configured with; see the README's Configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, use_enum_values=False, validate_default=True
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
