"""The maintainers' structural rules, as tests: short functions, and route handlers that are plain functions."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from fastapi.routing import APIRoute

from service.api.app import create_app
from tests.gateway_servers import gateway_settings

SERVICE = Path(__file__).resolve().parents[1] / "service"
MAX_FUNCTION_LINES = 60


def test_no_function_in_service_is_longer_than_60_lines() -> None:
    long = []
    for path in sorted(SERVICE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SERVICE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_no_route_handler_is_a_closure(tmp_path: Path) -> None:
    # Every optional router mounted: purification on, an API key (docs behind it), the raw path apart.
    settings = gateway_settings(tmp_path, "http://127.0.0.1:9", api_key="k", upstream_raw_path="/invocations")
    app = create_app(settings, purifier_factory=lambda device: None)  # type: ignore[arg-type,return-value]
    handlers = [route.endpoint for route in _api_routes(app.routes)]
    assert len(handlers) > 20
    closures = [f"{h.__module__}.{h.__qualname__}" for h in handlers if "<locals>" in h.__qualname__]
    assert closures == []


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, also inside included routers (FastAPI keeps each as a wrapper of its `original_router`)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (router := getattr(route, "original_router", None)) is not None:
            found.extend(_api_routes(router.routes))
    return found
