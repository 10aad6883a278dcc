"""A path that misses a route by a trailing slash is a 404 naming the route, never an empty-bodied redirect
(a POST's 307 that a client does not follow shows nothing). A vendor path configured with a trailing
slash is relayed as it is. Raw sockets: the paths go out exactly as written, and nothing follows a redirect."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.api.errors import MAX_PATH_IN_MESSAGE
from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import gateway_settings, get, png_bytes, post, running_gateway
from tests.raw_http import json_error, raw_post, v2_body

RAW_PATH = "/invocations/"  # a vendor's raw path that ends in a slash


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, StaticApp]]:
    """A gateway without purification (fast) in front of a recording vendor, its raw path `RAW_PATH`."""
    recorder = StaticApp(200, b'{"ok": true}')
    with (
        serve_asgi(recorder) as upstream_url,
        running_gateway(gateway_settings(None, upstream_url, upstream_raw_path=RAW_PATH)) as url,
    ):
        yield url, recorder


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/predict/", "/predict"),
        ("/v1/models/fmnist:predict/", "/v1/models/fmnist:predict"),
        ("/v2/models/fmnist/infer/", "/v2/models/fmnist/infer"),  # the protocol's error shape
        ("/invocations", RAW_PATH),  # and the other way round
    ],
)
def test_a_path_a_slash_away_from_a_route_is_404_naming_it(
    gateway: tuple[str, StaticApp], path: str, route: str
) -> None:
    url, recorder = gateway
    recorder.requests.clear()
    status, headers, body = raw_post(url, path, v2_body(png_bytes()))
    assert status == 404, (status, body)
    assert headers["content-type"] == "application/json" and "location" not in headers
    error = json_error(body, path)
    assert error["code"] == "not_found"
    assert error["message"] == f"no route POST {path}; did you mean {route}?"
    assert recorder.requests == []


def test_an_unknown_path_is_404_naming_it_without_a_guess(gateway: tuple[str, StaticApp]) -> None:
    url, _ = gateway
    status, _, body = raw_post(url, "/nowhere/", b"{}")
    assert status == 404
    assert json_error(body, "/nowhere/")["message"] == "no route POST /nowhere/"


def test_a_raw_path_with_a_trailing_slash_is_relayed_as_configured(gateway: tuple[str, StaticApp]) -> None:
    url, recorder = gateway
    recorder.requests.clear()
    answer = post(f"{url}{RAW_PATH}", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    assert [request.path for request in recorder.requests] == [RAW_PATH]


def test_a_get_a_slash_away_from_a_route_is_404_naming_it(gateway: tuple[str, StaticApp]) -> None:
    url, _ = gateway
    answer = get(f"{url}/healthz/", follow_redirects=False)
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "no route GET /healthz/; did you mean /healthz?"


def test_a_404_echoes_a_long_path_cut_short(gateway: tuple[str, StaticApp]) -> None:
    url, _ = gateway
    path = "/predict" + "x" * 5000 + "/"
    status, _, body = raw_post(url, path, b"{}")
    assert status == 404
    message = json_error(body, path)["message"]
    assert message == f"no route POST {path[:MAX_PATH_IN_MESSAGE]}…"
