"""The routes of `/ui`: server-rendered HTML (Jinja2), no JavaScript, one stylesheet from the package.

Behind the API key like the API when one is set (the page runs purifications and shows captured
user images); the stylesheet and icon under `STATIC_URL` are public. Every page carries a Content
Security Policy that allows only this origin and inline `data:` images: nothing can load from
elsewhere, and no script runs at all. A query a page cannot read (`?page=abc`) is a 400 page that
names the parameter (`PageRoute`), not the API's JSON 422: a browser shows it.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import Field
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from service.api.deps import PLAIN_INTEGER, ContextDep, GatewayDep, is_plain_integer
from service.api.gateway import Gateway
from service.api.inputs import IMAGE_FIELD, input_kind, read_images
from service.errors import BadRequest, ClientDisconnected, GatewayError
from service.purify.strength import Strength
from service.shadow.capture import record_file
from service.shadow.history import WINDOW_S
from service.ui.shadow_view import shadow_page
from service.ui.tryout import TryResult, try_images

UI_PREFIX = "/ui"
STATIC_URL = f"{UI_PREFIX}/static"
PACKAGE_DIR = Path(__file__).parent
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # captured user images and vendor answers: not for shared caches
}


class PageRoute(APIRoute):
    """A /ui route: parameters it cannot read answer a 400 HTML page naming them, not the API's JSON 422."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _bad_request_page(request, exc)

        return page_handler


def _bad_request_page(request: Request, exc: RequestValidationError) -> HTMLResponse:
    """The 400 page: each parameter that could not be read (`query parameter page: ...`), and the page without them."""
    problems = [
        f"{error['loc'][0]} parameter {'.'.join(map(str, error['loc'][1:]))}: {error['msg']}"
        if len(error.get("loc", ())) > 1
        else str(error.get("msg", "invalid"))
        for error in exc.errors()[:3]
    ]
    return _render(
        request, request.state.gateway, "bad_request.html", title="Bad request", view=None, problems=problems,
        page_path=request.url.path, status_code=400,
    )  # fmt: skip


async def ui_home() -> RedirectResponse:
    """`/ui` and `/ui/` open the first view (a browser's user types either; the gateway has no slash redirects)."""
    return RedirectResponse(f"{UI_PREFIX}/try", status_code=303)


async def try_form(request: Request, gateway: GatewayDep) -> HTMLResponse:
    """The upload form."""
    return _render(request, gateway, "try.html", view="try")


async def try_submit(request: Request, gateway: GatewayDep, ctx: ContextDep) -> HTMLResponse:
    """Purify the uploaded images and show them with the vendor's answers; an error shows on the form."""
    settings = gateway.settings
    strength: Strength | None = None
    votes: int | None = None
    try:
        gateway.require_ready()
        blobs = await read_images(
            request, input_kind(request.headers.get("content-type")), settings.max_images_per_request,
            settings.max_image_bytes,
        )  # fmt: skip
        form = await request.form()  # parsed (and limited) by read_images: Starlette keeps it
        strength, votes = _strength(form), _votes(form)
        names = [getattr(part, "filename", None) or f"image {i}" for i, part in enumerate(form.getlist(IMAGE_FIELD))]
        result = await try_images(gateway, ctx, blobs, names, gateway.policy.choose(strength, votes))
    except ClientDisconnected:
        raise  # nobody is listening: the 499 handler counts it, no page is rendered
    except GatewayError as exc:
        return _render(
            request, gateway, "try.html", view="try", error=exc, chosen_strength=strength, chosen_votes=votes,
            status_code=exc.status_code, headers=exc.headers,
        )  # fmt: skip
    return _render(
        request, gateway, "try.html", view="try", result=result, latency=_latency_rows(result),
        chosen_strength=strength, chosen_votes=votes,
    )  # fmt: skip


async def captures(
    request: Request,
    gateway: GatewayDep,
    page: Annotated[Annotated[int, Field(ge=1, le=1_000_000), PLAIN_INTEGER], Query()] = 1,
) -> HTMLResponse:
    """The shadow counters, the alarms' state and a page of captured disagreements (newest first)."""
    return _render(
        request, gateway, "captures.html", view="captures", view_model=shadow_page(gateway, page),
        window_minutes=WINDOW_S // 60,
    )  # fmt: skip


async def capture_image(name: str, filename: str, gateway: GatewayDep) -> Response:
    """A captured record's raw, purified or mask image, as stored."""
    directory = gateway.settings.shadow_capture_dir
    path = None if directory is None else record_file(directory, name, filename)
    if path is None:
        raise HTTPException(404, f"no captured image {name}/{filename}")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers=SECURITY_HEADERS)


def _utc(seconds: float) -> str:
    """Unix seconds as the pages show times: ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def mount_ui(app: FastAPI, dependencies: list[Any]) -> None:
    """Serve `/ui` on `app`, its pages guarded by `dependencies` (the API key check, when configured).

    Args:
        app: the gateway app.
        dependencies: route dependencies of the pages (not of the stylesheet).
    """
    templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")
    templates.env.filters["utc"] = _utc
    app.state.ui_templates = templates
    router = APIRouter(prefix=UI_PREFIX, include_in_schema=False, dependencies=dependencies, route_class=PageRoute)
    router.add_api_route("", ui_home, methods=["GET"])
    router.add_api_route("/", ui_home, methods=["GET"])
    router.add_api_route("/try", try_form, methods=["GET"])
    router.add_api_route("/try", try_submit, methods=["POST"])
    router.add_api_route("/captures", captures, methods=["GET"])
    router.add_api_route("/captures/{name}/{filename}", capture_image, methods=["GET"])
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=PACKAGE_DIR / "static"), name="ui-static")


def _render(
    request: Request,
    gateway: Gateway,
    template: str,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    settings = gateway.settings
    engine = "purification off"
    if settings.purification_enabled:
        engine = f"{settings.model_path.name} · {settings.transforms} · {settings.steps} steps"
    templates: Jinja2Templates = request.app.state.ui_templates
    return templates.TemplateResponse(
        request,
        template,
        {
            "title": "Try an image" if context.get("view") == "try" else "Shadow captures",
            "prefix": UI_PREFIX,
            "static_url": STATIC_URL,
            "engine": engine,
            "strengths": [s.value for s in Strength],
            "default_strength": settings.strength.value,
            "default_votes": settings.votes,
            "max_votes": settings.max_votes,
            "chosen_strength": None,
            "chosen_votes": None,
            **context,
        },
        status_code=status_code,
        headers={**SECURITY_HEADERS, **(headers or {})},
    )


def _latency_rows(result: TryResult) -> list[tuple[str, float]]:
    return list(result.latency_ms.model_dump().items())


def _strength(form: FormData) -> Strength | None:
    value = form.get("strength")
    if not isinstance(value, str) or not value:
        return None
    try:
        return Strength(value)
    except ValueError:
        raise BadRequest(f"strength {value!r}: choose one of {', '.join(s.value for s in Strength)}") from None


def _votes(form: FormData) -> int | None:
    value = form.get("votes")
    if not isinstance(value, str) or not value.strip():
        return None
    votes = int(value) if is_plain_integer(value) else 0  # as ?votes= reads it: "3_0" is no 30
    if votes < 1:
        raise BadRequest(f"votes {value!r}: a whole number, at least 1")
    return votes
