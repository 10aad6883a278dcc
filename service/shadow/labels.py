"""Read a class label out of one vendor prediction, and cap how many distinct labels metrics see."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|\d+")
ARGMAX_PREFIX = "argmax:"
OTHER_LABEL = "other"


class LabelSpecError(ValueError):
    """A label expression that cannot be parsed (a configuration error, reported at start-up)."""


@dataclass(frozen=True)
class LabelExtractor:
    """Where the label lives in one image's prediction, as the adapters return it.

    The spec is a dotted path over the prediction's JSON (`label`, `outputs.0.class`), or
    `argmax:<path>` for a list of scores (`argmax:probabilities`). An empty path means the
    prediction itself. Parsed once (`parse`), applied per prediction (`__call__`).
    """

    path: tuple[str | int, ...]
    argmax: bool

    @classmethod
    def parse(cls, spec: str) -> LabelExtractor:
        """Parse a label spec; raises `LabelSpecError` with the reason."""
        text = spec.strip()
        argmax = text.startswith(ARGMAX_PREFIX)
        if argmax:
            text = text[len(ARGMAX_PREFIX) :].strip()
        path: list[str | int] = []
        for segment in text.split(".") if text else []:
            if not _SEGMENT.fullmatch(segment):
                raise LabelSpecError(f"label path {spec!r}: segment {segment!r} is not a key or an index")
            path.append(int(segment) if segment.isdigit() else segment)
        return cls(tuple(path), argmax)

    def __call__(self, prediction: Any) -> str | None:
        """The label as a string, or None when the prediction has none where the spec says."""
        value = prediction
        for step in self.path:
            if isinstance(step, int) and isinstance(value, list) and step < len(value):
                value = value[step]
            elif isinstance(value, dict) and str(step) in value:
                value = value[str(step)]
            else:
                return None
        return _argmax(value) if self.argmax else _scalar_label(value)


def _argmax(scores: Any) -> str | None:
    if not isinstance(scores, list) or not scores:
        return None
    numbers = [s for s in scores if isinstance(s, (int, float)) and not isinstance(s, bool)]
    if len(numbers) != len(scores) or any(math.isnan(s) for s in numbers):
        return None
    return str(max(range(len(numbers)), key=numbers.__getitem__))  # first of the ties, as numpy does


def _scalar_label(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else None
    if isinstance(value, (int, str)):
        return str(value) if str(value) else None
    return None


class LabelCap:
    """Keeps metric label cardinality bounded: the first `max_labels` distinct labels pass, the rest are "other".

    A vendor with thousands of classes (or a hostile one echoing input) must not grow the
    disagreement matrix without bound; first come first kept is stable, which dashboards need.
    """

    def __init__(self, max_labels: int) -> None:
        if max_labels < 1:
            raise ValueError("max_labels must be at least 1")
        self._max = max_labels
        self._seen: set[str] = set()

    def __call__(self, label: str) -> str:
        if label in self._seen:
            return label
        if len(self._seen) < self._max:
            self._seen.add(label)
            return label
        return OTHER_LABEL
