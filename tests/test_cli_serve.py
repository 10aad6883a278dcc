"""`zipgate serve` as a user runs it: a process listening on a real socket, its flags winning over
ZIPGATE_* variables, which win over the --config file; stopped with SIGTERM, it exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service import cli
from tests.gateway_servers import wait_until
from tests.ports import free_port

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120.0  # imports torch; a loaded 2-core machine
REPO = Path(__file__).resolve().parents[1]
ZIPGATE = str(Path(sys.executable).with_name("zipgate"))  # the console script, as a user runs it
# Purification off: no model to load, and nothing listens at the vendor URL (only probes are sent).
NO_MODEL = ["--no-purification", "--upstream-url", "http://127.0.0.1:9"]


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without ZIPGATE_* variables, plus `variables`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("ZIPGATE_")}
    return {**env, "OMP_NUM_THREADS": "1", **variables}


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def zipgate_serve(
    args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
) -> Iterator[subprocess.Popen[bytes]]:
    """`zipgate serve ARGS` in a process started in `cwd`; SIGTERM and a wait afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ZIPGATE, "serve", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def wait_serving(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"zipgate serve exited {process.returncode}:\n{log.read_text()}")
        return answers(f"{url}/healthz")

    wait_until(up, timeout_s=START_TIMEOUT_S, what=f"zipgate serve answering at {url}")


def test_flags_win_over_env_which_wins_over_the_file(tmp_path: Path) -> None:
    flag_port, env_port, file_port = free_port(), free_port(), free_port()
    config = tmp_path / "settings.yaml"
    config.write_text(f"port: {file_port}\nlog_level: debug\n")
    log = tmp_path / "serve.log"
    env = clean_env(ZIPGATE_PORT=str(env_port), ZIPGATE_LOG_LEVEL="warning")
    with zipgate_serve(
        ["--config", str(config), "--port", str(flag_port), "--log-level", "info", *NO_MODEL], env, log
    ) as process:
        url = f"http://127.0.0.1:{flag_port}"
        wait_serving(process, url, log)
        assert answers(f"{url}/readyz")
        assert not answers(f"http://127.0.0.1:{env_port}/healthz")
        assert not answers(f"http://127.0.0.1:{file_port}/healthz")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    # --log-level info beat ZIPGATE_LOG_LEVEL=warning and the file's debug: info lines, no debug ones.
    levels = {json.loads(line)["level"] for line in log.read_text().splitlines() if line.startswith("{")}
    assert "info" in levels and "debug" not in levels, levels


def test_without_the_flag_the_env_wins_over_the_file(tmp_path: Path) -> None:
    env_port, file_port = free_port(), free_port()
    config = tmp_path / "settings.json"
    config.write_text(f'{{"port": {file_port}}}')
    log = tmp_path / "serve.log"
    with zipgate_serve(["--config", str(config), *NO_MODEL], clean_env(ZIPGATE_PORT=str(env_port)), log) as process:
        wait_serving(process, f"http://127.0.0.1:{env_port}", log)
        assert not answers(f"http://127.0.0.1:{file_port}/healthz")
    # ...and says so: one warning per file value the environment overrides.
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    (warning,) = [entry for entry in entries if entry.get("setting")]
    assert (warning["level"], warning["setting"], warning["env"]) == ("warning", "port", "ZIPGATE_PORT")


def test_serve_finds_the_shipped_model_from_another_directory(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    args = ["--port", str(port), "--upstream-url", "http://127.0.0.1:9"]  # purification on: the default model
    with zipgate_serve(args, clean_env(), log, cwd=tmp_path) as process:
        url = f"http://127.0.0.1:{port}"
        wait_serving(process, url, log)
        wait_until(lambda: answers(f"{url}/readyz"), timeout_s=START_TIMEOUT_S, what="the shipped model loaded")


def test_a_bad_flag_value_exits_2_naming_the_setting_and_the_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--upstream-protocol", "grpc", *NO_MODEL],
        env=clean_env(ZIPGATE_UPSTREAM_PROTOCOL="v2"),  # valid, and outranked by the flag
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "upstream_protocol (from flag --upstream-protocol)" in result.stderr, result.stderr
    assert "ZIPGATE_UPSTREAM_PROTOCOL" not in result.stderr  # the value did not come from the environment


def test_the_cli_sets_a_passive_openmp_wait_unless_the_environment_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    cli._openmp_waits_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    cli._openmp_waits_passively()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.slow
def test_zipgate_serve_sets_it_before_torch_loads_openmp() -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "OMP_WAIT_POLICY" and not name.startswith("ZIPGATE_")
    }
    # libgomp prints its settings when it loads (with torch); a bad setting then ends `serve` (exit 2).
    env.update(OMP_DISPLAY_ENV="VERBOSE", ZIPGATE_MAX_CONNECTIONS="1", PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", "from service.cli import app; app(['serve'])"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 2 and "max_connections" in result.stderr, result.stderr[-2000:]
    if "OPENMP DISPLAY ENVIRONMENT" not in result.stderr:
        pytest.skip("this torch's OpenMP runtime is not libgomp (it prints nothing to check)")
    # PASSIVE: no spinning at all (libgomp's default spins 300000 rounds; ACTIVE for ever).
    assert "GOMP_SPINCOUNT = '0'" in result.stderr, result.stderr[-2000:]


def test_the_image_sets_a_passive_openmp_wait() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "OMP_WAIT_POLICY=PASSIVE" in dockerfile
