"""Structured JSON logs with the current request's id in every line (contextvar + logging filter)."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

# A ContextVar, not a global: each request's task (and the threads it hands work to via
# asyncio.to_thread, which copies the context) sees its own id.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("zipgate_request_id", default=None)

# LogRecord attributes that are not "extra" fields worth printing.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


@contextmanager
def request_id_context(request_id: str) -> Iterator[None]:
    """Make `request_id` the id of every log line emitted inside the block (this task only)."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class RequestIdFilter(logging.Filter):
    """Stamp each record with the current request id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, extras, exc_info."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "info", stream: object = None) -> None:
    """Send every logger (uvicorn's included) and Python's warnings to one JSON handler on stderr.

    Args:
        level: minimum level name, e.g. "info".
        stream: where to write (default sys.stderr).
    """
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    # On the handler, not a logger: records from every logger pass through it.
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # warnings.warn (PIL's DecompressionBombWarning, deprecations) writes raw multi-line text to
    # stderr, which breaks a one-object-per-line log; captured, each warning is one JSON record of
    # the 'py.warnings' logger at level warning.
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "py.warnings"):
        named_logger = logging.getLogger(name)
        named_logger.handlers.clear()
        named_logger.propagate = True
