"""The HTTP API in-process over a migrated chdb store."""

import datetime as dt
import json
import urllib.error
import urllib.request

import pytest

from services.analytics import http_api, migrations, protobuf_schema, sink, testing
from services.analytics.metrics import Metrics
from services.analytics.store import ChdbStore
from services.analytics.web.pages import Pages

NOW = dt.datetime(2023, 11, 14, 23, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    store = ChdbStore(tmp_path_factory.mktemp("http") / "analytics")
    migrations.migrate(store)
    messages = testing.stream(devices=4, sites=2, minutes=3, versions=2)
    schema, name = sink.IOT_AGGREGATES.insert_schema()
    store.insert_protobuf(sink.IOT_AGGREGATES.ingest_table, schema, name,
                          protobuf_schema.frame([m.SerializeToString() for m in messages]))
    for target, values in ((sink.BEHAVIOUR_METRICS, testing.behaviour_stream(minutes=3, versions=2)),
                           (sink.BEHAVIOUR_SESSIONS, testing.session_stream(sessions=10, versions=2))):
        schema, name = target.insert_schema()
        store.insert_protobuf(target.ingest_table, schema, name,
                              protobuf_schema.frame([m.SerializeToString() for m in values]))
    consuming = {"assigned": True}
    app = http_api.Api(store, Metrics(), lambda: consuming["assigned"], now=lambda: NOW, pages=Pages.load())
    server = http_api.make_server(app, "127.0.0.1", 0)
    thread = http_api.serve_in_thread(server)
    base = "http://127.0.0.1:%d" % server.server_address[1]
    yield base, app, consuming
    http_api.stop(server, thread)
    store.close()


def call(url, method="GET"):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read()


def get_json(url):
    status, content_type, body = call(url)
    assert content_type == "application/json"
    return status, json.loads(body)


def test_aggregates(api):
    base, _, _ = api
    status, body = get_json(base + "/api/v1/iot/aggregates?scope=device&key_id=device-001&from=2023-11-14T22:00:00Z")
    assert status == 200
    assert body["query"] == "iot_aggregates" and body["row_count"] == 3
    assert [row["version"] for row in body["rows"]] == [2, 2, 2]
    assert body["rows"][0]["window_start"] == "2023-11-14T22:14:00.000Z"


def test_sites_latest_and_devices_top(api):
    base, _, _ = api
    status, body = get_json(base + "/api/v1/iot/sites/latest")
    assert status == 200 and [row["site_id"] for row in body["rows"]] == ["site-0", "site-1"]
    status, body = get_json(base + "/api/v1/iot/devices/top?metric=humidity&stat=mean&window=2h&limit=2")
    assert status == 200 and body["row_count"] == 2 and body["params"]["window_kind"] == "tumbling"


def test_bad_parameters_are_400_with_every_problem(api):
    base, _, _ = api
    status, body = get_json(base + "/api/v1/iot/aggregates?scope=moon&key_id=%27%3B+DROP&limit=-1&extra=1")
    assert status == 400 and body["error"] == "bad-request"
    assert len(body["problems"]) == 4, body["problems"]
    status, body = get_json(base + "/api/v1/iot/devices/top")
    assert status == 400 and body["problems"] == [
        "metric: required (which reading)"]


def test_behaviour_routes(api):
    base, _, _ = api
    window = "from=2023-11-14T22:00:00Z&to=2023-11-14T23:00:00Z"
    status, body = get_json(base + "/api/v1/behaviour/metrics?dimension=page_path&window_kind=tumbling&"
                            + window + "&limit=5")
    assert status == 200 and body["query"] == "behaviour_metrics" and body["row_count"] == 5
    assert body["rows"][0]["window_start"] == "2023-11-14T22:14:00.000Z" and body["rows"][0]["version"] == 2
    status, body = get_json(base + "/api/v1/behaviour/metrics?dimension=page_path&dimension_value=%2Fcart&" + window)
    assert status == 200 and [r["dimension_value"] for r in body["rows"]] == ["/cart"] * 3
    status, body = get_json(base + "/api/v1/behaviour/sessions/summary?" + window)
    assert status == 200 and body["row_count"] == 1 and body["rows"][0]["sessions"] == 10
    assert set(body["rows"][0]) >= {"converted_sessions", "conversion_rate", "mean_duration_seconds"}
    status, body = get_json(base + "/api/v1/behaviour/funnel?" + window)
    assert status == 200 and [r["stage"] for r in body["rows"]] == ["visit", "product_view", "cart", "checkout",
                                                                     "purchase"]
    status, body = get_json(base + "/api/v1/behaviour/top-pages?order_by=users&limit=2&" + window)
    assert status == 200 and body["row_count"] == 2 and body["params"]["order_by"] == "users"
    status, body = get_json(base + "/api/v1/behaviour/sessions?" + window)
    assert status == 200 and body["row_count"] == 10


def test_behaviour_bad_parameters_are_400_with_every_problem(api):
    base, _, _ = api
    status, body = get_json(base + "/api/v1/behaviour/metrics?dimension=browser&window_kind=session&limit=x")
    assert status == 400 and body["query"] == "behaviour_metrics" and len(body["problems"]) == 3, body
    status, body = get_json(base + "/api/v1/behaviour/funnel?from=2023-11-14T23:00:00Z&to=2023-11-14T22:00:00Z")
    assert status == 400 and body["problems"] == [
        "from: must be before to (2023-11-14T23:00:00+00:00 >= 2023-11-14T22:00:00+00:00)"]
    status, body = get_json(base + "/api/v1/behaviour/top-pages?order_by=revenue&sql=1")
    assert status == 400 and len(body["problems"]) == 2


def test_unknown_routes_and_methods(api):
    base, _, _ = api
    status, body = get_json(base + "/api/v1/sql?q=SELECT+1")
    assert status == 404 and "GET /api/v1/queries" in body["detail"]
    status, _, body = call(base + "/api/v1/iot/aggregates", method="POST")
    assert status == 405 and b"read-only" in body
    status, _, _ = call(base + "/api/v1/iot/aggregates", method="DELETE")
    assert status == 405


def test_catalogue(api):
    base, _, _ = api
    status, body = get_json(base + "/api/v1/queries")
    assert status == 200 and len(body["queries"]) == 9
    assert {q["path"] for q in body["queries"]} >= {
        "/api/v1/behaviour/metrics", "/api/v1/behaviour/sessions/summary", "/api/v1/behaviour/funnel",
        "/api/v1/behaviour/top-pages"}


def test_health_readiness_and_metrics(api):
    base, app, consuming = api
    assert get_json(base + "/healthz") == (200, {"status": "ok"})
    status, body = get_json(base + "/readyz")
    assert status == 200 and body["ready"] is True
    consuming["assigned"] = False
    status, body = get_json(base + "/readyz")
    assert status == 503 and body["checks"] == {"store": True, "consumer_assigned": False, "not_draining": True}
    consuming["assigned"] = True
    status, content_type, text = call(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    text = text.decode()
    assert 'analytics_query_seconds_count{query="iot_aggregates"}' in text
    assert 'analytics_http_requests_total{code="400",route="/api/v1/iot/aggregates"}' in text
    for name in ("analytics_rows_inserted", "analytics_batches", "analytics_insert_seconds",
                 "analytics_consumer_lag", "analytics_dead_letters", "analytics_ready"):
        assert "# TYPE %s" % name in text, name


def test_series_of_every_site(api):
    base, _, _ = api
    status, body = get_json(base + "/api/v1/iot/series?scope=site&from=2023-11-14T22:00:00Z")
    assert status == 200 and body["query"] == "iot_series" and body["row_count"] == 2 * 3
    assert [(row["key_id"], row["window_start"]) for row in body["rows"][:2]] == [
        ("site-0", "2023-11-14T22:14:00.000Z"), ("site-0", "2023-11-14T22:15:00.000Z")]
    status, body = get_json(base + "/api/v1/iot/series?scope=planet")
    assert status == 400 and body["problems"] == ["scope: must be one of device|site, got 'planet'"]


def test_dashboard_pages_and_their_files(api):
    base, _, _ = api
    for path in ("/dashboards", "/dashboards/iot", "/dashboards/behaviour/"):
        status, content_type, body = call(base + path)
        assert status == 200 and content_type == "text/html; charset=utf-8" and body.startswith(b"<!doctype html>")
    status, content_type, body = call(base + "/dashboards/static/chart.umd.min.js")
    assert status == 200 and content_type.startswith("text/javascript") and b"Chart" in body and len(body) > 100_000
    status, content_type, _ = call(base + "/dashboards/static/style.css")
    assert status == 200 and content_type.startswith("text/css")
    for missing in ("/dashboards/static/../../main.py", "/dashboards/static/nope.js", "/dashboards/admin"):
        status, body = get_json(base + missing)
        assert status == 404 and "/dashboards/iot" in body["detail"], missing
    status, _, _ = call(base + "/dashboards/iot", method="POST")
    assert status == 405


def test_dead_letters_without_a_kafka_client_is_unavailable_but_reports_the_sink(api):
    base, app, _ = api
    app.metrics.dead_letters.labels("iot.aggregates.v1", "undecodable-payload").inc(2)
    status, body = get_json(base + "/api/v1/pipeline/dead-letters")
    assert status == 503 and body["error"] == "unavailable"
    assert {"topic": "iot.aggregates.v1", "reason": "undecodable-payload", "records": 2} in body["analytics_sink"]
