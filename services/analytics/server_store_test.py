"""ClickHouseServerStore runs the same DDL, inserts and queries as ChdbStore.

No modern ClickHouse server is obtainable here (runtimes.md), so two checks stand in for one:
1. a recording fake of clickhouse-connect's Client (this test only) shows exactly which
   statements, parameters and insert settings the server would receive;
2. the real clickhouse-connect Client API, over clickhouse-connect's own chdb interface, runs the
   migrations, the Protobuf insert and every named query end to end, and answers exactly what
   ChdbStore answers.
"""

import datetime as dt

import clickhouse_connect
import pytest

from services.analytics import migrations, protobuf_schema, queries, sink, testing
from services.analytics.store import ChdbStore, ClickHouseServerStore, parse_clickhouse_url

NOW = dt.datetime(2023, 11, 14, 23, 0, tzinfo=dt.timezone.utc)
TARGET = sink.IOT_AGGREGATES

CASES = (
    (queries.AGGREGATES, {"scope": ["device"], "key_id": ["device-002"], "from": ["2023-11-14T22:00:00Z"]}),
    (queries.AGGREGATES, {"scope": ["site"], "key_id": ["site-1"], "window_kind": ["hopping"],
                          "from": ["2023-11-14T22:00:00Z"], "closed_only": ["true"]}),
    (queries.SITES_LATEST, {"closed_only": ["false"]}),
    (queries.DEVICES_TOP, {"metric": ["battery"], "stat": ["min"], "order": ["asc"], "window": ["2h"]}),
    (queries.DEVICES_TOP, {"metric": ["temperature"], "window": ["2h"], "site_id": ["site-0"]}),
    (queries.BEHAVIOUR_METRICS, {"dimension": ["page_path"], "from": ["2023-11-14T22:00:00Z"]}),
    (queries.BEHAVIOUR_METRICS, {"dimension": ["event_type"], "dimension_value": ["USER_EVENT_TYPE_PURCHASE"],
                                 "window_kind": ["hopping"], "from": ["2023-11-14T22:00:00Z"]}),
    (queries.BEHAVIOUR_SESSIONS, {"from": ["2023-11-14T22:00:00Z"]}),
    (queries.SESSIONS_SUMMARY, {"from": ["2023-11-14T22:00:00Z"]}),
    (queries.FUNNEL, {"from": ["2023-11-14T22:00:00Z"]}),
    (queries.TOP_PAGES, {"order_by": ["users"], "from": ["2023-11-14T22:00:00Z"]}),
)


class _Result:
    def __init__(self, columns=(), rows=()):
        self.column_names = tuple(columns)
        self.result_rows = list(rows)


class RecordingClient:
    """Captures the calls ClickHouseServerStore makes on a clickhouse-connect Client."""

    def __init__(self):
        self.calls = []
        self.database = None

    def command(self, sql, **kwargs):
        self.calls.append(("command", sql, kwargs))

    def query(self, sql, parameters=None, **kwargs):
        self.calls.append(("query", sql, dict(parameters or {})))
        if "FROM schema_migrations" in sql:
            return _Result(("version", "name", "checksum"))
        return _Result(("ok",), [(1,)])

    def raw_insert(self, table, column_names=None, insert_block=None, settings=None, fmt=None, **kwargs):
        self.calls.append(("raw_insert", table, {"settings": settings, "fmt": fmt, "bytes": insert_block}))

    def insert(self, table, data=None, column_names=None, **kwargs):
        self.calls.append(("insert", table, {"columns": tuple(column_names), "rows": len(data)}))

    def close(self):
        self.calls.append(("close", None, {}))


class RecordingChdbStore(ChdbStore):
    def __init__(self, *args, **kwargs):
        self.commands = []
        super().__init__(*args, **kwargs)

    def command(self, sql):
        self.commands.append(sql)
        super().command(sql)


def test_the_server_receives_the_same_ddl_as_chdb(tmp_path):
    client = RecordingClient()
    server = ClickHouseServerStore(client=client, database="datapipelines")
    assert client.database == "datapipelines"
    migrations.migrate(server)
    server_ddl = [sql for kind, sql, _ in client.calls if kind == "command"]

    local = RecordingChdbStore(tmp_path / "analytics")
    try:
        migrations.migrate(local)
        assert server_ddl[0] == "CREATE DATABASE IF NOT EXISTS `datapipelines`"
        assert server_ddl[1:] == local.commands
        expected = [migrations.CREATE_MIGRATIONS_TABLE] + [
            s for m in migrations.discover() for s in m.statements()]
        assert local.commands == expected
    finally:
        local.close()
    recorded = [(table, meta["columns"]) for kind, table, meta in client.calls if kind == "insert"]
    assert recorded == [("schema_migrations", ("version", "name", "checksum", "duration_ms"))] * len(
        migrations.discover())


def test_queries_go_to_the_server_as_bound_parameters():
    client = RecordingClient()
    server = ClickHouseServerStore(client=client)
    for query, raw in CASES:
        values = query.validate(raw, lambda: NOW)
        queries.run(server, query, values)
        rendered = query.render(values)
        kind, sql, params = client.calls[-1]
        assert (kind, sql, params) == ("query", rendered.sql, rendered.params)
        for value in params.values():  # values travel beside the SQL, never inside it
            if value not in ("", "true", "false") and not value.isdigit() and value not in ("device", "site",
                                                                                             "tumbling", "hopping"):
                assert value not in sql


def test_the_sink_insert_reaches_the_server_as_protobuf_with_an_inline_schema():
    client = RecordingClient()
    server = ClickHouseServerStore(client=client)
    schema, name = TARGET.insert_schema()
    payload = protobuf_schema.frame([testing.aggregate(1, "d", "s", 0, 1).SerializeToString()])
    server.insert_protobuf(TARGET.ingest_table, schema, name, payload)
    kind, table, meta = client.calls[-1]
    assert (kind, table, meta["fmt"], meta["bytes"]) == ("raw_insert", "iot_reading_aggregates_ingest", "Protobuf",
                                                          payload)
    assert meta["settings"] == {"format_schema_source": "string", "format_schema": schema,
                                "format_schema_message_name": "datapipelines_iot_v1_ReadingAggregate"}


def test_the_rendered_schema_declares_the_contract_wire_format():
    schema, name = TARGET.insert_schema()
    assert name == "datapipelines_iot_v1_ReadingAggregate"
    assert "message google_protobuf_Timestamp {\n  int64 seconds = 1;\n  int32 nanos = 2;\n}" in schema
    assert "  datapipelines_iot_v1_MetricStats temperature_celsius = 8;" in schema
    assert "  int32 scope = 1;" in schema and "  uint64 version = 13;" in schema and "import" not in schema


def test_server_urls():
    address = parse_clickhouse_url("http://default@localhost/")
    assert (address.port, address.database, address.secure) == (8123, "datapipelines", False)
    assert parse_clickhouse_url("https://u:p%40ss@h/db").password == "p@ss"
    assert "p@ss" not in parse_clickhouse_url("https://u:p%40ss@h/db").redacted()
    for bad in ("clickhouse://h:9000/db", "http:///db", "http://h/a/b"):
        with pytest.raises(ValueError):
            parse_clickhouse_url(bad)


def test_the_real_client_api_answers_exactly_what_chdb_answers(tmp_path):
    path = tmp_path / "shared"
    messages = testing.stream(devices=6, sites=2, minutes=4, versions=3, seed=11, kinds=(1, 2))
    payload = protobuf_schema.frame([m.SerializeToString() for m in messages])
    schema, name = TARGET.insert_schema()
    behaviour = (
        (sink.BEHAVIOUR_METRICS, protobuf_schema.frame(
            [m.SerializeToString() for m in testing.behaviour_stream(minutes=4, versions=3, seed=11, kinds=(1, 2))])),
        (sink.BEHAVIOUR_SESSIONS, protobuf_schema.frame(
            [m.SerializeToString() for m in testing.session_stream(sessions=15, versions=3, seed=11)])),
    )

    local = ChdbStore(path, database="via_chdb")
    # One engine per process: clickhouse-connect's chdb interface shares the path, in its own database.
    client = clickhouse_connect.get_client(interface="chdb", path=str(path))
    server = ClickHouseServerStore(client=client, database="via_client_api")
    try:
        for store in (local, server):
            assert migrations.migrate(store) == tuple(m.label for m in migrations.discover())
            store.insert_protobuf(TARGET.ingest_table, schema, name, payload)
            store.insert_protobuf(TARGET.ingest_table, schema, name, payload)  # a replay, on both
            for target, values in behaviour:
                target_schema, target_name = target.insert_schema()
                for _ in range(2):
                    store.insert_protobuf(target.ingest_table, target_schema, target_name, values)
            store.insert_rows("ingest_offsets", ("consumer_group", "topic", "kafka_partition", "first_offset",
                                                 "last_offset", "row_count", "dead_letter_count"),
                              [("g", "iot.aggregates.v1", 0, 0, 9, 10, 0)])
        for query, raw in CASES:
            values = query.validate(raw, lambda: NOW)
            via_chdb = queries.run(local, query, values)
            via_client = queries.run(server, query, values)
            via_chdb.pop("store_ms")
            via_client.pop("store_ms")
            assert via_client == via_chdb, query.name
            assert via_chdb["row_count"] > 0, query.name
        assert server.query("SELECT max(last_offset) AS m FROM ingest_offsets").rows == [(9,)]
    finally:
        server.close()
        local.close()
