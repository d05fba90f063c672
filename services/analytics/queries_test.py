"""Named queries: validation and rendering (no store), then every query against chdb."""

import datetime as dt
import math

import pytest

from services.analytics import migrations, protobuf_schema, queries, sink, testing
from services.analytics.store import ChdbStore

NOW = dt.datetime(2023, 11, 14, 23, 0, tzinfo=dt.timezone.utc)


def now():
    return NOW


def validate(query, **params):
    return query.validate({k: [v] for k, v in params.items()}, now)


def problems(query, raw):
    with pytest.raises(queries.BadRequest) as caught:
        query.validate(raw, now)
    return caught.value.problems


# --- validation --------------------------------------------------------------------------

def test_aggregates_defaults_and_types():
    values = validate(queries.AGGREGATES, scope="device", key_id="device-001")
    assert values["window_kind"] == "tumbling" and values["limit"] == 1000 and values["closed_only"] is False
    assert values["to"] == NOW and values["from"] == NOW - dt.timedelta(hours=1)
    values = validate(queries.AGGREGATES, scope="site", key_id="site-1", window_kind="hopping",
                      **{"from": "2023-11-14T20:00:00+02:00", "to": "2023-11-14T22:00:00", "limit": "5",
                         "closed_only": "true"})
    assert values["from"] == dt.datetime(2023, 11, 14, 18, 0, tzinfo=dt.timezone.utc)
    assert values["to"] == dt.datetime(2023, 11, 14, 22, 0, tzinfo=dt.timezone.utc)
    assert values["limit"] == 5 and values["closed_only"] is True


def test_every_problem_is_reported_at_once():
    found = problems(queries.AGGREGATES, {"scope": ["planet"], "key_id": ["x' OR 1=1"], "limit": ["0"],
                                          "from": ["yesterday"], "sql": ["DROP TABLE x"]})
    text = "\n".join(found)
    assert "sql: unknown parameter" in text
    assert "scope: must be one of device|site" in text
    assert "key_id: must be 1-128 characters" in text
    assert "limit: must be between 1 and 10000" in text
    assert "from: must be an ISO 8601 time" in text


@pytest.mark.parametrize("raw, message", [
    ({"scope": ["device"]}, "key_id: required"),
    ({"scope": ["device"], "key_id": ["a", "b"]}, "given 2 times"),
    ({"scope": ["device"], "key_id": ["d"], "from": ["2023-11-14T22:00:00Z"], "to": ["2023-11-14T21:00:00Z"]},
     "from: must be before to"),
    ({"scope": ["device"], "key_id": ["d"], "from": ["2023-01-01T00:00:00Z"], "to": ["2023-03-01T00:00:00Z"]},
     "span at most 31 days"),
    ({"scope": ["device"], "key_id": ["d"], "to": ["1900-01-01T00:00:00Z"]}, "between 1971 and 2200"),
    ({"scope": ["device"], "key_id": ["d"], "limit": ["1e3"]}, "whole number"),
    ({"scope": ["device"], "key_id": ["d"], "closed_only": ["maybe"]}, "true or false"),
    ({"scope": ["device"], "key_id": ["d" * 129]}, "1-128 characters"),
])
def test_aggregates_rejections(raw, message):
    assert any(message in problem for problem in problems(queries.AGGREGATES, raw)), problems(queries.AGGREGATES, raw)


@pytest.mark.parametrize("raw, message", [
    ({}, "metric: required"),
    ({"metric": ["co2"]}, "metric: must be one of temperature|humidity|pressure|battery"),
    ({"metric": ["temperature"], "stat": ["median"]}, "stat: must be one of max|min|mean"),
    ({"metric": ["temperature"], "window": ["1w"]}, "duration like"),
    ({"metric": ["temperature"], "window": ["40d"]}, "between 1m and 31d"),
    ({"metric": ["temperature"], "window": ["10s"]}, "between 1m and 31d"),
    ({"metric": ["temperature"], "order": ["sideways"]}, "desc|asc"),
])
def test_devices_top_rejections(raw, message):
    assert any(message in problem for problem in problems(queries.DEVICES_TOP, raw))


def test_rendering_binds_values_and_takes_identifiers_from_fixed_maps():
    rendered = queries.DEVICES_TOP.render(validate(queries.DEVICES_TOP, metric="humidity", stat="mean",
                                                   order="asc", window="15m", site_id="site-1"))
    assert "sum(humidity_percent_sum) / sum(humidity_percent_count) AS value_mean" in rendered.sql
    assert "ORDER BY value_mean ASC, device_id" in rendered.sql
    assert "site-1" not in rendered.sql and rendered.params["site_id"] == "site-1"
    assert rendered.params["from"] == "2023-11-14 22:45:00.000" and rendered.params["to"] == "2023-11-14 23:00:00.000"
    with pytest.raises(ValueError):
        queries.devices_top_sql("temperature_celsius_max) FROM system.users --", "max", "desc")
    rendered = queries.AGGREGATES.render(validate(queries.AGGREGATES, scope="device", key_id="dev:1@a.b_c-d"))
    assert "dev:1" not in rendered.sql and rendered.params["key_id"] == "dev:1@a.b_c-d"
    for query in queries.ALL:
        assert " FINAL" in query.render(_defaults(query)).sql, query.name


def _defaults(query):
    required = {"scope": "device", "key_id": "d", "metric": "temperature"}  # behaviour queries need none
    return validate(query, **{p.name: required[p.name] for p in query.params if p.required})


def test_queries_describe_themselves():
    described = [query.describe() for query in queries.ALL]
    assert {d["path"] for d in described} == {
        "/api/v1/iot/aggregates", "/api/v1/iot/series", "/api/v1/iot/sites/latest", "/api/v1/iot/devices/top",
        "/api/v1/behaviour/metrics", "/api/v1/behaviour/sessions", "/api/v1/behaviour/sessions/summary",
        "/api/v1/behaviour/funnel", "/api/v1/behaviour/top-pages"}
    assert len({d["name"] for d in described}) == len(described)
    assert all(p["help"] for d in described for p in d["params"])


# --- against chdb ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    store = ChdbStore(tmp_path_factory.mktemp("queries") / "analytics")
    migrations.migrate(store)
    messages = testing.stream(devices=8, sites=3, minutes=6, versions=3, seed=5, kinds=(1, 2))
    # The newest window of site-0 is still open (version 2 of 3 not yet closed).
    messages = [m for m in messages if not (m.scope == 2 and m.key_id == "site-0" and m.window_kind == 1
                                            and m.window_start_time.seconds == testing.BASE_SECONDS + 300
                                            and m.version == 3)]
    target = sink.IOT_AGGREGATES
    schema, name = target.insert_schema()
    store.insert_protobuf(target.ingest_table, schema, name,
                          protobuf_schema.frame([m.SerializeToString() for m in messages]))
    metrics = testing.behaviour_stream(minutes=6, versions=3, seed=5, kinds=(1, 2))
    sessions = testing.session_stream(sessions=40, versions=3, seed=5)
    for target, values in ((sink.BEHAVIOUR_METRICS, metrics), (sink.BEHAVIOUR_SESSIONS, sessions)):
        schema, name = target.insert_schema()
        store.insert_protobuf(target.ingest_table, schema, name,
                              protobuf_schema.frame([m.SerializeToString() for m in values]))
    BEHAVIOUR.update(metrics=testing.latest_by(metrics, testing.metric_identity),
                     sessions=testing.latest_by(sessions, testing.session_identity))
    yield store, testing.latest(messages)
    store.close()


BEHAVIOUR = {}  # the latest behaviour messages the `seeded` store holds


def test_aggregates_returns_the_latest_version_of_each_window(seeded):
    store, latest = seeded
    answer = queries.run(store, queries.AGGREGATES, validate(
        queries.AGGREGATES, scope="device", key_id="device-003", **{"from": "2023-11-14T22:00:00Z"}))
    wanted = sorted((m for m in latest.values() if m.key_id == "device-003" and m.window_kind == 1),
                    key=lambda m: m.window_start_time.seconds)
    assert answer["row_count"] == len(wanted) == 6
    for row, message in zip(answer["rows"], wanted):
        expected = testing.expected_row(message)
        for column in ("window_start", "window_end", "version", "reading_count", "emit_time", "window_closed",
                       "temperature_celsius_max"):
            assert row[column] == expected[column], column
    assert answer["params"]["from"] == "2023-11-14T22:00:00Z"


def test_sites_latest_skips_open_windows_unless_asked(seeded):
    store, latest = seeded
    closed = queries.run(store, queries.SITES_LATEST, validate(queries.SITES_LATEST))
    by_site = {row["site_id"]: row for row in closed["rows"]}
    assert sorted(by_site) == ["site-0", "site-1", "site-2"]
    assert by_site["site-1"]["window_start"] == "2023-11-14T22:19:00.000Z"
    assert by_site["site-0"]["window_start"] == "2023-11-14T22:18:00.000Z"  # its last window is open
    assert all(row["window_closed"] for row in closed["rows"])
    anything = queries.run(store, queries.SITES_LATEST, validate(queries.SITES_LATEST, closed_only="false",
                                                                 site_id="site-0"))
    assert [row["window_start"] for row in anything["rows"]] == ["2023-11-14T22:19:00.000Z"]
    assert anything["rows"][0]["version"] == 2 and anything["rows"][0]["window_closed"] is False


def test_devices_top_ranks_by_the_merged_statistic(seeded):
    store, latest = seeded
    answer = queries.run(store, queries.DEVICES_TOP, validate(
        queries.DEVICES_TOP, metric="temperature", stat="mean", window="1h", to="2023-11-14T23:00:00Z", limit="3"))
    per_device = {}
    for m in latest.values():
        if m.scope == 1 and m.window_kind == 1:
            total, count = per_device.get(m.key_id, (0.0, 0))
            per_device[m.key_id] = (total + m.temperature_celsius.sum, count + m.temperature_celsius.count)
    ranked = sorted(per_device, key=lambda k: -per_device[k][0] / per_device[k][1])[:3]
    assert [row["device_id"] for row in answer["rows"]] == ranked
    for row in answer["rows"]:
        total, count = per_device[row["device_id"]]
        assert math.isclose(row["value_mean"], total / count, rel_tol=1e-9)
        assert row["windows"] == 6
    empty = queries.run(store, queries.DEVICES_TOP, validate(
        queries.DEVICES_TOP, metric="temperature", to="2020-01-01T00:00:00Z"))
    assert empty["rows"] == []


def test_series_returns_every_key_of_a_scope_by_key_then_time(seeded):
    store, latest = seeded
    window = {"from": "2023-11-14T22:00:00Z", "to": "2023-11-14T23:00:00Z"}
    answer = queries.run(store, queries.SERIES, validate(queries.SERIES, scope="site", **window))
    wanted = sorted((m for m in latest.values() if m.scope == 2 and m.window_kind == 1),
                    key=lambda m: (m.key_id, m.window_start_time.seconds))
    assert answer["row_count"] == len(wanted) == 3 * 6
    for row, message in zip(answer["rows"], wanted):
        expected = testing.expected_row(message)
        assert (row["key_id"], row["window_start"]) == (message.key_id, expected["window_start"])
        for column in ("window_end", "reading_count", "late_reading_count", "temperature_celsius_mean",
                       "humidity_percent_mean", "humidity_percent_max", "window_closed"):
            assert row[column] == expected[column], column
    devices = queries.run(store, queries.SERIES, validate(queries.SERIES, scope="device", site_id="site-1",
                                                          window_kind="hopping", **window))
    wanted_keys = {m.key_id for m in latest.values() if m.scope == 1 and m.site_id == "site-1"}
    assert {row["key_id"] for row in devices["rows"]} == wanted_keys and len(wanted_keys) == 3
    assert {row["site_id"] for row in devices["rows"]} == {"site-1"} and devices["row_count"] == 3 * 6
    assert problems(queries.SERIES, {"scope": ["site"], "site_id": ["a b"]})[0].startswith("site_id:")
    empty = queries.run(store, queries.SERIES, validate(queries.SERIES, scope="site", to="2020-01-01T00:00:00Z"))
    assert empty["rows"] == []


# --- behaviour: validation and rendering ---------------------------------------------------

def test_behaviour_metrics_defaults_and_free_text_values():
    values = validate(queries.BEHAVIOUR_METRICS)
    assert values["dimension"] == "all" and values["window_kind"] == "tumbling" and values["dimension_value"] is None
    assert values["from"] == NOW - dt.timedelta(hours=1) and values["to"] == NOW
    values = validate(queries.BEHAVIOUR_METRICS, dimension="page_path", dimension_value="/products/1?x='y'")
    rendered = queries.BEHAVIOUR_METRICS.render(values)
    assert rendered.params["dimension_value"] == "/products/1?x='y'" and "/products" not in rendered.sql
    assert rendered.params["dimension"] == "page_path" and " FINAL" in rendered.sql


@pytest.mark.parametrize("query, raw, message", [
    (queries.BEHAVIOUR_METRICS, {"dimension": ["browser"]}, "dimension: must be one of all|event_type|page_path"),
    (queries.BEHAVIOUR_METRICS, {"window_kind": ["session"]}, "window_kind: must be one of tumbling|hopping"),
    (queries.BEHAVIOUR_METRICS, {"dimension_value": ["x" * 257]}, "1-256 characters"),
    (queries.BEHAVIOUR_METRICS, {"dimension_value": ["a\nb"]}, "control characters"),
    (queries.BEHAVIOUR_METRICS, {"limit": ["10001"]}, "between 1 and 10000"),
    (queries.BEHAVIOUR_SESSIONS, {"converted_only": ["perhaps"]}, "true or false"),
    (queries.SESSIONS_SUMMARY, {"from": ["2023-11-14T23:00:00Z"], "to": ["2023-11-14T22:00:00Z"]},
     "from: must be before to"),
    (queries.SESSIONS_SUMMARY, {"from": ["2023-01-01T00:00:00Z"], "to": ["2023-03-01T00:00:00Z"]},
     "span at most 31 days"),
    (queries.SESSIONS_SUMMARY, {"dimension": ["all"]}, "dimension: unknown parameter"),
    (queries.FUNNEL, {"to": ["soon"]}, "ISO 8601"),
    (queries.TOP_PAGES, {"order_by": ["revenue"]}, "order_by: must be one of events|users|sessions"),
    (queries.TOP_PAGES, {"limit": ["0"]}, "between 1 and 1000"),
])
def test_behaviour_rejections(query, raw, message):
    found = problems(query, raw)
    assert any(message in problem for problem in found), found


def test_top_pages_takes_its_order_column_from_a_fixed_map():
    rendered = queries.TOP_PAGES.render(validate(queries.TOP_PAGES, order_by="users", window_kind="hopping"))
    assert "ORDER BY peak_window_users DESC, events DESC, page_path" in rendered.sql
    assert rendered.params == {"window_kind": "hopping", "from": "2023-11-14 22:00:00.000",
                               "to": "2023-11-14 23:00:00.000", "limit": "10"}
    with pytest.raises(ValueError):
        queries.top_pages_sql("events DESC; DROP TABLE behaviour_metrics --")


# --- behaviour: against chdb ---------------------------------------------------------------

RANGE = {"from": "2023-11-14T22:00:00Z", "to": "2023-11-14T23:00:00Z"}


def test_behaviour_metrics_returns_the_latest_version_of_each_window(seeded):
    store, _ = seeded
    for dimension, kind in (("all", 1), ("page_path", 1), ("event_type", 2)):
        answer = queries.run(store, queries.BEHAVIOUR_METRICS, validate(
            queries.BEHAVIOUR_METRICS, dimension=dimension, window_kind=testing.KIND_NAMES[kind], **RANGE))
        wanted = sorted((m for m in BEHAVIOUR["metrics"].values()
                         if testing.DIMENSION_NAMES[m.dimension] == dimension and m.window_kind == kind),
                        key=lambda m: (m.window_start_time.seconds, m.window_end_time.seconds, m.dimension_value))
        assert answer["row_count"] == len(wanted) > 0
        assert answer["rows"] == [testing.expected_metric_row(m) for m in wanted]
    one = queries.run(store, queries.BEHAVIOUR_METRICS, validate(
        queries.BEHAVIOUR_METRICS, dimension="page_path", dimension_value="/cart", closed_only="true", **RANGE))
    assert one["row_count"] == 6 and {r["dimension_value"] for r in one["rows"]} == {"/cart"}
    assert all(r["version"] == 3 and r["window_closed"] for r in one["rows"])


def test_behaviour_sessions_list_the_latest_version_of_each_session(seeded):
    store, _ = seeded
    answer = queries.run(store, queries.BEHAVIOUR_SESSIONS, validate(queries.BEHAVIOUR_SESSIONS, **RANGE))
    wanted = sorted(BEHAVIOUR["sessions"].values(), key=lambda m: (testing.expected_session_row(m)["session_start"],
                                                                    m.session_id))
    assert answer["row_count"] == len(wanted) == 40
    for row, message in zip(answer["rows"], wanted):
        expected = testing.expected_session_row(message)
        assert {k: row[k] for k in expected} == expected
        assert row["duration_seconds"] == testing.session_duration_ms(message) / 1000
    converted = queries.run(store, queries.BEHAVIOUR_SESSIONS, validate(
        queries.BEHAVIOUR_SESSIONS, converted_only="true", user="anon-004", **RANGE))
    assert [r["session_id"] for r in converted["rows"]] == [
        m.session_id for m in wanted if m.converted and m.anonymous_id == "anon-004"]


def test_sessions_summary_equals_an_independent_computation(seeded):
    store, _ = seeded
    answer = queries.run(store, queries.SESSIONS_SUMMARY, validate(queries.SESSIONS_SUMMARY, **RANGE))
    sessions = list(BEHAVIOUR["sessions"].values())
    converted = sum(1 for m in sessions if m.converted)
    row = answer["rows"][0]
    assert row["sessions"] == 40 and row["converted_sessions"] == converted > 0
    assert math.isclose(row["conversion_rate"], converted / 40)
    assert math.isclose(row["mean_duration_seconds"],
                        sum(testing.session_duration_ms(m) for m in sessions) / 40 / 1000)
    assert row["events"] == sum(m.event_count for m in sessions)
    assert row["unique_users"] == len({m.user_id or m.anonymous_id for m in sessions})
    empty = queries.run(store, queries.SESSIONS_SUMMARY, validate(queries.SESSIONS_SUMMARY, to="2020-01-01T00:00:00Z"))
    assert empty["rows"][0]["sessions"] == 0 and empty["rows"][0]["conversion_rate"] is None
    assert empty["rows"][0]["mean_duration_seconds"] is None


def test_funnel_counts_sessions_by_the_furthest_stage_reached(seeded):
    store, _ = seeded
    answer = queries.run(store, queries.FUNNEL, validate(queries.FUNNEL, **RANGE))
    stages = [m.funnel_stage for m in BEHAVIOUR["sessions"].values()]
    reached = [sum(1 for s in stages if s >= number) for number in range(1, 6)]
    assert [r["stage"] for r in answer["rows"]] == list(queries.FUNNEL_STAGES)
    assert [r["sessions"] for r in answer["rows"]] == reached
    assert reached[0] == 40 and reached[-1] > 0
    for number, row in enumerate(answer["rows"], start=1):
        assert row["stage_number"] == number
        assert math.isclose(row["rate_from_visit"], reached[number - 1] / reached[0])
        assert math.isclose(row["rate_from_previous"], reached[number - 1] / reached[max(number - 2, 0)])
    empty = queries.run(store, queries.FUNNEL, validate(queries.FUNNEL, to="2020-01-01T00:00:00Z"))
    assert [r["sessions"] for r in empty["rows"]] == [0] * 5 and empty["rows"][0]["rate_from_visit"] is None


def test_top_pages_rank_by_events_and_by_peak_users(seeded):
    store, _ = seeded
    pages = {}
    for m in BEHAVIOUR["metrics"].values():
        if m.dimension == 3 and m.window_kind == 1:
            events, users = pages.get(m.dimension_value, (0, 0))
            pages[m.dimension_value] = (events + m.event_count, max(users, m.unique_user_count))
    answer = queries.run(store, queries.TOP_PAGES, validate(queries.TOP_PAGES, limit="3", **RANGE))
    assert [(r["page_path"], r["events"]) for r in answer["rows"]] == sorted(
        ((p, e) for p, (e, _) in pages.items()), key=lambda x: (-x[1], x[0]))[:3]
    assert all(r["windows"] == 6 for r in answer["rows"])
    by_users = queries.run(store, queries.TOP_PAGES, validate(queries.TOP_PAGES, order_by="users", **RANGE))
    assert [r["peak_window_users"] for r in by_users["rows"]] == sorted((u for _, u in pages.values()), reverse=True)
