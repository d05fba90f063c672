"""The dashboard pages and their static files, read once from the build's runfiles.

    /dashboards                        index: links to the pages
    /dashboards/iot                    IoT: temperature and humidity per site and device, readings/s, late, DLQ
    /dashboards/behaviour              behaviour: events/min by type, active users, sessions, funnel, top pages
    /dashboards/static/<file>          the pages' scripts and style, and Chart.js (from @npm_chartjs)

Only these fixed names are served (no path from a request ever reaches the file system). The
pages are static: they read the service's JSON API from the browser and redraw in place.
"""

from __future__ import annotations

import pathlib
from typing import Dict, Optional, Tuple

HERE = pathlib.Path(__file__).parent
# Runfiles root: <root>/<workspace>/services/analytics/web/pages.py. External repositories sit
# beside the workspace (<root>/npm_chartjs/...) and, in Bazel 4, under <workspace>/external/ too.
_ROOTS = (HERE.parents[3], HERE.parents[2] / "external")
CHART_JS = "npm_chartjs/node_modules/chart.js/dist/chart.umd.min.js"
CHART_JS_LICENSE = "npm_chartjs/node_modules/chart.js/LICENSE.md"

HTML = "text/html; charset=utf-8"
JS = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"
TEXT = "text/plain; charset=utf-8"

# route -> (content type, file in this folder, or a runfiles path of an external repository)
ROUTES = {
    "/dashboards": (HTML, "index.html"),
    "/dashboards/iot": (HTML, "iot.html"),
    "/dashboards/behaviour": (HTML, "behaviour.html"),
    "/dashboards/static/dashboard.js": (JS, "dashboard.js"),
    "/dashboards/static/iot.js": (JS, "iot.js"),
    "/dashboards/static/behaviour.js": (JS, "behaviour.js"),
    "/dashboards/static/style.css": (CSS, "style.css"),
    "/dashboards/static/chart.umd.min.js": (JS, CHART_JS),
    "/dashboards/static/chart.js-LICENSE.md": (TEXT, CHART_JS_LICENSE),
}


class PagesError(RuntimeError):
    """A file of the pages is missing from the runfiles (a build problem, not a request problem)."""


def _find(name: str) -> pathlib.Path:
    if "/" not in name:
        candidates = [HERE / name]
    else:
        candidates = [root / name for root in _ROOTS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise PagesError("dashboard file %s not found (looked in %s); run the service through Bazel "
                     "(bazel run //services/analytics) so its runfiles hold the pages and Chart.js"
                     % (name, ", ".join(str(c.parent) for c in candidates)))


class Pages:
    """Every route's (content type, bytes), loaded at start-up."""

    def __init__(self, files: Dict[str, Tuple[str, bytes]]):
        self.files = dict(files)

    @classmethod
    def load(cls) -> "Pages":
        return cls({route: (content_type, _find(name).read_bytes()) for route, (content_type, name) in ROUTES.items()})

    def get(self, path: str) -> Optional[Tuple[str, bytes]]:
        return self.files.get(path)
