"""JSON logs: every line one object, Python warnings among them (service/api/logging.py)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest

from service.api.decode import ImageLimits, open_image
from service.api.logging import configure_logging
from service.errors import PayloadTooLarge
from tests.gateway_servers import png_header_claiming


@contextlib.contextmanager
def _json_logging_to(stream: io.StringIO) -> Iterator[None]:
    """configure_logging into `stream`, and put logging and warnings back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging("info", stream=stream)
        try:
            yield
        finally:
            logging.captureWarnings(False)
            root.handlers[:], _ = saved
            root.setLevel(saved[1])


def test_python_warnings_are_json_log_lines() -> None:
    stream = io.StringIO()
    with _json_logging_to(stream):
        warnings.warn("first line\nsecond line", UserWarning, stacklevel=1)
        with pytest.raises(PayloadTooLarge):  # PIL warns (DecompressionBombWarning) before our limit refuses it
            open_image(png_header_claiming(10_000, 10_000), ImageLimits(1 << 20, 4096 * 4096))
    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    warned = [r for r in records if r["logger"] == "py.warnings"]
    assert len(warned) == 2 and all(r["level"] == "warning" for r in warned)
    assert "UserWarning: first line\nsecond line" in warned[0]["message"]
    assert "DecompressionBombWarning" in warned[1]["message"]
