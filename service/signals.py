"""Install handlers for SIGINT and SIGTERM for the length of a `with` block, then restore the old ones."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType

Handler = Callable[[int, FrameType | None], None]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals_handled(handler: Handler) -> Iterator[None]:
    """Route SIGINT and SIGTERM to `handler` inside the block (main thread only, as `signal` requires)."""
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
