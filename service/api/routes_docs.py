"""The interactive API pages (`/docs`, `/redoc`, `/openapi.json`), served from the package, offline.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc its fonts from Google), so on
a host without the internet they are blank. These are FastAPI's pages built with its documented
custom-assets recipe instead: the scripts and styles come from the `fastapi-offline` package
(which ships Swagger UI's and ReDoc's bundles) under `ASSETS_URL`, and nothing names another host
(Swagger UI's validator badge off, ReDoc's footer logo pointed at the local icon).

With an API key the pages would list every route, parameter and limit of a gateway that is
otherwise closed, so unless `public_docs` is set they sit behind the same key check as the API
(see app.py). A browser does not send the key by itself: open them through a proxy that adds it,
or fetch the document with curl. The assets themselves are the libraries' public code: no key.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"
SWAGGER_JS = f"{ASSETS_URL}/swagger-ui-bundle.js"
SWAGGER_CSS = f"{ASSETS_URL}/swagger-ui.css"
REDOC_JS = f"{ASSETS_URL}/redoc.standalone.js"
FAVICON = f"{ASSETS_URL}/favicon.png"
# ReDoc's bundle fetches one thing by itself: its footer's logo ("API docs by Redocly"). Served with that
# URL pointed at the local icon, the page makes no request to another host (the browser test checks it).
REDOC_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def docs_assets_dir() -> Path:
    """The folder of Swagger UI's and ReDoc's bundles, as the `fastapi-offline` package installs them."""
    return Path(str(files("fastapi_offline") / "static"))


def offline_redoc_bundle() -> bytes:
    """ReDoc's bundle with its logo URL pointed at `FAVICON`."""
    return (docs_assets_dir() / "redoc.standalone.js").read_bytes().replace(REDOC_LOGO_URL.encode(), FAVICON.encode())


async def redoc_js(request: Request) -> Response:
    """`offline_redoc_bundle()`, read once when the app was built."""
    return Response(request.app.state.redoc_bundle, media_type="text/javascript")


async def openapi(request: Request) -> JSONResponse:
    """The OpenAPI document of the app serving the request."""
    return JSONResponse(request.app.openapi())


async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI, with its script, style and icon from `ASSETS_URL`."""
    return get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        swagger_js_url=SWAGGER_JS,
        swagger_css_url=SWAGGER_CSS,
        swagger_favicon_url=FAVICON,
        # Swagger UI's validator badge is an image from validator.swagger.io (on any host but localhost): off.
        swagger_ui_parameters={"validatorUrl": None},
    )


async def swagger_ui_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page (inline script, no assets)."""
    return get_swagger_ui_oauth2_redirect_html()


async def redoc(request: Request) -> HTMLResponse:
    """ReDoc, with its script and icon from `ASSETS_URL` and the browser's own fonts (not Google's)."""
    return get_redoc_html(
        openapi_url=OPENAPI_URL,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=REDOC_JS,
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )


def mount_docs(app: FastAPI, dependencies: list[Any]) -> None:
    """Serve the API pages on `app` (built with FastAPI's own pages off), guarded by `dependencies`.

    Args:
        app: the app whose OpenAPI document is served.
        dependencies: route dependencies that guard the pages and the document (the API key check;
            empty for public pages). The assets are mounted without them.
    """
    router = APIRouter(include_in_schema=False, dependencies=dependencies)
    router.add_api_route(OPENAPI_URL, openapi, methods=["GET"])
    router.add_api_route(DOCS_URL, swagger_ui, methods=["GET"])
    router.add_api_route(OAUTH2_REDIRECT_URL, swagger_ui_redirect, methods=["GET"])
    router.add_api_route(REDOC_URL, redoc, methods=["GET"])
    app.include_router(router)
    app.state.redoc_bundle = offline_redoc_bundle()
    app.add_api_route(REDOC_JS, redoc_js, methods=["GET"], include_in_schema=False)  # before the mount: it wins
    app.mount(ASSETS_URL, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
