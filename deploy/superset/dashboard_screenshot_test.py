"""The dashboards render in a real browser: headless Chromium (Debian's `chromium`) over the
DevTools protocol logs in through Superset's login page, opens every dashboard and waits until
each chart has drawn; a chart that errors, says "No results" or draws nothing fails the test.
One PNG per dashboard is saved in the test's outputs ($TEST_UNDECLARED_OUTPUTS_DIR, i.e.
bazel-testlogs/deploy/superset/dashboard_screenshot_test/test.outputs/).

Chromium is installed by ./bazelw on Debian (apt `chromium`); elsewhere set DP_CHROMIUM to a
Chromium/Chrome binary. Run as root it needs --no-sandbox; the other flags keep it from trying
to reach the internet.
"""

import base64
import itertools
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest
from websockets.sync.client import connect

from deploy.common.process import die_with_parent, tail
from deploy.superset.testing import ADMIN, ADMIN_PASSWORD, marts_with_rows, superset  # noqa: F401 (fixtures)

# Dashboard slug -> number of charts it must draw.
DASHBOARDS = {
    "commerce-revenue": 3,
    "commerce-funnel": 2,
    "commerce-cohorts": 2,
    "commerce-top-products": 2,
    "commerce-rfm": 2,
}
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio",
    "--hide-scrollbars", "--window-size=1400,1100", "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]

# State of every chart on the page, as JSON. A chart counts as drawn when it shows a non-blank
# canvas (ECharts), table rows or a big number; `failed` catches Superset's error alerts and
# its "No results were returned" message.
CHART_STATE_JS = r"""
JSON.stringify([...document.querySelectorAll('.dashboard-component-chart-holder')].map(holder => {
  const text = holder.innerText || '';
  const canvases = [...holder.querySelectorAll('canvas')];
  let inked = 0;
  for (const canvas of canvases) {
    if (!canvas.width || !canvas.height) continue;
    try {
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 3; i < data.length; i += 4 * 7) { if (data[i] > 0) inked++; }
    } catch (e) { inked += 1; }
  }
  return {
    title: (holder.querySelector('.header-title, [data-test="editable-title"]') || {}).innerText || '',
    loading: !!holder.querySelector('.loading, [data-test="loading-indicator"], .ant-skeleton'),
    failed: !!holder.querySelector('.alert-danger, .ant-alert-error, [data-test="error-tooltip"]') ||
            /No results were returned|Unexpected error|Error:/.test(text),
    inked: inked,
    rows: holder.querySelectorAll('table tbody tr').length,
    bigNumber: (holder.querySelector('.header-line') || {}).innerText || '',
    text: text.slice(0, 300),
  };
}))
"""


def chromium_binary():
    explicit = os.environ.get("DP_CHROMIUM")
    for candidate in ([explicit] if explicit else []) + ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    pytest.fail("no Chromium found: run ./bazelw once (it installs Debian's chromium) or set DP_CHROMIUM")


class DevTools:
    """A minimal DevTools protocol client for one page target."""

    def __init__(self, ws_url):
        self.socket = connect(ws_url, max_size=None, open_timeout=30)
        self.ids = itertools.count(1)

    def call(self, method, timeout=60, **params):
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == message_id:
                if "error" in message:
                    raise AssertionError("%s failed: %s" % (method, message["error"]))
                return message.get("result", {})

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError("page script failed: %s" % result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.25)
        raise AssertionError("timed out after %.0f s waiting for %s (page: %s)" % (
            timeout, what, self.evaluate("location.href + ' ' + document.body.innerText.slice(0, 500)")))

    def navigate(self, url):
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", 60, "load of " + url)

    def type_into(self, selector, text):
        self.evaluate("document.querySelector(%s).focus()" % json.dumps(selector))
        self.call("Input.insertText", text=text)

    def close(self):
        self.socket.close()


@pytest.fixture(scope="module")
def browser(superset, tmp_path_factory):  # noqa: F811 (the fixture above)
    profile = pathlib.Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path_factory.mktemp("chromium")))
    log_path = profile.parent / "chromium.log"
    env = dict(os.environ, HOME=str(profile))
    with open(log_path, "wb") as log:
        process = subprocess.Popen([chromium_binary(), *CHROMIUM_FLAGS, "--user-data-dir=%s" % profile, "about:blank"],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   preexec_fn=die_with_parent())
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, "chromium exited with %s:\n%s" % (process.returncode, tail(log_path))
            assert time.monotonic() < deadline, "chromium did not open its DevTools port:\n" + tail(log_path)
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=10) as response:
            pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        devtools.call("Page.enable")
        devtools.call("Runtime.enable")
        devtools.call("Emulation.setDeviceMetricsOverride", width=1400, height=1100, deviceScaleFactor=1, mobile=False)
        yield devtools
        devtools.close()
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def logged_in(browser, superset):  # noqa: F811
    browser.navigate(superset.url + "/login/")
    browser.wait_for("!!document.querySelector('input[name=\"username\"], #username')", 60, "the login form")
    browser.type_into('input[name="username"], #username', ADMIN)
    browser.type_into('input[name="password"], #password', ADMIN_PASSWORD)
    browser.evaluate("(document.querySelector('button[type=\"submit\"], input[type=\"submit\"]')).click()")
    browser.wait_for("!location.pathname.startsWith('/login')", 60, "the login to complete")
    return browser


def save_screenshot(browser, name):
    outputs = pathlib.Path(os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR") or tempfile.mkdtemp(prefix="screens-"))
    outputs.mkdir(parents=True, exist_ok=True)
    # The viewport only: capturing beyond it re-lays the dashboard out and drops its charts.
    shot = browser.call("Page.captureScreenshot", format="png")
    path = outputs / ("%s.png" % name)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.mark.parametrize("slug", sorted(DASHBOARDS))
def test_dashboard_renders_non_empty_charts(logged_in, superset, slug):  # noqa: F811
    browser = logged_in
    browser.navigate("%s/superset/dashboard/%s/?standalone=1" % (superset.url, slug))
    expected = DASHBOARDS[slug]
    deadline = time.monotonic() + 120
    charts = []
    while time.monotonic() < deadline:
        charts = json.loads(browser.evaluate(CHART_STATE_JS) or "[]")
        failed = [c for c in charts if c["failed"]]
        if failed:
            save_screenshot(browser, slug + "-failed")
            pytest.fail("%s: chart(s) failed to render: %s" % (slug, failed))
        drawn = [c for c in charts if not c["loading"] and (c["inked"] > 50 or c["rows"] > 0 or c["bigNumber"])]
        if len(charts) == expected and len(drawn) == expected:
            break
        time.sleep(0.5)
    else:
        save_screenshot(browser, slug + "-timeout")
        pytest.fail("%s: expected %d drawn charts, page shows: %s" % (slug, expected, charts))
    # Give the renderers' entry animations a moment so the picture shows the final state.
    time.sleep(1.5)
    path = save_screenshot(browser, slug)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A dashboard without charts (header and grey grid only) compresses to ~15 kB at this size.
    assert path.stat().st_size > 25_000, "%s looks blank (%d bytes)" % (path, path.stat().st_size)
    # Still drawn when the picture was taken.
    after = json.loads(browser.evaluate(CHART_STATE_JS) or "[]")
    assert len(after) == expected and not any(c["failed"] or c["loading"] for c in after), after
    if slug == "commerce-revenue":
        big_numbers = [c["bigNumber"] for c in charts if c["bigNumber"]]
        assert big_numbers == ["12"], charts
    if slug == "commerce-top-products":
        assert any(c["rows"] == 3 for c in charts), charts
