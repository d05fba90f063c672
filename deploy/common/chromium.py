"""Headless Chromium driven over its DevTools protocol (CDP): browser tests and the demo's live check.

    with Chromium.launch(tmp_dir) as browser:
        page = browser.page()
        page.navigate("http://127.0.0.1:8400/dashboards/iot")
        page.wait_for("window.dpDashboard.refreshes > 0", what="a first refresh")
        page.screenshot(out_dir / "iot.png")

Debian's `chromium` (./bazelw installs it), started with a fresh profile and the flags that keep
it from reaching for the internet; as root it needs --no-sandbox. The protocol is JSON over one
WebSocket per page: commands carry an id and get a result with that id, everything else is an
event (console messages, exceptions, network requests), kept for the test to inspect.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import time
import urllib.request
from typing import Any, List, Optional

from websockets.sync.client import connect

from deploy.common.process import die_with_parent, tail

EXECUTABLE = os.environ.get("DP_CHROMIUM", "/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",  # CI and sessions run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class BrowserError(AssertionError):
    """Chromium is missing, did not start, or a page command failed; the message says which."""


class Page:
    """One tab, over its own DevTools WebSocket."""

    def __init__(self, websocket_url: str):
        self._connection = contextlib.ExitStack()
        self._ws = self._connection.enter_context(connect(websocket_url, max_size=None, open_timeout=15))
        self._next_id = 0
        self.events: List[dict] = []
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.call(domain + ".enable")

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict:
        self._next_id += 1
        wanted = self._next_id
        self._ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError("no answer to %s within %.0f s" % (method, timeout))
            message = json.loads(self._ws.recv(timeout=remaining))
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError("%s failed: %s" % (method, message["error"]))
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def _drain(self) -> None:
        """Collects events that arrived while no command was waiting."""
        while True:
            try:
                message = json.loads(self._ws.recv(timeout=0))
            except TimeoutError:
                return
            if "method" in message:
                self.events.append(message)

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        seen = len(self.events)
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError("loading %s failed: %s" % (url, result["errorText"]))
        deadline = time.monotonic() + timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self.events[seen:]):
            if time.monotonic() > deadline:
                raise BrowserError("%s did not finish loading within %.0f s" % (url, timeout))
            self.call("Runtime.evaluate", expression="1")  # serves the event queue
            time.sleep(0.1)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError("%s threw: %s" % (expression[:80], details.get("exception", {}).get(
                "description", details.get("text"))))
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, what: str = "a condition",
                 explain: Optional[str] = None) -> Any:
        """Polls `expression` until it is truthy; on timeout the error shows `explain`'s value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                state = self.evaluate(explain) if explain else None
                raise BrowserError("timed out after %.0f s waiting for %s; page state: %s"
                                   % (timeout, what, json.dumps(state)[:3000]))
            time.sleep(0.25)

    def screenshot(self, path: pathlib.Path) -> pathlib.Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def exceptions(self) -> List[str]:
        self._drain()
        out = []
        for event in self.events:
            if event["method"] == "Runtime.exceptionThrown":
                details = event["params"]["exceptionDetails"]
                out.append(details.get("exception", {}).get("description") or details.get("text", "?"))
            elif event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error":
                entry = event["params"]["entry"]
                out.append("%s (%s)" % (entry["text"], entry.get("url", "")))
        return out

    def requested_urls(self) -> List[str]:
        self._drain()
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        self._connection.close()


class Chromium:
    """A headless Chromium process with its own profile directory; `close` stops it."""

    def __init__(self, process: subprocess.Popen, port: int, profile: pathlib.Path, log_path: pathlib.Path):
        self.process = process
        self.port = port
        self.profile = profile
        self.log_path = log_path
        self._pages: List[Page] = []

    @classmethod
    def launch(cls, work_dir: pathlib.Path, width: int = 1400, height: int = 1000,
               timeout: float = 60.0) -> "Chromium":
        if not (os.path.isfile(EXECUTABLE) and os.access(EXECUTABLE, os.X_OK)):
            raise BrowserError("no Chromium at %s: install Debian's chromium (./bazelw does) or set DP_CHROMIUM"
                               % EXECUTABLE)
        profile = work_dir / "chromium-profile"
        shutil.rmtree(profile, ignore_errors=True)
        profile.mkdir(parents=True)
        log_path = work_dir / "chromium.log"
        env = dict(os.environ, HOME=str(work_dir))  # the test sandbox may have no HOME
        log = open(log_path, "ab")
        process = subprocess.Popen(
            [EXECUTABLE, *FLAGS, "--user-data-dir=%s" % profile, "--window-size=%d,%d" % (width, height),
             "about:blank"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=die_with_parent())
        log.close()
        active = profile / "DevToolsActivePort"  # Chromium writes its debugging port here
        deadline = time.monotonic() + timeout
        while not (active.exists() and active.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(10)
                raise BrowserError("Chromium did not open its DevTools port (exit %s):\n%s"
                                   % (process.returncode, tail(log_path)))
            time.sleep(0.1)
        port = int(active.read_text().split()[0])
        return cls(process, port, profile, log_path)

    def page(self) -> Page:
        """A new tab."""
        request = urllib.request.Request("http://127.0.0.1:%d/json/new?about:blank" % self.port, method="PUT")
        with urllib.request.urlopen(request, timeout=15) as response:
            target = json.loads(response.read())
        page = Page(target["webSocketDebuggerUrl"])
        self._pages.append(page)
        return page

    def close(self) -> None:
        for page in self._pages:
            try:
                page.close()
            except Exception:  # noqa: BLE001 (the process goes next anyway)
                pass
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(15)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
