"""The API pages (/docs, /redoc) work offline: their HTML names no other host, and the gateway serves
every script, style and icon they load, over a real socket."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

from tests.fault_servers import StaticApp, serve_asgi
from tests.gateway_servers import gateway_settings, get, running_gateway

KEY = "docs-key-123"
PAGES = ("/docs", "/redoc")


class _AssetLinks(HTMLParser):
    """Every URL an HTML page makes the browser load: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


def asset_urls(html: str) -> list[str]:
    parser = _AssetLinks()
    parser.feed(html)
    return parser.urls


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    with serve_asgi(StaticApp(200, b"{}")) as url:
        yield url


@pytest.mark.parametrize("page", PAGES)
def test_an_api_page_names_no_other_host_and_every_asset_is_served(upstream_url: str, page: str) -> None:
    with running_gateway(gateway_settings(None, upstream_url)) as url:
        response = get(f"{url}{page}")
        assert response.status_code == 200
        html = response.text
        # No absolute URL at all, in tags or inline script (a CDN, Google's fonts, FastAPI's favicon).
        assert re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", html) == []
        urls = asset_urls(html)
        assert any(u.endswith(".js") for u in urls), urls
        for asset in urls:
            target = urljoin(f"{url}{page}", asset)
            assert urlsplit(target).netloc == urlsplit(url).netloc, asset
            served = get(target)
            assert served.status_code == 200, asset
            assert len(served.content) > 1000, asset  # the bundle, not an error page
            assert b"https://cdn." not in served.content, asset  # ReDoc's own logo fetch, pointed home


def test_private_pages_need_the_key_but_their_public_assets_do_not(upstream_url: str) -> None:
    with running_gateway(gateway_settings(None, upstream_url, api_key=KEY)) as url:
        for page in PAGES:
            assert get(f"{url}{page}").status_code == 401
            response = get(f"{url}{page}", headers={"X-API-Key": KEY})
            assert response.status_code == 200
            for asset in asset_urls(response.text):
                assert get(urljoin(f"{url}{page}", asset)).status_code == 200, asset


def test_pages_are_not_served_when_private_without_a_key(upstream_url: str) -> None:
    with running_gateway(gateway_settings(None, upstream_url, public_docs=False)) as url:
        for page in (*PAGES, "/openapi.json"):
            assert get(f"{url}{page}").status_code == 404, page


DOC_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")


def test_api_pages_need_the_key_unless_public() -> None:
    recorder = StaticApp(200, b"{}")
    with serve_asgi(recorder) as upstream_url:
        with running_gateway(gateway_settings(None, upstream_url, api_key=KEY)) as url:
            for path in DOC_PATHS:
                response = get(f"{url}{path}")
                assert response.status_code == 401, path
                assert response.json()["error"]["code"] == "unauthorized"
                assert get(f"{url}{path}", headers={"X-API-Key": KEY}).status_code == 200, path
            spec = get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
            assert "/predict" in spec["paths"] and "/docs" not in spec["paths"]
            assert "/openapi.json" in get(f"{url}/docs", headers={"X-API-Key": KEY}).text
        with running_gateway(gateway_settings(None, upstream_url, api_key=KEY, public_docs=True)) as url:
            for path in DOC_PATHS:
                assert get(f"{url}{path}").status_code == 200, path
