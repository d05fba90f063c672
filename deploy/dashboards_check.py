"""The demo's browser check: the live dashboards open in headless Chromium while the stack runs.

For each page of the analytics service (`/dashboards/iot`, `/dashboards/behaviour`): the page
loads with no script error and no request leaving the service, its charts hold the data points
the pipelines produced, and it keeps redrawing in place (its refresh counter moves on, a marker
set in the page survives, so it was not reloaded). A screenshot of each page is saved.

The exact numbers each chart must show are asserted by //tests/browser:dashboards_test against
known records; this check is about the running demo.
"""

from __future__ import annotations

import pathlib
import time
from typing import Callable, List, Sequence, Tuple

from deploy.common.chromium import BrowserError, Chromium

PAGES = ("iot", "behaviour")
REFRESH_SECONDS = 2
# What the page holds: points per chart, refresh and error counters, the marker set by the check.
STATE = """(() => {
  const d = window.dpDashboard;
  if (!d) return null;
  const points = {};
  for (const [id, chart] of Object.entries(d.charts)) {
    points[id] = chart.data.datasets.reduce((n, s) => n + s.data.filter((p) => p !== null).length, 0);
  }
  return {refreshes: d.refreshes, errors: d.errors, lastError: d.lastError || null, points: points,
          marker: window.demoMarker || null};
})()"""


def check_page(browser: Chromium, base_url: str, name: str, out_dir: pathlib.Path,
               timeout: float = 90.0) -> Tuple[str, List[str]]:
    """Opens one dashboard; returns (a proof line, failures)."""
    page = browser.page()
    page.navigate("%s/dashboards/%s?window=30m&refresh=%d" % (base_url, name, REFRESH_SECONDS))
    page.wait_for("(() => { const s = %s; return s && s.refreshes > 0 && Object.values(s.points).some((n) => n > 0); })()"
                  % STATE, timeout=timeout, what="the %s dashboard's first data points" % name, explain=STATE)
    first = page.evaluate(STATE)
    page.evaluate("window.demoMarker = 'set before the live refreshes'")
    page.wait_for("(() => { const s = %s; return s && s.refreshes >= %d; })()" % (STATE, first["refreshes"] + 2),
                  timeout=timeout, what="two more refreshes of the %s dashboard" % name, explain=STATE)
    later = page.evaluate(STATE)
    shot = page.screenshot(out_dir / ("dashboard-%s.png" % name))
    failures = []
    if later["marker"] is None:
        failures.append("%s dashboard reloaded instead of redrawing in place" % name)
    if later["errors"]:
        failures.append("%s dashboard: %d failed refreshes (%s)" % (name, later["errors"], later["lastError"]))
    if page.exceptions():
        failures.append("%s dashboard: script errors %s" % (name, page.exceptions()[:3]))
    foreign = [url for url in page.requested_urls() if not url.startswith(base_url + "/")]
    if foreign:
        failures.append("%s dashboard requested other hosts: %s" % (name, sorted(set(foreign))[:3]))
    with_data = sorted(chart for chart, n in later["points"].items() if n > 0)
    line = ("dashboard  /dashboards/%-9s %d of %d charts with data (%d points), %d live refreshes, screenshot %s"
            % (name, len(with_data), len(later["points"]), sum(later["points"].values()),
               later["refreshes"], shot))
    return line, failures


def check(base_url: str, out_dir: pathlib.Path, say: Callable[[str], None],
          pages: Sequence[str] = PAGES) -> Tuple[List[str], List[str]]:
    """`pages` in one Chromium; returns (proof lines, failures). Chromium missing is a failure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    proof: List[str] = []
    failures: List[str] = []
    started = time.monotonic()
    try:
        with Chromium.launch(out_dir) as browser:
            for name in pages:
                line, failed = check_page(browser, base_url, name, out_dir)
                say(line)
                proof.append(line)
                failures += failed
    except BrowserError as err:
        failures.append("dashboards in Chromium: %s" % str(err).splitlines()[0])
    say("browser check took %.1f s" % (time.monotonic() - started))
    return proof, failures
