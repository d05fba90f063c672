"""ChdbStore over a temporary data path: the insert path, versions, replays, parameters."""

import math

import pytest

from services.analytics import migrations, protobuf_schema, queries, sink, testing
from services.analytics.store import ChdbStore, StoreError

TARGET = sink.IOT_AGGREGATES


@pytest.fixture
def store(tmp_path):
    opened = ChdbStore(tmp_path / "analytics")
    migrations.migrate(opened)
    yield opened
    opened.close()


def insert(store, messages):
    schema, name = TARGET.insert_schema()
    store.insert_protobuf(TARGET.ingest_table, schema, name,
                          protobuf_schema.frame([m.SerializeToString() for m in messages]))


def stored_rows(store, final=True):
    """Every row the aggregates query shape returns, FINAL or raw, sorted by window identity."""
    sql = queries.AGGREGATES_SQL.split("FROM")[0] + " FROM iot_reading_aggregates" + (" FINAL" if final else "") + \
        " ORDER BY scope, key_id, window_kind, window_start, window_end, version"
    result = store.query(sql)
    out = []
    for row in result.dicts():
        for column in ("window_start_ms", "window_end_ms", "emit_time_ms"):
            row[column[:-3]] = queries.iso_from_ms(row.pop(column))
        out.append(row)
    return out


def expected(messages):
    rows = [testing.expected_row(m) for m in testing.latest(messages).values()]
    return sorted(rows, key=lambda r: (r["scope"], r["key_id"], r["window_kind"], r["window_start"], r["window_end"]))


def rounded(value):
    if isinstance(value, float):
        return float("%.12g" % value)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def same(actual, wanted):
    assert len(actual) == len(wanted)
    for got, want in zip(actual, wanted):
        for column, value in want.items():
            if isinstance(value, float):
                assert math.isclose(got[column], value, rel_tol=1e-12, abs_tol=1e-12), (column, got, want)
            else:
                assert got[column] == value, (column, got, want)


def test_protobuf_insert_matches_an_independent_python_decoding(store):
    messages = testing.stream(devices=7, sites=3, minutes=4, versions=1, kinds=(1, 2))
    insert(store, messages)
    same(stored_rows(store), expected(messages))


def test_only_the_largest_version_of_a_window_is_visible(store):
    messages = testing.stream(devices=5, sites=2, minutes=3, versions=4)
    # Versions arrive out of order and across several inserts (parts), as from several batches.
    for start in range(0, len(messages), 7):
        insert(store, messages[start:start + 7])
    raw = store.query("SELECT count() FROM iot_reading_aggregates").rows[0][0]
    assert raw > len(testing.latest(messages))  # older versions are still stored (no merge yet) ...
    same(stored_rows(store), expected(messages))  # ... but FINAL shows each window once, latest version
    assert all(row["version"] == 4 and row["window_closed"] for row in stored_rows(store))


def test_a_replayed_batch_changes_no_query_result(store):
    messages = testing.stream(devices=6, sites=2, minutes=5, versions=3, seed=3)
    insert(store, messages)
    before = {q.name: queries.run(store, q, q.validate(params, lambda: NOW)) for q, params in QUERY_CASES}
    stored_before = stored_rows(store)
    # A crash between insert and commit: the same batch is consumed and inserted again, twice.
    insert(store, messages)
    insert(store, messages[: len(messages) // 2])
    # Each insert collapses versions inside its own block, but not across parts: doubles are stored.
    assert store.query("SELECT count() FROM iot_reading_aggregates").rows[0][0] >= 2 * len(testing.latest(messages))
    after = {q.name: queries.run(store, q, q.validate(params, lambda: NOW)) for q, params in QUERY_CASES}
    for name in before:
        before[name].pop("store_ms")
        after[name].pop("store_ms")
        # Float sums may differ in the last bit with the order parts are read in.
        assert rounded(after[name]) == rounded(before[name]), name
        assert before[name]["row_count"] > 0, name
    assert stored_rows(store) == stored_before
    # And after ClickHouse merged the parts for good, still the same.
    store.command("OPTIMIZE TABLE iot_reading_aggregates FINAL")
    assert store.query("SELECT count() FROM iot_reading_aggregates").rows[0][0] == len(testing.latest(messages))
    assert stored_rows(store) == stored_before


def test_equal_versions_replayed_keep_one_row_and_a_higher_version_replaces_it(store):
    first = testing.aggregate(1, "device-001", "site-1", minute=0, version=2, seed=1)
    insert(store, [first, first, first])
    assert [r["version"] for r in stored_rows(store)] == [2]
    older = testing.aggregate(1, "device-001", "site-1", minute=0, version=1, seed=9)
    insert(store, [older])  # a late, older emission must not win
    same(stored_rows(store), expected([first]))
    newer = testing.aggregate(1, "device-001", "site-1", minute=0, version=3, seed=2, closed=True)
    insert(store, [newer])
    same(stored_rows(store), expected([newer]))


def test_windows_of_different_size_starting_together_do_not_replace_each_other(store):
    one = testing.aggregate(2, "site-1", "site-1", minute=0, version=1, kind=2)
    other = testing.aggregate(2, "site-1", "site-1", minute=0, version=5, kind=2)
    other.window_end_time.seconds = one.window_end_time.seconds + 600
    insert(store, [one, other])
    assert len(stored_rows(store)) == 2


def test_query_parameters_are_bound_not_spliced(store):
    insert(store, [testing.aggregate(1, "device-001", "site-1", minute=0, version=1)])
    hostile = "device-001' OR 1=1 --\\"
    result = store.query("SELECT count() AS n FROM iot_reading_aggregates FINAL WHERE key_id = {k:String}",
                         {"k": hostile})
    assert result.rows == [(0,)]
    result = store.query("SELECT {k:String} AS echoed", {"k": hostile})
    assert result.rows == [(hostile,)]
    with pytest.raises(StoreError, match="cannot be parsed as UInt32|BAD_QUERY_PARAMETER"):
        store.query("SELECT {n:UInt32} AS n", {"n": "5; DROP TABLE iot_reading_aggregates"})


def test_a_second_owner_of_the_path_is_refused_with_a_clear_error(tmp_path):
    # In-process chdb allows one engine path; another process gets "Cannot lock file". Either
    # way the error names the path.
    first = ChdbStore(tmp_path / "one")
    try:
        with pytest.raises(StoreError, match="two|another|chdb"):
            ChdbStore(tmp_path / "two")
    finally:
        first.close()


NOW = queries.parse_time("2023-11-14T23:00:00Z")
QUERY_CASES = (
    (queries.AGGREGATES, {"scope": ["device"], "key_id": ["device-001"], "from": ["2023-11-14T22:00:00Z"],
                          "to": ["2023-11-14T23:00:00Z"]}),
    (queries.AGGREGATES, {"scope": ["site"], "key_id": ["site-1"], "from": ["2023-11-14T22:00:00Z"]}),
    (queries.SITES_LATEST, {}),
    (queries.DEVICES_TOP, {"metric": ["temperature"], "window": ["2h"]}),
    (queries.DEVICES_TOP, {"metric": ["pressure"], "stat": ["mean"], "order": ["asc"], "window": ["2h"],
                           "site_id": ["site-0"]}),
)


# --- behaviour tables: the same guarantees ---------------------------------------------------

BEHAVIOUR_CASES = (
    (queries.BEHAVIOUR_METRICS, {"dimension": ["page_path"], "from": ["2023-11-14T22:00:00Z"]}),
    (queries.BEHAVIOUR_METRICS, {"dimension": ["all"], "window_kind": ["hopping"], "from": ["2023-11-14T22:00:00Z"]}),
    (queries.BEHAVIOUR_SESSIONS, {"from": ["2023-11-14T22:00:00Z"]}),
    (queries.SESSIONS_SUMMARY, {"from": ["2023-11-14T22:00:00Z"]}),
    (queries.FUNNEL, {"from": ["2023-11-14T22:00:00Z"]}),
    (queries.TOP_PAGES, {"from": ["2023-11-14T22:00:00Z"]}),
)


def insert_into(store, target, messages):
    schema, name = target.insert_schema()
    store.insert_protobuf(target.ingest_table, schema, name,
                          protobuf_schema.frame([m.SerializeToString() for m in messages]))


def answers(store):
    out = {}
    for query, params in BEHAVIOUR_CASES:
        answer = queries.run(store, query, query.validate(params, lambda: NOW))
        answer.pop("store_ms")
        out[(query.name, repr(sorted(params.items())))] = rounded(answer)
    return out


def test_behaviour_rows_match_an_independent_decoding_at_their_latest_version(store):
    metrics = testing.behaviour_stream(minutes=3, versions=3, seed=8, kinds=(1, 2))
    sessions = testing.session_stream(sessions=25, versions=3, seed=8)
    for start in range(0, len(metrics), 11):  # several parts, versions out of order
        insert_into(store, sink.BEHAVIOUR_METRICS, metrics[start:start + 11])
    for start in range(0, len(sessions), 7):
        insert_into(store, sink.BEHAVIOUR_SESSIONS, sessions[start:start + 7])
    assert store.query("SELECT count() FROM behaviour_metrics").rows[0][0] > len(
        testing.latest_by(metrics, testing.metric_identity))
    got = queries.run(store, queries.BEHAVIOUR_METRICS, queries.BEHAVIOUR_METRICS.validate(
        {"dimension": ["event_type"], "window_kind": ["hopping"], "from": ["2023-11-14T22:00:00Z"]}, lambda: NOW))
    want = sorted((testing.expected_metric_row(m) for m in testing.latest_by(metrics, testing.metric_identity).values()
                   if m.dimension == 2 and m.window_kind == 2),
                  key=lambda r: (r["window_start"], r["window_end"], r["dimension_value"]))
    assert got["rows"] == want and len(want) == 3 * len(testing.EVENT_TYPES)
    got = queries.run(store, queries.BEHAVIOUR_SESSIONS, queries.BEHAVIOUR_SESSIONS.validate(
        {"from": ["2023-11-14T22:00:00Z"]}, lambda: NOW))
    latest_sessions = testing.latest_by(sessions, testing.session_identity).values()
    want = sorted((testing.expected_session_row(m) for m in latest_sessions),
                  key=lambda r: (r["session_start"], r["session_id"]))
    assert [{k: row[k] for k in want[0]} for row in got["rows"]] == want and len(want) == 25
    assert all(row["version"] == 3 for row in got["rows"])


def test_a_replayed_behaviour_batch_changes_no_query_result(store):
    metrics = testing.behaviour_stream(minutes=4, versions=3, seed=9, kinds=(1, 2))
    sessions = testing.session_stream(sessions=30, versions=2, seed=9)
    insert_into(store, sink.BEHAVIOUR_METRICS, metrics)
    insert_into(store, sink.BEHAVIOUR_SESSIONS, sessions)
    before = answers(store)
    assert all(answer["row_count"] > 0 for answer in before.values())
    # A crash between insert and commit: both batches are consumed and inserted again, twice.
    for _ in range(2):
        insert_into(store, sink.BEHAVIOUR_METRICS, metrics)
        insert_into(store, sink.BEHAVIOUR_SESSIONS, sessions[: len(sessions) // 2])
    assert store.query("SELECT count() FROM behaviour_metrics").rows[0][0] >= 2 * len(
        testing.latest_by(metrics, testing.metric_identity))
    assert answers(store) == before
    # An older version arriving late never wins.
    insert_into(store, sink.BEHAVIOUR_SESSIONS, [m for m in sessions if m.version == 1])
    insert_into(store, sink.BEHAVIOUR_METRICS, [m for m in metrics if m.version == 1])
    assert answers(store) == before
    for table in ("behaviour_metrics", "behaviour_sessions"):
        store.command("OPTIMIZE TABLE %s FINAL" % table)
    assert store.query("SELECT count() FROM behaviour_metrics").rows[0][0] == len(
        testing.latest_by(metrics, testing.metric_identity))
    assert store.query("SELECT count() FROM behaviour_sessions").rows[0][0] == 30
    assert answers(store) == before


def test_protobuf_schemas_stay_in_the_data_path_not_the_working_directory(store, tmp_path, monkeypatch):
    """chdb resolves schema files and the `__cache__/` of inline schemas against the working
    directory (the engine reads it at insert time); the store keeps them under
    <data path>/format_schemas instead."""
    working_directory = tmp_path / "cwd"
    working_directory.mkdir()
    monkeypatch.chdir(working_directory)
    messages = testing.stream(devices=2, sites=1, minutes=2, versions=1, seed=5, kinds=(1,))
    insert(store, messages)
    insert(store, messages)  # the second insert reuses the schema file
    metrics = testing.behaviour_stream(minutes=1, versions=1, seed=5, kinds=(1,))
    insert_into(store, sink.BEHAVIOUR_METRICS, metrics)
    assert len(stored_rows(store)) == len(testing.latest(messages))
    assert store.query("SELECT count() FROM behaviour_metrics").rows[0][0] == len(metrics)
    assert sorted(p.name for p in working_directory.iterdir()) == [], "the store wrote into the working directory"
    files = sorted((tmp_path / "analytics" / "format_schemas").iterdir())
    assert [p.suffix for p in files] == [".proto", ".proto"]
    assert {p.read_text() for p in files} == {TARGET.insert_schema()[0], sink.BEHAVIOUR_METRICS.insert_schema()[0]}


def test_a_data_path_with_a_colon_is_refused_clearly(tmp_path):
    with pytest.raises(StoreError, match="contains ':'"):
        ChdbStore(tmp_path / "a:b")
