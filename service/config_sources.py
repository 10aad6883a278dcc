"""Where each setting's value came from (a flag, the environment, the config file or the default), so
that an error names the source the user must fix and a config-file value the environment overrides is
not silently lost."""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from service.config_file import ENV_PREFIX, read_config_file


class SourceKind(enum.StrEnum):
    """The kinds of source, highest precedence first."""

    FLAG = "flag"
    ENV = "env"
    FILE = "config file"
    DEFAULT = "default"


@dataclass(frozen=True)
class SettingSource:
    """One setting's source, e.g. 'flag --steps', 'env ZIPGATE_STEPS', 'config file gateway.yaml'."""

    kind: SourceKind
    where: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.where}".rstrip()


def env_variable(name: str) -> str:
    """The environment variable of setting `name`."""
    return f"{ENV_PREFIX}{name.upper()}"


def env_set(names: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings among `names` that the environment sets, with the variable as spelt there
    (pydantic-settings reads the names case-insensitively)."""
    spelt = {variable.upper(): variable for variable in (os.environ if environ is None else environ)}
    return {name: spelt[env_variable(name)] for name in names if env_variable(name) in spelt}


def config_file_path(config_file: Path | str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The config file the settings read: the one passed, else ZIPGATE_CONFIG_FILE's, else none."""
    if config_file is not None:
        return Path(config_file)
    from_env = env_set(["config_file"], environ)
    return Path((os.environ if environ is None else environ)[from_env["config_file"]]) if from_env else None


def setting_sources(
    known: Iterable[str],
    overrides: Iterable[str],
    config_file: Path | None,
    flags: Mapping[str, str] | None = None,
) -> dict[str, SettingSource]:
    """The source of every setting, by the settings' precedence: flag > env > file > default.

    Args:
        known: the setting names.
        overrides: the settings given as keyword arguments (the CLI's flags).
        config_file: the config file, if any (read again here; a bad one raises as the settings do).
        flags: a flag's spelling where it is not `--<name with dashes>`.

    Raises:
        ConfigError: the config file is missing or invalid.
    """
    names = list(known)
    given, environment = set(overrides), env_set(names)
    in_file = read_config_file(config_file, set(names)) if config_file is not None else {}
    sources: dict[str, SettingSource] = {}
    for name in names:
        if name in given:
            flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
            sources[name] = SettingSource(SourceKind.FLAG, flag)
        elif name in environment:
            sources[name] = SettingSource(SourceKind.ENV, environment[name])
        elif name in in_file:
            sources[name] = SettingSource(SourceKind.FILE, str(config_file))
        else:
            sources[name] = SettingSource(SourceKind.DEFAULT)
    return sources


def file_settings_overridden_by_env(config_file: Path | None, known: Iterable[str]) -> dict[str, str]:
    """The config file's settings that an environment variable overrides: setting → the variable.

    Raises:
        ConfigError: the config file is missing or invalid.
    """
    if config_file is None:
        return {}
    return env_set(read_config_file(config_file, set(known)))
