"""`run_gateway(settings)`: serve the gateway with uvicorn in this process (`zipgate serve`).

Shutdown on SIGTERM or Ctrl+C, in order: the gateway marks itself draining (`/readyz` 503, and a
request that still arrives gets 503 with Retry-After); within uvicorn's 0.1 s tick it closes the
listener (new connections are refused: what a load balancer sees, a connect error it may retry
elsewhere) and idle keep-alive connections, and waits up to `drain_timeout_s` for requests in
flight, whose queued images keep being purified and whose answers carry `Connection: close`; just
before that budget ends, requests still in flight answer 503 with Retry-After (`stop_in_flight`);
the lifespan drains the pool and closes the vendor client; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Iterator
from types import FrameType

import uvicorn

from service.api.app import create_app
from service.api.lifecycle import Lifecycle
from service.api.logging import configure_logging
from service.api.schemas import Readiness
from service.config import Settings
from service.config_sources import file_settings_overridden_by_env
from service.signals import stop_signals_handled
from service.workers import PurifierFactory

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_START_FAILED = 3  # uvicorn's own code for a failed start-up
# Kept back from the drain budget to answer the requests it cuts short (503 JSON) before uvicorn's
# graceful timeout cancels what is left, which uvicorn answers with a plain-text 500 and no request id.
ANSWER_RESERVE_S = 0.5
ANSWER_RESERVE_FRACTION = 0.25  # of a budget too short for the full reserve


class GatewayServer(uvicorn.Server):
    """uvicorn's server, plus: drain begins the moment a signal arrives, and a failed model load
    stops the process (instead of a server that is alive but can never become ready)."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.start_failed = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler: mark draining first (plain attribute writes), then uvicorn's shutdown."""
        self.lifecycle.begin_drain()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's shutdown, ending requests still in flight with a 503 shortly before its graceful timeout."""
        self.lifecycle.begin_drain()  # no-op after a signal; covers should_exit set any other way
        budget_s = self.config.timeout_graceful_shutdown
        stopper: asyncio.Task[None] | None = None
        if budget_s is not None:  # None: uvicorn waits for ever, and so do the requests
            reserve_s = min(ANSWER_RESERVE_S, ANSWER_RESERVE_FRACTION * budget_s)
            stopper = asyncio.create_task(
                self._stop_in_flight_after(self.lifecycle.drain_time_left(budget_s) - reserve_s),
                name="zipgate-drain-stop",
            )
        try:
            await super().shutdown(sockets)
        finally:
            if stopper is not None:
                stopper.cancel()
        began = self.lifecycle.drain_started
        drain_s = 0.0 if began is None else time.monotonic() - began
        logger.info(
            "shut down %.2f s after the drain began (drain_timeout_s %s)",
            drain_s,
            budget_s,
            extra={"drain_s": round(drain_s, 3)},
        )

    async def _stop_in_flight_after(self, delay_s: float) -> None:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        self.lifecycle.stop_in_flight()

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's 0.1 s housekeeping tick; also exits once start-up has failed."""
        if self.lifecycle.state is Readiness.FAILED and not self.should_exit:
            self.start_failed = True
            self.should_exit = True
        return await super().on_tick(counter)


def gateway_server(settings: Settings, *, purifier_factory: PurifierFactory | None = None) -> GatewayServer:
    """The configured server, not yet running (the demo runs it in a thread).

    Args:
        settings: the validated settings.
        purifier_factory: see `create_app` (tests inject a slow or failing purifier).

    Raises:
        ConfigError: see `create_app`.
    """
    app = create_app(settings, purifier_factory=purifier_factory)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,  # keep our JSON logging (configure_logging) instead of uvicorn's
        access_log=False,  # GatewayMiddleware logs each request with its id
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),  # uvicorn takes whole seconds
        # Bounds open connections (and with them file descriptors): past it uvicorn answers 503 itself.
        limit_concurrency=settings.max_connections,
    )
    return GatewayServer(config, app.state.lifecycle)


def run_gateway(settings: Settings, sockets: list[socket.socket] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, drain, and return the process exit code.

    Args:
        settings: the validated settings (host, port, log level and all the rest).
        sockets: already bound sockets to serve on instead of host/port.

    Returns:
        0 after a clean shutdown; 3 when the model or the server failed to start.

    Raises:
        ConfigError: see `create_app`.
    """
    configure_logging(settings.log_level.value)
    warn_of_file_values_the_env_overrides(settings)
    server = gateway_server(settings)
    with _signals_end_cleanly():
        server.run(sockets=sockets)
    if server.start_failed or not server.started:
        return EXIT_START_FAILED
    return EXIT_OK


def warn_of_file_values_the_env_overrides(settings: Settings) -> None:
    """Log a warning for each config-file value an environment variable overrides (the environment
    outranks the file: the image's ZIPGATE_HOST, ZIPGATE_PORT and ZIPGATE_MODEL_PATH, a ConfigMap's)."""
    overridden = file_settings_overridden_by_env(settings.config_file, Settings.model_fields)
    for name, variable in overridden.items():  # names only: a file's values may be credentials
        logger.warning(
            "config file %s sets %s, but the environment variable %s overrides it; "
            "unset the variable (or set the value there) to use the file's",
            settings.config_file,
            name,
            variable,
            extra={
                "setting": name,
                "config_file": str(settings.config_file),
                "env": variable,
            },
        )


@contextlib.contextmanager
def _signals_end_cleanly() -> Iterator[None]:
    """After a graceful shutdown uvicorn re-raises the signal that caused it, under the handlers
    that were installed before it started. With the defaults that would kill a fully drained
    process with 143 (SIGTERM) or a KeyboardInterrupt trace; orchestrators expect 0."""
    with stop_signals_handled(_ignore):
        yield


def _ignore(sig: int, frame: FrameType | None) -> None:
    """Placeholder handler: the signal was already handled by uvicorn's shutdown."""
