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
    required = {"scope": "device", "key_id": "d", "metric": "temperature"}
    return validate(query, **{p.name: required[p.name] for p in query.params if p.required})


def test_queries_describe_themselves():
    described = [query.describe() for query in queries.ALL]
    assert {d["path"] for d in described} == {"/api/v1/iot/aggregates", "/api/v1/iot/sites/latest",
                                              "/api/v1/iot/devices/top"}
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
    yield store, testing.latest(messages)
    store.close()


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
