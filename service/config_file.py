"""The settings' config-file source: a YAML or JSON file of `setting: value`, strictly checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

ENV_PREFIX = "ZIPGATE_"


class ConfigError(ValueError):
    """The settings are invalid; the message names each bad setting and how to fix it."""


class ConfigFileSource(PydanticBaseSettingsSource):
    """Settings from a YAML or JSON file named by `config_file` (keyword) or ZIPGATE_CONFIG_FILE."""

    def __init__(
        self, settings_cls: type[BaseSettings], init_kwargs: dict[str, Any], env_settings: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self._init_kwargs = init_kwargs
        self._env_settings = env_settings

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        raise NotImplementedError("ConfigFileSource reads the whole file in __call__")

    def __call__(self) -> dict[str, Any]:
        path = self._init_kwargs.get("config_file") or self._env_settings().get("config_file")
        if path is None:
            return {}
        return read_config_file(Path(path), set(self.settings_cls.model_fields))


def read_config_file(path: Path, known: set[str]) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON (.json) settings file into a dict of field values.

    Args:
        path: the file.
        known: the valid keys (field names).

    Returns:
        The file's settings.

    Raises:
        ConfigError: missing or unreadable file, wrong suffix, not a mapping, or an unknown key.
    """
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass an existing YAML or JSON file to --config")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file '{path}' must end in .yaml, .yml or .json, got '{suffix}'")
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file '{path}' is not valid {suffix.lstrip('.').upper()}: {exc}") from exc
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of setting: value, got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in known or key == "config_file")
    if unknown:
        raise ConfigError(
            f"config file '{path}' has unknown setting(s) {unknown}; valid keys are the setting names "
            f"without the {ENV_PREFIX} prefix, e.g. 'steps', 'upstream_url' (see README, Configuration)"
        )
    return data
