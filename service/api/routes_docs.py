"""The interactive API pages (`/docs`, `/redoc`, `/openapi.json`) behind the API key.

FastAPI serves them to anyone; with a key configured they would list every route, parameter and
limit of a gateway that is otherwise closed, so unless `public_docs` is set the app mounts these
copies instead, with the same key check as the API (see app.py). A browser does not send the
key by itself: open them through a proxy that adds it, or fetch the document with curl.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse

OPENAPI_URL = "/openapi.json"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"


def build_docs_router(app: FastAPI, dependencies: list[Any]) -> APIRouter:
    """FastAPI's API pages as routes with `dependencies` (the API key check), left out of the schema.

    Args:
        app: the app whose OpenAPI document is served (built with its own pages turned off).
        dependencies: route dependencies that guard the pages.

    Returns:
        The router.
    """
    router = APIRouter(include_in_schema=False, dependencies=dependencies)

    @router.get(OPENAPI_URL)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get(DOCS_URL)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL, title=f"{app.title} - Swagger UI", oauth2_redirect_url=OAUTH2_REDIRECT_URL
        )

    @router.get(OAUTH2_REDIRECT_URL)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @router.get(REDOC_URL)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{app.title} - ReDoc")

    return router
