"""A headless Chromium driven through chromedriver's W3C WebDriver HTTP API (with httpx: no selenium).

Debian's `chromium` and `chromium-driver` packages (scripts/setup.sh installs them); `browser()` is
None-safe to probe with `missing_browser()` first, so a test can skip with the reason.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

from tests.ports import free_port
from tests.processes import stop_process

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"  # the W3C spec's name for an element reference
START_TIMEOUT_S = 60.0
T = TypeVar("T")


def missing_browser() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    absent = [name for name in (CHROMIUM, CHROMEDRIVER) if shutil.which(name) is None]
    if absent:
        return (
            f"{' and '.join(absent)} not installed (Debian chromium, chromium-driver; scripts/setup.sh installs them)"
        )
    return None


class Browser:
    """One WebDriver session: navigate, find, type, click, run a script, read the console, screenshot."""

    def __init__(self, client: httpx.Client, session_id: str) -> None:
        self._client = client
        self._base = f"/session/{session_id}"

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        response = self._client.request(method, self._base + path, json=payload)
        body = response.json()
        if response.status_code != 200:
            raise RuntimeError(f"WebDriver {method} {path}: {response.status_code} {body}")
        return body["value"]

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def find_all(self, css: str) -> list[str]:
        """Element ids matching a CSS selector (empty when none)."""
        return [e[ELEMENT_KEY] for e in self._call("POST", "/elements", {"using": "css selector", "value": css})]

    def find(self, css: str) -> str:
        found = self.find_all(css)
        if not found:
            raise AssertionError(f"no element matches {css!r}")
        return found[0]

    def type_into(self, element: str, text: str) -> None:
        """Type `text` (into a file input: a local path, which the browser then uploads)."""
        self._call("POST", f"/element/{element}/value", {"text": text})

    def click(self, element: str) -> None:
        self._call("POST", f"/element/{element}/click", {})

    def run(self, script: str, *args: Any) -> Any:
        """Run a script in the page (`return …` gives the value back)."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def console(self) -> list[dict[str, Any]]:
        """The browser's console and network log entries since the last call (level, message)."""
        return list(self._call("POST", "/se/log", {"type": "browser"}))

    def screenshot_png(self) -> bytes:
        return base64.b64decode(self._call("GET", "/screenshot"))

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout_s: float = START_TIMEOUT_S) -> T:
        """Poll `probe` until it returns something truthy, else AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = probe()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)


@contextlib.contextmanager
def browser(window: tuple[int, int] = (1280, 1000)) -> Iterator[Browser]:
    """A headless Chromium session; chromedriver runs on a free loopback port for the block's duration."""
    port = free_port()
    driver = subprocess.Popen(
        [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=START_TIMEOUT_S) as client:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/status").json()["value"]["ready"]:
                        break
                if driver.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromedriver did not start (exit status {driver.poll()})")
                time.sleep(0.05)
            options = {
                "binary": shutil.which(CHROMIUM),
                "args": [
                    "--headless=new",
                    "--no-sandbox",  # tests may run as root (CI containers)
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    f"--window-size={window[0]},{window[1]}",
                ],
            }
            capabilities = {
                "browserName": "chrome",
                "goog:chromeOptions": options,
                "goog:loggingPrefs": {"browser": "ALL"},
            }
            created = client.post("/session", json={"capabilities": {"alwaysMatch": capabilities}})
            if created.status_code != 200:
                raise RuntimeError(f"chromedriver could not start chromium: {created.text}")
            session_id = created.json()["value"]["sessionId"]
            try:
                yield Browser(client, session_id)
            finally:
                client.delete(f"/session/{session_id}")
    finally:
        stop_process(driver)
