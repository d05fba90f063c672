"""The pages' files resolve in the runfiles, and the pages reference only what the service serves."""

import re

from services.analytics.web import pages


def test_every_route_loads_from_the_runfiles():
    loaded = pages.Pages.load()
    assert set(loaded.files) == set(pages.ROUTES)
    content_type, chart_js = loaded.get("/dashboards/static/chart.umd.min.js")
    assert content_type.startswith("text/javascript") and len(chart_js) > 100_000
    assert b"Chart.js v4." in chart_js[:200], "not the pinned Chart.js 4 bundle"
    assert loaded.get("/dashboards/../pages.py") is None and loaded.get("/dashboards/static/") is None


def test_pages_load_only_local_files_and_draw_every_canvas():
    loaded = pages.Pages.load()
    for page, script in (("/dashboards/iot", "/dashboards/static/iot.js"),
                         ("/dashboards/behaviour", "/dashboards/static/behaviour.js")):
        html = loaded.get(page)[1].decode()
        references = re.findall(r'(?:src|href)="([^"]+)"', html)
        # Same-origin paths only (and the empty inline icon that stops a favicon request).
        assert references and all((ref.startswith("/") and not ref.startswith("//")) or ref == "data:,"
                                  for ref in references), references
        for ref in references:
            if ref.startswith("/dashboards"):
                assert loaded.get(ref) is not None, "%s references %s, which is not served" % (page, ref)
        assert "default-src 'self'" in html
        code = loaded.get(script)[1].decode()
        canvases = re.findall(r'<canvas id="([^"]+)"', html)
        assert canvases
        for canvas in canvases:
            assert '"%s"' % canvas in code, "%s has a canvas %s that %s never draws" % (page, canvas, script)


def test_a_missing_file_names_the_path_and_the_fix(monkeypatch):
    monkeypatch.setitem(pages.ROUTES, "/dashboards/static/gone.js", (pages.JS, "gone.js"))
    try:
        pages.Pages.load()
    except pages.PagesError as err:
        assert "gone.js" in str(err) and "bazel run //services/analytics" in str(err)
    else:
        raise AssertionError("a missing file must fail the load")
