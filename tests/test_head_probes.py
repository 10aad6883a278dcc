"""HEAD on the probe routes: load balancers and `curl -I` probe with it. The GET's status and headers, no
body; the POST routes and the OpenAPI are as they were."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.api import create_app
from service.api.middleware import PROBE_PATHS
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import HTTP_TIMEOUT_S, FakePurifier, gateway_settings, running_gateway


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    """A gateway without purification in front of a vendor whose every probe answers 200."""
    vendor = StaticApp(200, b'{"status": "alive", "live": true, "ready": true}')
    with serve_asgi(vendor) as vendor_url, running_gateway(gateway_settings(None, vendor_url)) as url:
        yield url


@pytest.mark.parametrize("path", sorted(PROBE_PATHS))
def test_head_on_a_probe_answers_as_get_without_a_body(gateway_url: str, path: str) -> None:
    # One connection for both: a body sent after the HEAD's head would be read as the GET's answer.
    with httpx.Client(base_url=gateway_url, timeout=HTTP_TIMEOUT_S) as client:
        head = client.head(path)
        got = client.get(path)
    assert head.status_code == got.status_code == 200, (head.status_code, got.text)
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["x-request-id"]


def _unloadable(device: str) -> FakePurifier:
    raise RuntimeError("no model on this device")


def test_head_on_readyz_of_a_gateway_that_cannot_serve_is_503_without_a_body(tmp_path: Path) -> None:
    app = create_app(gateway_settings(tmp_path, "http://127.0.0.1:9"), purifier_factory=_unloadable)
    with serve_asgi(app) as url:  # starting, then failed: 503 either way
        head = httpx.head(f"{url}/readyz", timeout=HTTP_TIMEOUT_S)
    assert head.status_code == 503 and head.content == b""


def test_other_methods_on_a_probe_are_405_listing_get_and_head(gateway_url: str) -> None:
    answer = httpx.post(f"{gateway_url}/healthz", timeout=HTTP_TIMEOUT_S)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, HEAD"
    assert answer.json()["error"]["code"] == "method_not_allowed"


def test_post_routes_do_not_answer_head(gateway_url: str) -> None:
    for path in ("/predict", "/targets/alerts", "/v2/models/fmnist/infer"):
        assert httpx.head(f"{gateway_url}{path}", timeout=HTTP_TIMEOUT_S).status_code == 405, path


def test_the_openapi_lists_the_probes_get_only(gateway_url: str) -> None:
    spec = httpx.get(f"{gateway_url}/openapi.json", timeout=HTTP_TIMEOUT_S).json()
    for path in PROBE_PATHS:
        assert set(spec["paths"][path]) == {"get"}, path
