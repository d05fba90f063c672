"""Migrations against a real chdb store in a temporary directory."""

import pathlib
import re
import shutil

import pytest

from services.analytics import migrations
from services.analytics.store import ChdbStore


@pytest.fixture
def store(tmp_path):
    opened = ChdbStore(tmp_path / "analytics")
    yield opened
    opened.close()


def copy_migrations(tmp_path) -> pathlib.Path:
    directory = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, directory)
    return directory


def tables(store):
    return {row[0] for row in store.query("SELECT name FROM system.tables WHERE database = currentDatabase()").rows}


def test_files_apply_in_version_order_once(store):
    assert migrations.migrate(store) == ("0001_iot_aggregates", "0002_ingest_offsets", "0003_behaviour_metrics",
                                         "0004_behaviour_sessions")
    assert {"iot_reading_aggregates", "iot_reading_aggregates_ingest", "iot_reading_aggregates_ingest_mv",
            "ingest_offsets", "schema_migrations", "behaviour_metrics", "behaviour_metrics_ingest",
            "behaviour_metrics_ingest_mv", "behaviour_sessions", "behaviour_sessions_ingest",
            "behaviour_sessions_ingest_mv"} <= tables(store)
    recorded = store.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version").rows
    assert [(v, n) for v, n, _ in recorded] == [(1, "iot_aggregates"), (2, "ingest_offsets"),
                                                (3, "behaviour_metrics"), (4, "behaviour_sessions")]
    assert all(c.startswith("sha256:") for _, _, c in recorded)
    assert migrations.migrate(store) == ()  # again: nothing to do
    assert len(store.query("SELECT * FROM schema_migrations").rows) == 4


@pytest.mark.parametrize("table, sorting", [
    ("iot_reading_aggregates", "scope, key_id, window_kind, window_start, window_end"),
    # BehaviourMetric's identity: (window_kind, window_start, window_end, dimension, dimension_value)
    ("behaviour_metrics", "dimension, window_kind, window_start, window_end, dimension_value"),
    # SessionSummary's identity: the session id (user key + start) and the start
    ("behaviour_sessions", "session_start, session_id"),
])
def test_the_engine_is_replacing_merge_tree_by_version(store, table, sorting):
    migrations.migrate(store)
    engine, sorting_key = store.query(
        "SELECT engine_full, sorting_key FROM system.tables WHERE database = currentDatabase() "
        "AND name = {table:String}", {"table": table}).rows[0]
    assert engine.startswith("ReplacingMergeTree(version)")
    assert sorting_key == sorting


@pytest.mark.parametrize("ingest, view, stored", [
    ("iot_reading_aggregates_ingest", "iot_reading_aggregates_ingest_mv", "iot_reading_aggregates"),
    ("behaviour_metrics_ingest", "behaviour_metrics_ingest_mv", "behaviour_metrics"),
    ("behaviour_sessions_ingest", "behaviour_sessions_ingest_mv", "behaviour_sessions"),
])
def test_every_versioned_table_is_fed_by_a_null_table_and_a_view(store, ingest, view, stored):
    migrations.migrate(store)
    engines = dict(store.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()").rows)
    assert engines[ingest] == "Null" and engines[view] == "MaterializedView"
    create = store.query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
                         "AND name = {view:String}", {"view": view}).rows[0][0]
    assert re.search(r"\bTO (\S+\.)?`?%s`?[\s(]" % stored, create), create
    assert re.search(r"\bFROM (\S+\.)?`?%s`?(\s|$)" % ingest, create), create


def test_a_changed_applied_file_is_refused(store, tmp_path):
    directory = copy_migrations(tmp_path)
    migrations.migrate(store, directory)
    path = directory / "0001_iot_aggregates.sql"
    path.write_text(path.read_text() + "\n-- an innocent edit\n")
    with pytest.raises(migrations.MigrationError, match="0001_iot_aggregates was changed after it was applied"):
        migrations.migrate(store, directory)


def test_a_new_file_applies_and_an_older_version_is_refused(store, tmp_path):
    directory = copy_migrations(tmp_path)
    migrations.migrate(store, directory)
    (directory / "0005_extra.sql").write_text(
        "-- a comment with a ; inside\nCREATE TABLE IF NOT EXISTS extra (a String DEFAULT 'x;y') "
        "ENGINE = MergeTree ORDER BY a;\nINSERT INTO extra VALUES ('it''s');\n")
    assert migrations.migrate(store, directory) == ("0005_extra",)
    assert store.query("SELECT a FROM extra").rows == [("it's",)]
    (directory / "0000_too_old.sql").write_text("SELECT 1;")
    with pytest.raises(migrations.MigrationError, match="older than the newest applied one"):
        migrations.migrate(store, directory)


def test_a_vanished_file_and_bad_names_are_refused(store, tmp_path):
    directory = copy_migrations(tmp_path)
    migrations.migrate(store, directory)
    (directory / "0002_ingest_offsets.sql").unlink()
    with pytest.raises(migrations.MigrationError, match="no such file exists"):
        migrations.migrate(store, directory)
    (directory / "2_bad.sql").write_text("SELECT 1")
    with pytest.raises(migrations.MigrationError, match="not a migration file name"):
        migrations.discover(directory)


def test_a_failing_statement_records_nothing_and_a_fixed_rerun_applies(store, tmp_path):
    directory = copy_migrations(tmp_path)
    migrations.migrate(store, directory)
    broken = directory / "0005_broken.sql"
    broken.write_text("CREATE TABLE IF NOT EXISTS ok_part (a UInt8) ENGINE = MergeTree ORDER BY a;\nCREATE TABLE nope (;\n")
    with pytest.raises(migrations.MigrationError, match="0005_broken failed"):
        migrations.migrate(store, directory)
    assert 5 not in migrations.applied_versions(store)
    broken.write_text("CREATE TABLE IF NOT EXISTS ok_part (a UInt8) ENGINE = MergeTree ORDER BY a;\n")
    assert migrations.migrate(store, directory) == ("0005_broken",)


def test_statement_splitting_respects_quotes_and_comments():
    sql = "-- head; comment\nSELECT 'a;b' AS x;\nSELECT \"c;d\", `e;f`; -- tail;\n\nSELECT 'it''s; fine', 'esc\\';'"
    assert migrations.split_statements(sql) == [
        "SELECT 'a;b' AS x", "SELECT \"c;d\", `e;f`", "SELECT 'it''s; fine', 'esc\\';'"]
