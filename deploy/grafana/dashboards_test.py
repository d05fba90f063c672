"""The Grafana dashboards as code: structure, data source provisioning, and every panel's SQL run
against a chdb store migrated with the analytics service's own migrations.

Grafana's ClickHouse plugin expands macros before sending SQL; `expand` below does the same for
the macros the dashboards use, so a typo, a renamed column or an invalid query fails here.
"""

import datetime as dt
import json
import pathlib
import re

import pytest

from services.analytics import migrations, protobuf_schema, sink, testing
from services.analytics.store import ChdbStore

HERE = pathlib.Path(__file__).resolve().parent
DASHBOARDS = sorted((HERE / "dashboards").glob("*.json"))
DATASOURCES = HERE / "provisioning" / "datasources" / "clickhouse.yaml"
PLUGIN = "grafana-clickhouse-datasource"

FROM = dt.datetime(2023, 11, 14, 22, 0, tzinfo=dt.timezone.utc)
TO = dt.datetime(2023, 11, 14, 23, 0, tzinfo=dt.timezone.utc)

# What each panel must return (column names, in order), by dashboard uid and panel id.
EXPECTED_COLUMNS = {
    ("dp-iot-live", 1): ["time", "site_id", "readings_per_min"],
    ("dp-iot-live", 2): ["time", "site_id", "temperature_min", "temperature_mean", "temperature_max"],
    ("dp-iot-live", 3): ["device_id", "site_id", "window_start", "window_end", "reading_count",
                         "temperature_celsius_mean", "humidity_percent_mean", "pressure_hpa_mean",
                         "battery_percent_min", "late_reading_count", "version", "window_closed"],
    ("dp-iot-live", 4): ["time", "site_id", "late_readings"],
    ("dp-iot-live", 5): ["late_readings", "readings"],
    ("dp-behaviour-live", 1): ["time", "event_type", "events_per_min"],
    ("dp-behaviour-live", 2): ["time", "active_users", "active_sessions"],
    ("dp-behaviour-live", 3): ["time", "sessions", "converted_sessions"],
    ("dp-behaviour-live", 4): ["sessions", "conversion_rate", "mean_duration_s"],
    ("dp-behaviour-live", 5): ["stage", "sessions", "rate_from_visit", "rate_from_previous"],
    ("dp-behaviour-live", 6): ["page_path", "events", "peak_window_users"],
}
BEHAVIOUR_SEED = 4


def provisioned_datasources():
    """(uid, type) of each data source in the provisioning file (a flat YAML list)."""
    text = DATASOURCES.read_text()
    uids = re.findall(r"^\s+uid:\s*(\S+)\s*$", text, re.M)
    types = re.findall(r"^\s+type:\s*(\S+)\s*$", text, re.M)
    assert len(uids) == len(types) >= 1
    return set(zip(uids, types))


def split_args(text):
    """Top-level comma-separated arguments of a macro call."""
    depth, current, out = 0, [], []
    for char in text:
        if char == "," and depth == 0:
            out.append("".join(current).strip())
            current = []
            continue
        depth += char == "("
        depth -= char == ")"
        current.append(char)
    out.append("".join(current).strip())
    return out


def replace_calls(sql, name, render):
    while True:
        start = sql.find(name + "(")
        if start == -1:
            return sql
        depth, end = 0, start + len(name)
        for end in range(start + len(name), len(sql)):
            depth += sql[end] == "("
            depth -= sql[end] == ")"
            if depth == 0:
                break
        sql = sql[:start] + render(split_args(sql[start + len(name) + 1:end])) + sql[end + 1:]


def expand(sql, variables, interval_s=60):
    """Grafana + ClickHouse-plugin macro expansion for the test (the subset the dashboards use)."""
    start, end = int(FROM.timestamp()), int(TO.timestamp())
    sql = replace_calls(sql, "$__timeFilter", lambda a: "%s >= toDateTime(%d) AND %s <= toDateTime(%d)"
                        % (a[0], start, a[0], end))
    sql = replace_calls(sql, "$__timeInterval", lambda a: "toStartOfInterval(toDateTime(%s), INTERVAL %d second)"
                        % (a[0], interval_s))
    sql = replace_calls(sql, "$__conditionalAll", lambda a: "1=1" if variables[a[1].lstrip("$")] == ["$__all"]
                        else a[0])
    sql = sql.replace("$__interval_s", str(interval_s))
    for name, values in variables.items():
        quoted = ",".join("'%s'" % v.replace("'", "\\'") for v in values)
        sql = sql.replace("${%s:singlequote}" % name, quoted).replace("$" + name, quoted)
    assert "$" not in sql, "unexpanded macro or variable in: " + sql
    return sql


def behaviour_metrics():
    return testing.behaviour_stream(minutes=10, versions=2, seed=BEHAVIOUR_SEED, kinds=(1, 2))


def sessions():
    return testing.session_stream(sessions=30, versions=2, seed=BEHAVIOUR_SEED)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    opened = ChdbStore(tmp_path_factory.mktemp("grafana") / "analytics")
    migrations.migrate(opened)
    messages = testing.stream(devices=6, sites=3, minutes=10, versions=2, seed=4, kinds=(1, 2))
    schema, name = sink.IOT_AGGREGATES.insert_schema()
    opened.insert_protobuf(sink.IOT_AGGREGATES.ingest_table, schema, name,
                           protobuf_schema.frame([m.SerializeToString() for m in messages]))
    for target, values in ((sink.BEHAVIOUR_METRICS, behaviour_metrics()), (sink.BEHAVIOUR_SESSIONS, sessions())):
        schema, name = target.insert_schema()
        opened.insert_protobuf(target.ingest_table, schema, name,
                               protobuf_schema.frame([m.SerializeToString() for m in values]))
    yield opened
    opened.close()


def panels():
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            yield dashboard, panel


def test_dashboards_are_well_formed_and_use_the_provisioned_data_source():
    assert DASHBOARDS, "no dashboards"
    sources = provisioned_datasources()
    assert ("dp-clickhouse", PLUGIN) in sources
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard["uid"]) and dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        assert dashboard["title"] and dashboard["panels"]
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for variable in dashboard["templating"]["list"]:
            assert (variable["datasource"]["uid"], variable["datasource"]["type"]) in sources
        for panel in dashboard["panels"]:
            assert panel["title"] and panel["type"] in ("timeseries", "table", "stat")
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert (target["datasource"]["uid"], target["datasource"]["type"]) in sources
                assert target["editorType"] == "sql" and target["refId"]
                assert target["queryType"] in ("timeSeries", "table")
                assert " FINAL" in target["rawSql"], "%s reads without FINAL: doubles would show" % panel["title"]
            assert (dashboard["uid"], panel["id"]) in EXPECTED_COLUMNS, panel["title"]


def test_template_variables_run(store):
    for path in DASHBOARDS:
        for variable in json.loads(path.read_text())["templating"]["list"]:
            result = store.query(variable["query"])
            assert [row[0] for row in result.rows] == ["site-0", "site-1", "site-2"]


@pytest.mark.parametrize("variables", [{"site": ["$__all"]}, {"site": ["site-1", "site-2"]}],
                         ids=["all-sites", "two-sites"])
@pytest.mark.parametrize("interval_s", [60, 300])
def test_every_panel_query_runs_and_returns_its_columns(store, variables, interval_s):
    ran = 0
    for dashboard, panel in panels():
        for target in panel["targets"]:
            result = store.query(expand(target["rawSql"], variables, interval_s))
            assert list(result.columns) == EXPECTED_COLUMNS[(dashboard["uid"], panel["id"])], panel["title"]
            assert result.rows, "%s returned no rows over the seeded data" % panel["title"]
            if "site_id" in result.columns and variables["site"] != ["$__all"]:
                assert {r[result.columns.index("site_id")] for r in result.rows} <= set(variables["site"])
            ran += 1
    assert ran == len(EXPECTED_COLUMNS)


def test_readings_per_minute_panel_equals_an_independent_sum(store):
    # The fixture's stream again, summed in plain Python: site-1's readings at their latest versions.
    messages = testing.stream(devices=6, sites=3, minutes=10, versions=2, seed=4, kinds=(1, 2))
    want = sum(m.reading_count for m in testing.latest(messages).values()
               if m.scope == 2 and m.window_kind == 1 and m.key_id == "site-1")
    _, panel = next((d, p) for d, p in panels() if d["uid"] == "dp-iot-live" and p["id"] == 1)
    result = store.query(expand(panel["targets"][0]["rawSql"], {"site": ["site-1"]}, 60))
    assert want > 0 and sum(row[2] for row in result.rows) == want


def behaviour_panel(panel_id):
    _, panel = next((d, p) for d, p in panels() if d["uid"] == "dp-behaviour-live" and p["id"] == panel_id)
    return panel["targets"][0]["rawSql"]


def test_behaviour_events_per_minute_panel_equals_an_independent_sum(store):
    latest = testing.latest_by(behaviour_metrics(), testing.metric_identity).values()
    want = {}
    for m in latest:
        if m.dimension == 2 and m.window_kind == 1:
            name = m.dimension_value.replace("USER_EVENT_TYPE_", "")
            want[name] = want.get(name, 0) + m.event_count
    result = store.query(expand(behaviour_panel(1), {}, 60))
    got = {}
    for _, event_type, per_minute in result.rows:
        got[event_type] = got.get(event_type, 0) + per_minute
    assert got == want and len(want) == len(testing.EVENT_TYPES)


def test_behaviour_session_panels_equal_an_independent_computation(store):
    latest = list(testing.latest_by(sessions(), testing.session_identity).values())
    result = store.query(expand(behaviour_panel(4), {}, 60))
    count, rate, duration = result.rows[0]
    assert count == len(latest) == 30
    assert rate == pytest.approx(sum(m.converted for m in latest) / 30)
    assert duration == pytest.approx(sum(testing.session_duration_ms(m) for m in latest) / 30 / 1000)
    funnel = store.query(expand(behaviour_panel(5), {}, 60))
    assert [row[1] for row in funnel.rows] == [sum(1 for m in latest if m.funnel_stage >= n) for n in range(1, 6)]
