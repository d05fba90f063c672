"""The live dashboard pages in headless Chromium, over a real broker and the real analytics binary.

Records go through Kafka with the project codec (the analytics service's own test streams), the
service stores them, and each page must draw exactly what those records say (checked against
sums computed here in Python), count the dead letters the service routed, then redraw in place
(no reload) when more records arrive. Screenshots of every state land in the test's outputs
(TEST_UNDECLARED_OUTPUTS_DIR: bazel-testlogs/tests/browser/dashboards_test/test.outputs/).
"""

import json
import os
import pathlib

import pytest

from datapipelines import kafka, records, topics
from services.analytics import testing
from services.analytics.service_process import ServiceProcess, produce
from deploy.common.chromium import Chromium
from tests.fixtures.kafka_broker import free_ports, kafka_broker  # noqa: F401  (pytest fixture)

RANGE = "from=2023-11-14T22:00:00Z&to=2023-11-14T23:00:00Z&refresh=1"
SPLIT = testing.BASE_SECONDS + 5 * 60  # records of windows/sessions starting before this come first
SEED = 11

# Every chart's data as the page holds it, and the tiles' text (evaluated in the page).
STATE = """(() => {
  const d = window.dpDashboard;
  if (!d) return null;
  const charts = {};
  for (const [id, chart] of Object.entries(d.charts)) {
    charts[id] = {
      labels: chart.data.datasets.map((s) => s.label),
      categories: chart.data.labels || [],
      points: chart.data.datasets.reduce((n, s) => n + s.data.length, 0),
      drawn: chart.data.datasets.reduce((n, s, i) => n + chart.getDatasetMeta(i).data.length, 0),
      values: chart.data.datasets.map((s) => s.data.map((p) => (p !== null && typeof p === "object" ? p.y : p))),
    };
  }
  const tiles = {};
  for (const element of document.querySelectorAll(".tile .value")) tiles[element.id] = element.textContent;
  return {refreshes: d.refreshes, errors: d.errors, lastError: d.lastError, charts: charts, tiles: tiles,
          status: document.getElementById("status").textContent, marker: window.testMarker || null};
})()"""


def outputs_dir(tmp_path):
    return pathlib.Path(os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR", tmp_path / "outputs"))


def bad_record(topic, key):
    """Undecodable bytes with the topic's contract headers: the sink dead-letters it."""
    good = records.encode(topic, topic.message_class()())
    return (key, b"\xff\xff\xff not protobuf", good.headers)


@pytest.fixture(scope="module")
def stack(kafka_broker, tmp_path_factory):  # noqa: F811
    kafka.ensure_topics(kafka_broker.bootstrap)
    work = tmp_path_factory.mktemp("dashboards")
    service = ServiceProcess(kafka_broker.bootstrap, work / "chdb", free_ports(1)[0], work / "analytics.log",
                             extra_args=["--batch-max-ms", "200"])
    service.start()
    try:
        service.wait_ready()
        with Chromium.launch(work) as browser:
            yield kafka_broker.bootstrap, service, browser
    finally:
        code = service.terminate() if service.exited() is None else service.exited()
        assert code == 0, service.log_text()[-3000:]


def stored(service, count):
    return lambda: (service.metric("analytics_rows_inserted_total")
                    + service.metric("analytics_dead_letters_total")) >= count


def open_page(browser, service, path):
    page = browser.page()
    page.navigate(service.base + path + "?" + RANGE)
    return page


def wait_state(page, condition, what, timeout=60):
    """Waits until `condition` (JS over `s`, the page state) holds; returns the state."""
    page.wait_for("(() => { const s = %s; return s && s.refreshes > 0 && (%s); })()" % (STATE, condition),
                  timeout=timeout, what=what, explain=STATE)
    return page.evaluate(STATE)


def assert_only_local_requests(page, service):
    urls = page.requested_urls()
    assert urls and all(url.startswith(service.base + "/") for url in urls), sorted(set(urls))
    assert page.exceptions() == []


# --- IoT -----------------------------------------------------------------------------------

def iot_expectations(messages):
    """Per tumbling window start: readings/s over the sites, and the sites' late readings."""
    per_second, late = {}, {}
    for m in testing.latest(messages).values():
        if m.scope == 2 and m.window_kind == 1:
            start = m.window_start_time.seconds
            per_second[start] = per_second.get(start, 0) + m.reading_count / 60
            late[(m.key_id, start)] = m.late_reading_count
    return [per_second[k] for k in sorted(per_second)], late


def test_iot_page_draws_the_stored_windows_and_updates_live(stack, tmp_path):
    bootstrap, service, browser = stack
    messages = testing.stream(devices=6, sites=2, minutes=8, versions=2, seed=SEED)
    first = [m for m in messages if m.window_start_time.seconds < SPLIT]
    later = [m for m in messages if m.window_start_time.seconds >= SPLIT]
    produce(bootstrap, first, raw=[bad_record(topics.IOT_AGGREGATES, b"bad-1")])
    service.wait_for(stored(service, len(first) + 1), what="the first IoT records stored")

    page = open_page(browser, service, "/dashboards/iot")
    state = wait_state(page, "s.charts['site-temperature'].points === 10 && s.charts['side-topics'].values[0]"
                             ".some((v) => v > 0)", "the first five minutes and a dead letter")
    charts = state["charts"]
    assert state["errors"] == 0, state["lastError"]
    assert charts["site-temperature"]["labels"] == ["site-0", "site-1"]
    assert charts["site-humidity"]["points"] == 10
    assert charts["device-temperature"]["labels"] == ["device-%03d" % n for n in range(6)]
    assert charts["device-temperature"]["points"] == charts["device-humidity"]["points"] == 6 * 5
    for chart in charts.values():
        assert chart["drawn"] == chart["points"] > 0, chart
    per_second, late = iot_expectations(first)
    assert charts["readings-per-second"]["values"][0] == pytest.approx(per_second)
    assert charts["late-readings"]["values"][0] == [late[("site-0", s)] for s in sorted({k[1] for k in late})]
    side = dict(zip(charts["side-topics"]["categories"], charts["side-topics"]["values"][0]))
    assert side["iot.aggregates.v1.dlq"] == 1 and side["iot.cdc.readings.dlq"] == 0
    assert "iot.readings.late.v1" in side and not any(name.startswith("behaviour.") for name in side)
    assert state["tiles"]["tile-sites"] == "2" and state["tiles"]["tile-devices"] == "6"
    assert state["tiles"]["tile-dead-letters"] == "1"
    page.screenshot(outputs_dir(tmp_path) / "iot-1-initial.png")

    page.evaluate("window.testMarker = 'same page'")
    produce(bootstrap, later, raw=[bad_record(topics.IOT_AGGREGATES, b"bad-2"),
                                   bad_record(topics.IOT_AGGREGATES, b"bad-3")])
    state = wait_state(page, "s.charts['site-temperature'].points === 16 && s.tiles['tile-dead-letters'] === '3'",
                       "the later three minutes and two more dead letters")
    charts = state["charts"]
    assert state["marker"] == "same page", "the page reloaded instead of redrawing"
    assert charts["device-temperature"]["points"] == 6 * 8
    per_second, _ = iot_expectations(messages)
    assert charts["readings-per-second"]["values"][0] == pytest.approx(per_second) and len(per_second) == 8
    page.screenshot(outputs_dir(tmp_path) / "iot-2-updated.png")
    assert_only_local_requests(page, service)


# --- behaviour -----------------------------------------------------------------------------

def funnel_expectation(sessions):
    latest = testing.latest_by(sessions, testing.session_identity).values()
    return [sum(1 for s in latest if s.funnel_stage >= stage) for stage in range(1, 6)]


def test_behaviour_page_draws_metrics_sessions_funnel_and_pages_and_updates_live(stack, tmp_path):
    bootstrap, service, browser = stack
    metrics = testing.behaviour_stream(minutes=8, versions=2, seed=SEED)
    sessions = testing.session_stream(sessions=30, versions=2, seed=SEED)
    first_metrics = [m for m in metrics if m.window_start_time.seconds < SPLIT]
    first_sessions = [s for s in sessions if s.session_start_time.seconds < SPLIT]
    before = service.metric("analytics_rows_inserted_total") + service.metric("analytics_dead_letters_total")
    produce(bootstrap, first_metrics, topic=topics.BEHAVIOUR_METRICS,
            raw=[bad_record(topics.BEHAVIOUR_METRICS, b"bad-m1")])
    produce(bootstrap, first_sessions, topic=topics.BEHAVIOUR_SESSIONS)
    service.wait_for(stored(service, before + len(first_metrics) + len(first_sessions) + 1),
                     what="the first behaviour records stored")

    page = open_page(browser, service, "/dashboards/behaviour")
    state = wait_state(page, "s.charts['events-by-type'].points === 4 * 5 && s.tiles['tile-dead-letters'] === '1'",
                       "five minutes of metrics and a dead letter")
    charts = state["charts"]
    assert state["errors"] == 0, state["lastError"]
    assert sorted(charts["events-by-type"]["labels"]) == ["add_to_cart", "page_view", "product_view", "purchase"]
    latest = testing.latest_by(first_metrics, testing.metric_identity).values()
    page_views = sorted((m.window_start_time.seconds, m.event_count) for m in latest
                        if m.dimension == 2 and m.dimension_value == "USER_EVENT_TYPE_PAGE_VIEW")
    by_label = dict(zip(charts["events-by-type"]["labels"], charts["events-by-type"]["values"]))
    assert by_label["page_view"] == [count for _, count in page_views]
    assert charts["active-users"]["labels"] == ["users", "sessions"] and charts["active-users"]["points"] == 2 * 5
    assert charts["funnel"]["categories"] == ["visit", "product view", "cart", "checkout", "purchase"]
    assert charts["funnel"]["values"][0] == funnel_expectation(first_sessions)
    assert sum(charts["sessions-started"]["values"][0]) == len({s.session_id for s in first_sessions})
    assert sorted(charts["top-pages"]["categories"]) == sorted(testing.PAGES)
    side = dict(zip(charts["side-topics"]["categories"], charts["side-topics"]["values"][0]))
    assert side["behaviour.metrics.v1.dlq"] == 1 and side["behaviour.events.v1.dlq"] == 0
    for chart in charts.values():
        assert chart["drawn"] == chart["points"] > 0, chart
    page.screenshot(outputs_dir(tmp_path) / "behaviour-1-initial.png")

    page.evaluate("window.testMarker = 'same page'")
    later_sessions = [s for s in sessions if s.session_start_time.seconds >= SPLIT]
    produce(bootstrap, [m for m in metrics if m.window_start_time.seconds >= SPLIT], topic=topics.BEHAVIOUR_METRICS)
    produce(bootstrap, later_sessions, topic=topics.BEHAVIOUR_SESSIONS)
    want_sessions = len({s.session_id for s in sessions})
    state = wait_state(page, "s.charts['events-by-type'].points === 4 * 8 && "
                             "s.charts['sessions-started'].values[0].reduce((a, b) => a + b, 0) === %d"
                       % want_sessions, "the later metrics and sessions")
    charts = state["charts"]
    assert state["marker"] == "same page", "the page reloaded instead of redrawing"
    assert later_sessions and charts["funnel"]["values"][0] == funnel_expectation(sessions)
    assert state["tiles"]["tile-sessions"] == str(want_sessions)
    page.screenshot(outputs_dir(tmp_path) / "behaviour-2-updated.png")
    assert_only_local_requests(page, service)


# The x axis labels of each time chart with data, as Chart.js drew them.
X_TICKS = """(() => {
  const out = {};
  for (const [id, chart] of Object.entries(window.dpDashboard.charts)) {
    if (chart.config.type === "line" && chart.data.datasets.some((s) => s.data.length)) {
      out[id] = chart.scales.x.ticks.map((t) => t.label);
    }
  }
  return out;
})()"""
ONE_WINDOW_MINUTE = 24 * 60  # a day after the other tests' windows: alone in its range


def test_a_single_window_gets_distinct_minute_ticks(stack, tmp_path):
    """One window is one x value: the axis must still show a few distinct whole minutes around it."""
    bootstrap, service, browser = stack
    metrics = [testing.behaviour_metric(2, name, ONE_WINDOW_MINUTE, 1, closed=True) for name in testing.EVENT_TYPES]
    before = service.metric("analytics_rows_inserted_total") + service.metric("analytics_dead_letters_total")
    produce(bootstrap, metrics, topic=topics.BEHAVIOUR_METRICS)
    service.wait_for(stored(service, before + len(metrics)), what="one window of behaviour metrics stored")
    start = testing.BASE_SECONDS + 60 * ONE_WINDOW_MINUTE
    page = browser.page()
    page.navigate(service.base + "/dashboards/behaviour?from=%s&to=%s&refresh=1"
                  % (testing.iso(start - 600), testing.iso(start + 600)))
    wait_state(page, "s.charts['events-by-type'].points === %d" % len(metrics), "the single window drawn")
    ticks = page.evaluate(X_TICKS)
    page.screenshot(outputs_dir(tmp_path) / "behaviour-single-window.png")
    minute = testing.iso(start)[11:16]
    assert "events-by-type" in ticks, ticks
    for chart, labels in ticks.items():
        assert len(labels) == len(set(labels)), (chart, labels)
        assert 2 <= len(labels) <= 9 and minute in labels, (chart, labels)


def test_index_links_both_pages(stack, tmp_path):
    _, service, browser = stack
    page = browser.page()
    page.navigate(service.base + "/dashboards")
    links = page.evaluate("Array.from(document.querySelectorAll('a')).map((a) => a.getAttribute('href'))")
    assert {"/dashboards/iot", "/dashboards/behaviour"} <= set(links), json.dumps(links)
    page.screenshot(outputs_dir(tmp_path) / "index.png")
