"""Read a class label out of one vendor prediction, bound what the vendor can put in one, and cap how
many distinct labels metrics see.

The vendor is untrusted: a label is whatever it answers, of any length and with any characters.
Before a label reaches a metric, a capture file's meta.json or a response body it goes through
`bounded_label` (or `bounded_vendor_label`, which keeps its type): a label of at most
`MAX_LABEL_CHARS` printable characters is kept as it is, any other becomes `h:` and the first 12
hex digits of its UTF-8 SHA-256 (`h:3f2b9c0e8d7a`), short, printable, and the same for the same
label on every gateway and after a restart. Equality (votes, raw against purified) is decided on
the full label, never on its bounded form. (Log lines name no label; one that quotes a vendor
answer quotes its repr, cut to 200 characters.)
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*|\d+")
ARGMAX_PREFIX = "argmax:"
OTHER_LABEL = "other"
MAX_LABEL_CHARS = 64
HASHED_LABEL_PREFIX = "h:"
HASHED_LABEL_HEX_DIGITS = 12

# A label as the vendor typed it: an int (argmax gives one too), an integral float, a non-empty string.
VendorLabel = int | float | str


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
        """The label as a string (`label_key`: 3, 3.0 and "3" are one label), or None when the prediction
        has none where the spec says. Unbounded: compare with it, and `bounded_label` it before it goes out."""
        value = self.read(prediction)
        return None if value is None else label_key(value)

    def read(self, prediction: Any) -> VendorLabel | None:
        """The label with the vendor's type (an int stays an int; argmax gives the index), or None when
        the prediction has none where the spec says. Unbounded, like `__call__`."""
        value = prediction
        for step in self.path:
            if isinstance(step, int) and isinstance(value, list) and step < len(value):
                value = value[step]
            elif isinstance(value, dict) and str(step) in value:
                value = value[str(step)]
            else:
                return None
        return _argmax(value) if self.argmax else _scalar_label(value)


def label_key(label: VendorLabel) -> str:
    """The string a label is compared and counted by: an integral float is its int (3.0 and 3 agree)."""
    return str(int(label)) if isinstance(label, float) else str(label)


def bounded_label(label: str) -> str:
    """`label` itself when it is at most `MAX_LABEL_CHARS` printable characters, else `h:` and 12 hex
    digits of its SHA-256: what a metric, a log line or a capture file may carry of a vendor's label."""
    if len(label) <= MAX_LABEL_CHARS and label.isprintable():
        return label
    # surrogatepass: JSON may hold a lone surrogate ("\ud800"), which plain UTF-8 cannot encode.
    digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()
    return HASHED_LABEL_PREFIX + digest[:HASHED_LABEL_HEX_DIGITS]


def bounded_vendor_label(label: VendorLabel | None) -> VendorLabel | None:
    """A label for a response body: the vendor's value and type when its text passes `bounded_label`
    (every float does, and any int of up to 64 digits), else the hash string in its place."""
    if label is None or isinstance(label, float):
        return label
    text = str(label)
    bounded = bounded_label(text)
    return label if bounded == text else bounded


def _argmax(scores: Any) -> int | None:
    if not isinstance(scores, list) or not scores:
        return None
    numbers = [s for s in scores if isinstance(s, (int, float)) and not isinstance(s, bool)]
    if len(numbers) != len(scores) or any(math.isnan(s) for s in numbers):
        return None
    return max(range(len(numbers)), key=numbers.__getitem__)  # first of the ties, as numpy does


def _scalar_label(value: Any) -> VendorLabel | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return value if value.is_integer() else None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return value or None
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
