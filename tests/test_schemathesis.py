"""Property-based fuzzing of the running gateway's OpenAPI: no 5xx, every error in the JSON shape.

The schema is built at import from an app with the same settings (schemathesis's lazy
`from_fixture` loader does not work with this pytest), and a test checks that the running
gateway serves exactly that document; the cases are then sent to the running gateway.
A second test runs the real command line, `schemathesis run --checks all` with the repository's
schemathesis.toml, against the live schema: a fixed seed, the examples, coverage and fuzzing
phases, and few examples per operation, so it stays well under a minute on a loaded machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from service.api import create_app
from service.config import Settings
from tests.gateway_servers import (
    error_details,
    gateway_settings,
    running_gateway,
    running_vendor,
    tiny_ddpm_dir,
    tiny_vendor_dir,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _settings(model_path: Path, vendor_url: str) -> Settings:
    return gateway_settings(model_path, vendor_url, max_images_per_request=4)


def _spec() -> dict:
    app = create_app(_settings(Path("unused"), "http://127.0.0.1:9"), purifier_factory=lambda device: None)
    return app.openapi()


schema = schemathesis.openapi.from_dict(_spec())


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("models")
    with (
        running_vendor(tiny_vendor_dir(root)) as vendor_url,
        running_gateway(_settings(tiny_ddpm_dir(root), vendor_url)) as url,
    ):
        yield url


def test_the_fuzzed_schema_is_the_one_the_gateway_serves(gateway_url: str) -> None:
    assert httpx.get(f"{gateway_url}/openapi.json").json() == _spec()


def _header(response: schemathesis.Response, name: str) -> str:
    """One header of a schemathesis response (its headers map names to lists of values)."""
    for key, values in response.headers.items():
        if key.lower() == name:
            return values[0] if isinstance(values, list) else values
    return ""


def _is_deadline_the_client_asked_for(case: schemathesis.Case, status: int, code: str | None) -> bool:
    """A fuzzed X-Request-Timeout of 1e-300 s rightly ends in 504 deadline_exceeded: not a server fault."""
    headers = {name.lower() for name in (case.headers or {})}
    return status == 504 and code == "deadline_exceeded" and "x-request-timeout" in headers


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors_and_every_error_is_json(case: schemathesis.Case, gateway_url: str) -> None:
    response = case.call(base_url=gateway_url, timeout=30)
    status = response.status_code
    if status < 400:
        return
    # Errors from the gateway, and the demo vendor's relayed ones, share one shape.
    assert _header(response, "content-type").startswith("application/json"), (status, response.text[:300])
    error = error_details(response.json(), case.formatted_path)
    assert {"code", "message", "request_id"} <= set(error), error
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    assert "Traceback" not in response.text
    if not case.path.startswith(("/v1/", "/v2/")):  # relayed vendor errors carry the vendor's own id
        assert error["request_id"] == _header(response, "x-request-id")
    assert status < 500 or _is_deadline_the_client_asked_for(case, status, error["code"]), (status, error)


def test_schemathesis_run_checks_all_passes_on_the_live_schema(gateway_url: str, tmp_path: Path) -> None:
    """`schemathesis run --checks all` (examples, coverage, fuzzing) exits 0; the only 5xx
    schemathesis.toml lets through, 504, is the deadline the client asked for in X-Request-Timeout."""
    har = tmp_path / "run.har"
    # The coverage phase (schema-derived edge cases of every parameter) sends most of the ~300
    # requests whatever --max-examples says; the other phases get 5 examples per operation.
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(REPO / "schemathesis.toml"),
        "run",
        f"{gateway_url}/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "5",
        "--seed",
        "0",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--no-color",
        "--report",
        "har",
        "--report-har-path",
        str(har),
    ]
    # About 15 s on a loaded 2-core machine; a hang fails here, well inside pytest's own 300 s timeout.
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=150, check=False)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    entries = json.loads(har.read_text())["log"]["entries"]
    assert len(entries) > 100  # every operation was exercised, not skipped
    for entry in entries:
        if entry["response"]["status"] < 500:
            continue
        sent = {header["name"].lower() for header in entry["request"]["headers"]}
        body = json.loads(entry["response"]["content"].get("text") or "{}")
        code = error_details(body, urllib.parse.urlsplit(entry["request"]["url"]).path)["code"]
        assert (entry["response"]["status"], code) == (504, "deadline_exceeded"), entry
        assert "x-request-timeout" in sent, entry
