"""Settings: defaults, env (ZIPGATE_*), config files, precedence, and messages that say how to fix."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.config import ConfigError, ConfigFileField, Settings, load_settings
from service.purify.options import DType, Method, ZipConfig
from service.purify.settings import PurifyFields
from service.server_settings import DEFAULT_MAX_REQUEST_PIXELS, PoolFields, RequestLimitFields, ServerFields
from service.shadow.settings import ShadowFields
from service.upstream import UpstreamProtocol
from service.upstream.settings import UpstreamFields

CREDENTIALS = "vendoruser:s3cret-pw"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ZIPGATE_* variables from the developer's shell leak into these tests."""
    for name in list(os.environ):
        if name.startswith("ZIPGATE_"):
            monkeypatch.delenv(name)


def test_defaults_run_the_shipped_model_against_the_demo_vendor() -> None:
    settings = load_settings()
    assert settings.model_path == Path("models/fmnist-ddpm")
    assert (settings.method, settings.steps) == (Method.LOCAL, 10)
    assert (settings.polish_noise, settings.polish_steps, settings.polish_eta) == (0.25, 8, 1.0)
    assert (settings.transforms, settings.guidance_power, settings.eta) == ("jblur:4", 0.25, 1.0)
    assert (settings.devices, settings.dtype) == ("auto", DType.AUTO)
    assert settings.purification_enabled is True
    assert settings.upstream_url == "http://127.0.0.1:9000"
    assert settings.upstream_protocol is UpstreamProtocol.RAW
    assert (settings.upstream_model, settings.upstream_raw_path) == ("fmnist", "/predict")
    assert settings.api_key is None


def test_the_mask_thresholds_default_to_zip_configs_and_come_from_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    defaults = (ZipConfig.mask_seed_threshold, ZipConfig.mask_grow_threshold)
    assert (settings.mask_seed_threshold, settings.mask_grow_threshold) == defaults
    assert settings.zip_config == ZipConfig()
    monkeypatch.setenv("ZIPGATE_MASK_SEED_THRESHOLD", "0.3")
    monkeypatch.setenv("ZIPGATE_MASK_GROW_THRESHOLD", "0.6")
    knobs = load_settings().zip_config
    assert (knobs.mask_seed_threshold, knobs.mask_grow_threshold) == (0.3, 0.6)


@pytest.mark.parametrize("name", ["mask_seed_threshold", "mask_grow_threshold"])
def test_a_negative_mask_threshold_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(f"ZIPGATE_{name.upper()}", "-0.1")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert f"{name} (from env ZIPGATE_{name.upper()})" in str(caught.value)
    with pytest.raises(ValueError, match=f"{name} must be >= 0"):
        ZipConfig(**{name: -0.1})


def test_env_overrides_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIPGATE_STEPS", "7")
    monkeypatch.setenv("ZIPGATE_UPSTREAM_PROTOCOL", "v2")
    monkeypatch.setenv("ZIPGATE_PURIFICATION_ENABLED", "false")
    monkeypatch.setenv("ZIPGATE_API_KEY", "k3y")
    settings = load_settings()
    assert settings.steps == 7 and settings.upstream_protocol is UpstreamProtocol.V2
    assert settings.purification_enabled is False
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k3y"
    assert "k3y" not in repr(settings)  # a SecretStr never prints


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_file_yaml_or_json(tmp_path: Path, suffix: str) -> None:
    values = {"steps": 5, "transforms": "blur:4,gray", "upstream_protocol": "tfserving", "guidance_power": 1.5}
    path = tmp_path / f"zipgate{suffix}"
    path.write_text(json.dumps(values))  # JSON is valid YAML too
    settings = load_settings(path)
    assert (settings.steps, settings.transforms, settings.guidance_power) == (5, "blur:4,gray", 1.5)


def test_precedence_is_arguments_then_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "zipgate.yaml"
    path.write_text("steps: 5\neta: 0.5\nqueue_limit: 9\n")
    monkeypatch.setenv("ZIPGATE_STEPS", "6")
    monkeypatch.setenv("ZIPGATE_ETA", "0.25")
    settings = load_settings(path, steps=7)
    assert (settings.steps, settings.eta, settings.queue_limit) == (7, 0.25, 9)
    monkeypatch.setenv("ZIPGATE_CONFIG_FILE", str(path))
    assert Settings().queue_limit == 9  # the file can also come from the environment


def test_unknown_keys_in_the_file_are_named(tmp_path: Path) -> None:
    path = tmp_path / "zipgate.yaml"
    path.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['stepz'\]"):
        load_settings(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.yaml", None, "does not exist"),
        ("zipgate.toml", "steps = 3", "must end in .yaml"),
        ("zipgate.yaml", "steps: [1", "not valid YAML"),
        ("zipgate.json", "[1, 2]", "must hold a mapping"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"steps": 0}, "steps (from flag --steps)"),
        ({"eta": 1.5}, "eta (from flag --eta)"),
        ({"guidance_power": 0}, "guidance_power"),
        ({"transforms": "sharpen:2"}, "unknown transform 'sharpen'"),
        ({"upstream_url": "vendor:8080"}, "absolute http(s) URL"),
        ({"upstream_protocol": "grpc"}, "upstream_protocol"),
        ({"upstream_raw_path": "/metrics"}, "served by the gateway itself"),
        ({"upstream_raw_path": "/ui/try"}, "served by the gateway itself"),
        ({"upstream_raw_path": "/targets/7"}, "served by the gateway itself"),
        ({"upstream_raw_path": "predict"}, "must be a path"),
        ({"request_timeout_s": 100, "max_request_timeout_s": 10}, "raise the maximum or lower the default"),
        ({"adaptive_steps_min": 30}, "lower bound"),
        ({"max_image_bytes": 10, "max_request_bytes": 5}, "one image must fit in a request"),
        ({"dtype": "fp64"}, "dtype"),
        ({"port": 70000}, "port"),
        ({"stepz": 3}, "stepz"),
    ],
)
def test_invalid_values_name_the_setting_and_its_env_variable(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert fragment in str(caught.value)


def test_all_errors_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(steps=0, eta=2.0)
    assert "--steps" in str(caught.value) and "--eta" in str(caught.value)


def test_an_error_names_the_source_the_value_came_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("steps: 0\nupstream_protocol: grpc\neta: 0.5\n")
    monkeypatch.setenv("ZIPGATE_ETA", "7")  # the env outranks the file's valid 0.5
    monkeypatch.setenv("ZIPGATE_UPSTREAM_PROTOCOL", "v2")  # valid, but the flag outranks it
    with pytest.raises(ConfigError) as caught:
        load_settings(config, flags={"upstream_protocol": "--upstream-protocol"}, upstream_protocol="v1")
    message = str(caught.value)
    assert f"steps (from config file {config})" in message
    assert "eta (from env ZIPGATE_ETA)" in message
    assert "upstream_protocol (from flag --upstream-protocol)" in message
    assert "env ZIPGATE_UPSTREAM_PROTOCOL" not in message


def test_file_values_the_env_overrides_are_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from service.api.server import warn_of_file_values_the_env_overrides

    config = tmp_path / "gateway.yaml"
    config.write_text("port: 9100\nhost: 0.0.0.0\nsteps: 7\napi_key: file-secret\n")
    monkeypatch.setenv("ZIPGATE_PORT", "9200")
    monkeypatch.setenv("zipgate_api_key", "env-secret")  # read case-insensitively, like pydantic-settings
    settings = load_settings(config)
    assert (settings.port, settings.steps) == (9200, 7)
    with caplog.at_level(logging.WARNING, logger="service.api.server"):
        warn_of_file_values_the_env_overrides(settings)
    warned = {record.setting: record for record in caplog.records}  # type: ignore[attr-defined]
    assert set(warned) == {"port", "api_key"}
    assert "variable ZIPGATE_PORT overrides it" in warned["port"].getMessage()
    assert "variable zipgate_api_key overrides it" in warned["api_key"].getMessage()
    assert not any("secret" in record.getMessage() for record in caplog.records)


def test_special_values() -> None:
    assert math.isinf(load_settings(guidance_power="inf").guidance_power)  # the mix step off
    assert load_settings(api_key="").api_key is None  # ZIPGATE_API_KEY="" means no key
    assert load_settings(upstream_url="http://vendor:8080/").upstream_url == "http://vendor:8080"
    assert load_settings(transforms=" blur:4 ").transforms == "blur:4"


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.steps = 3  # type: ignore[misc]


def test_torch_threads_default_leaves_a_core_and_respects_a_cpu_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never torch's one thread per core (it collapses next to other load; bench/threads.py)."""
    import service.cpus as config

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the suite's conftest sets it
    affinity = len(os.sched_getaffinity(0))
    assert config.usable_cpus() <= affinity
    assert load_settings().torch_threads == config.default_torch_threads() == max(1, config.usable_cpus() - 1)
    for unset in (None, "", "auto"):  # a null in a file, ZIPGATE_TORCH_THREADS="" or "auto": the default
        assert load_settings(torch_threads=unset).torch_threads == config.default_torch_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the standard knob, honoured as the default
    assert load_settings().torch_threads == 5
    monkeypatch.setenv("ZIPGATE_TORCH_THREADS", "3")  # ours wins
    assert load_settings().torch_threads == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(config, "cgroup_cpu_limit", lambda: 1.5)  # a container limited to 1.5 CPUs
    assert config.usable_cpus() == 1 and config.default_torch_threads() == 1
    monkeypatch.setattr(config, "cgroup_cpu_limit", lambda: float(affinity + 8))  # a quota above the host
    assert config.usable_cpus() == affinity


def test_cgroup_cpu_quota_is_read_in_v2_and_v1_layouts(tmp_path: Path) -> None:
    from service.cpus import cgroup_cpu_limit

    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_settings_compose_each_parts_fields_in_one_order() -> None:
    """Each part's fields are defined where the part lives; `Settings` adds none, and lists them part by
    part in one order (errors, repr and override warnings follow it)."""
    parts = [ConfigFileField, ServerFields, PurifyFields, PoolFields, UpstreamFields, RequestLimitFields, ShadowFields]
    assert list(Settings.model_fields) == [name for part in parts for name in part.model_fields]


def test_zip_knobs_default_to_zip_config_and_bundle_into_one() -> None:
    """One source of the defaults: the settings' ZIP knobs are `ZipConfig`'s (local, S = 10, polish 0.2; for
    global: jblur:4, λ = 0.25, η = 1)."""
    settings = Settings()
    assert settings.zip_config == ZipConfig() == ZipConfig("jblur:4", 10, 0.25, 1.0, method=Method.LOCAL)
    assert load_settings(steps=7, guidance_power="inf").zip_config == ZipConfig(steps=7, guidance_power=math.inf)


def test_importing_the_settings_loads_neither_torch_nor_diffusers() -> None:
    """A config check and the CLI's --help must not pay for the deep-learning stack (seconds)."""
    code = (
        "import sys, service.config, service.cli; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers'))[:5]"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr


def test_the_deployment_guides_config_file_is_valid_and_leaves_the_images_variables_alone(tmp_path: Path) -> None:
    import re

    import yaml

    guide = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    (block,) = re.findall(r"```yaml\n(# gateway\.yaml.*?)```", guide, re.S)
    config = tmp_path / "gateway.yaml"
    config.write_text(block)
    assert load_settings(config).upstream_model == "my-model"
    assert not {"host", "port", "model_path"} & set(yaml.safe_load(block))  # the image's ZIPGATE_* set those


def test_max_connections_must_leave_room_for_the_request_itself() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        load_settings(max_connections=1)
    assert load_settings(max_connections=2).max_connections == 2


def test_settings_repr_hides_the_upstream_url() -> None:
    settings = load_settings(upstream_url=f"http://{CREDENTIALS}@vendor:9000")
    assert settings.upstream_url == f"http://{CREDENTIALS}@vendor:9000"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)


@pytest.mark.parametrize(
    "overrides",
    [
        {"request_timeout_s": 1000.0},  # a model-level error: pydantic's input_value is every input
        {"max_image_pixels": "many"},
        {"upstream_url": f"ftp://{CREDENTIALS}@vendor"},
        {"upstream_url": f"http://{CREDENTIALS}@vendor:port"},  # httpx.InvalidURL, not a ValueError
    ],
)
def test_a_config_error_carries_no_credentials(overrides: dict[str, Any]) -> None:
    values = {"upstream_url": f"http://{CREDENTIALS}@vendor:9000", **overrides}
    with pytest.raises(ConfigError) as info:
        load_settings(**values)
    printed = "".join(traceback.format_exception(info.value))
    assert "invalid zipgate settings" in printed
    assert "s3cret" not in printed, printed
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_the_request_pixel_budget_follows_a_raised_image_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().max_request_pixels == DEFAULT_MAX_REQUEST_PIXELS == 4096 * 4096
    assert load_settings(max_image_pixels=1000).max_request_pixels == DEFAULT_MAX_REQUEST_PIXELS
    monkeypatch.setenv("ZIPGATE_MAX_IMAGE_PIXELS", str(5000 * 5000))  # a deployment that raised only this
    assert load_settings().max_request_pixels == 5000 * 5000
    assert load_settings(max_request_pixels=6000 * 6000).max_request_pixels == 6000 * 6000
    with pytest.raises(ConfigError, match="max_image_pixels"):
        load_settings(max_request_pixels=4096 * 4096)  # set explicitly below the image limit: still refused


def test_the_pixel_budget_must_hold_one_image() -> None:
    with pytest.raises(ConfigError, match="max_image_pixels"):
        load_settings(max_request_pixels=100, max_image_pixels=101)


def test_upstream_models_is_a_comma_separated_env_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIPGATE_UPSTREAM_MODELS", " fmnist, resnet-50.v1 ,")
    assert load_settings().upstream_models == ("fmnist", "resnet-50.v1")
    monkeypatch.setenv("ZIPGATE_UPSTREAM_MODELS", "")
    assert load_settings().upstream_models == ()  # empty: every model
    for bad in ("fmnist,..", "a/b", "a%2fb", "."):
        monkeypatch.setenv("ZIPGATE_UPSTREAM_MODELS", bad)
        with pytest.raises(ConfigError, match="upstream_models"):
            load_settings()


def test_public_docs_defaults_to_private_when_a_key_is_set() -> None:
    assert load_settings().public_docs is True
    assert load_settings(api_key="gateway-key-123").public_docs is False
    assert load_settings(api_key="gateway-key-123", public_docs=True).public_docs is True
    assert load_settings(public_docs=False).public_docs is False


def test_suspected_targets_read_as_a_comma_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZIPGATE_SUSPECTED_TARGETS", "7, Shirt")
    assert load_settings(upstream_url="http://vendor:8080").suspected_targets == ("7", "Shirt")
    monkeypatch.setenv("ZIPGATE_SUSPECTED_TARGETS", "7,other")
    with pytest.raises(ConfigError, match="other"):
        load_settings(upstream_url="http://vendor:8080")
