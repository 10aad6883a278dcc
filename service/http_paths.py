"""Path rules of the gateway's HTTP surface: the paths it serves itself, and what a vendor model name
in a path may hold.

The API routes apply them (`api/relay.py`); the settings check `upstream_raw_path` and
`upstream_models` with them. A leaf (standard library only) below `api/`, so both may import it:
nothing below the API may import `api/` (docs/design.md, "Layout", import rules).
"""

from __future__ import annotations

import re

# Paths the gateway serves itself: a raw sidecar path must not shadow them (/predict is the
# exception: a raw image body on it is routed to the sidecar, see api/routes_predict.py).
RESERVED_PATHS = (
    "/purify",
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/v1/",
    "/v2/",
    "/targets",
    "/ui",  # the built-in pages (service/ui)
    "/docs-assets",  # the API pages' scripts and styles
)
# A vendor model name as a path segment: nothing a server or proxy could decode or resolve into
# another path (no "/", backslash or "%", no dot segments); see api/routes_sidecar.py.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")


def model_name_problem(name: str) -> str | None:
    """Why `name` cannot be a vendor model name (or version) in a path, or None when it can."""
    if not MODEL_NAME_PATTERN.fullmatch(name):
        return f"{name!r} may hold only letters, digits, '_', '.' and '-', unencoded"
    if name in (".", ".."):
        return f"{name!r} is a dot segment, not a name"
    return None


def reserved_path_problem(path: str) -> str | None:
    """Why the gateway cannot relay `path` as a raw sidecar path (it serves that path, or one under it,
    itself), or None when it can."""
    if any(path == reserved.rstrip("/") or path.startswith(reserved.rstrip("/") + "/") for reserved in RESERVED_PATHS):
        return f"{path!r} is served by the gateway itself; reserved: {', '.join(RESERVED_PATHS)}"
    return None
