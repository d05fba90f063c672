"""The migration runner: file discovery and history checks, then real runs on a real server."""

import pathlib
import re
import uuid

import psycopg
import pytest
from psycopg import sql

from deploy.postgres import migrate
from tests.fixtures.postgres_server import postgres_server  # noqa: F401 (a fixture)


def write(directory: pathlib.Path, name: str, text: str) -> pathlib.Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# -- discovery and history (no server) ----------------------------------------------------


def test_discover_orders_by_version_number_not_by_name(tmp_path):
    write(tmp_path, "0010_third.sql", "SELECT 3;")
    write(tmp_path, "0002_second.sql", "SELECT 2;")
    write(tmp_path, "0001_first.sql", "SELECT 1;")
    write(tmp_path, "README.md", "not a migration")
    assert [m.label for m in migrate.discover(tmp_path)] == ["0001_first", "0002_second", "0010_third"]


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "abcd_x.sql"])
def test_discover_refuses_names_it_cannot_order(tmp_path, name):
    write(tmp_path, name, "SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="not a migration file name"):
        migrate.discover(tmp_path)


def test_discover_refuses_two_files_with_one_version(tmp_path):
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "0001_b.sql", "SELECT 2;")
    with pytest.raises(migrate.MigrationError, match="share version 0001"):
        migrate.discover(tmp_path)


def test_discover_refuses_an_empty_directory(tmp_path):
    with pytest.raises(migrate.MigrationError, match="no migration files"):
        migrate.discover(tmp_path)


def test_check_history_returns_only_pending_migrations(tmp_path):
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "0002_b.sql", "SELECT 2;")
    first, second = migrate.discover(tmp_path)
    assert migrate.check_history([first, second], {1: ("a", first.checksum)}) == [second]
    assert migrate.check_history([first, second], {1: ("a", first.checksum), 2: ("b", second.checksum)}) == []


def test_check_history_refuses_an_applied_file_that_changed(tmp_path):
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    (first,) = migrate.discover(tmp_path)
    with pytest.raises(migrate.MigrationError, match="0001_a was changed after it was applied"):
        migrate.check_history([first], {1: ("a", migrate.checksum(b"SELECT 0;"))})


def test_check_history_refuses_an_applied_version_without_a_file(tmp_path):
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    (first,) = migrate.discover(tmp_path)
    with pytest.raises(migrate.MigrationError, match="0002_b applied, but no such file"):
        migrate.check_history([first], {1: ("a", first.checksum), 2: ("b", "sha256:00")})


def test_check_history_refuses_a_new_file_older_than_the_applied_ones(tmp_path):
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "0003_c.sql", "SELECT 3;")
    write(tmp_path, "0002_late.sql", "SELECT 2;")
    first, late, third = migrate.discover(tmp_path)
    with pytest.raises(migrate.MigrationError, match="0002_late is older than the newest applied one"):
        migrate.check_history([first, late, third], {1: ("a", first.checksum), 3: ("c", third.checksum)})


def test_the_repository_migrations_are_well_formed():
    migrations = migrate.discover()
    assert migrations[0].label == "0001_iot_schema"
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1)), "versions have gaps"
    for migration in migrations:
        assert not re.search(r"PASSWORD\s+'", migration.sql, re.IGNORECASE), (
            "%s sets a password: passwords come from the runner's configuration" % migration.label
        )


# -- real runs -----------------------------------------------------------------------------


@pytest.fixture
def scratch_dsn(postgres_server):
    """A new empty database on the session server (superuser DSN), dropped afterwards."""
    name = "migrate_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server.superuser_dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield postgres_server.superuser_dsn(name)
    finally:
        with psycopg.connect(postgres_server.superuser_dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_applies_in_order_records_checksums_and_is_idempotent(scratch_dsn, tmp_path):
    write(tmp_path, "0001_create.sql", "CREATE TABLE t (step text);")
    write(tmp_path, "0002_fill.sql", "INSERT INTO t VALUES ('second');")
    write(tmp_path, "0010_fill_again.sql", "INSERT INTO t SELECT step || '+tenth' FROM t;")

    report = migrate.migrate(scratch_dsn, directory=tmp_path)
    assert report.applied == ("0001_create", "0002_fill", "0010_fill_again")
    again = migrate.migrate(scratch_dsn, directory=tmp_path)
    assert again.applied == () and again.already_applied == 3

    with psycopg.connect(scratch_dsn) as conn:
        assert sorted(row[0] for row in conn.execute("SELECT step FROM t")) == ["second", "second+tenth"]
        recorded = conn.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY version").fetchall()
    assert recorded == [(m.version, m.name, m.checksum) for m in migrate.discover(tmp_path)]


def test_refuses_to_run_when_an_applied_file_changed(scratch_dsn, tmp_path):
    path = write(tmp_path, "0001_create.sql", "CREATE TABLE t (id int);")
    migrate.migrate(scratch_dsn, directory=tmp_path)
    path.write_text("CREATE TABLE t (id bigint);", encoding="utf-8")
    write(tmp_path, "0002_more.sql", "CREATE TABLE u (id int);")
    with pytest.raises(migrate.MigrationError, match="0001_create was changed after it was applied"):
        migrate.migrate(scratch_dsn, directory=tmp_path)
    with psycopg.connect(scratch_dsn) as conn:
        assert conn.execute("SELECT to_regclass('u')").fetchone() == (None,), "0002 ran despite the refusal"


def test_a_failing_migration_is_rolled_back_with_its_record(scratch_dsn, tmp_path):
    write(tmp_path, "0001_ok.sql", "CREATE TABLE t (id int);")
    write(tmp_path, "0002_broken.sql", "CREATE TABLE half (id int); INSERT INTO no_such_table VALUES (1);")
    with pytest.raises(migrate.MigrationError, match="0002_broken failed and was rolled back.*no_such_table"):
        migrate.migrate(scratch_dsn, directory=tmp_path)
    with psycopg.connect(scratch_dsn) as conn:
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)
        assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]


def test_repository_migrations_apply_to_a_fresh_database_and_set_passwords(postgres_server, scratch_dsn):
    report = migrate.migrate(scratch_dsn, {migrate.APP_ROLE: postgres_server.app_password,
                                           migrate.CDC_ROLE: postgres_server.cdc_password})
    assert report.applied[0] == "0001_iot_schema"
    assert migrate.migrate(scratch_dsn).applied == ()
    # The roles already existed (they are cluster-wide): the migration reused them.
    with psycopg.connect(scratch_dsn) as conn:
        verifiers = dict(conn.execute(
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN (%s, %s)",
            (migrate.APP_ROLE, migrate.CDC_ROLE),
        ).fetchall())
        assert all(v.startswith("SCRAM-SHA-256$") for v in verifiers.values()) and len(verifiers) == 2
        assert conn.execute("SELECT has_table_privilege(%s, 'readings', 'INSERT'), "
                            "has_table_privilege(%s, 'readings', 'INSERT')",
                            (migrate.APP_ROLE, migrate.CDC_ROLE)).fetchone() == (True, False)


def test_the_session_database_records_the_repository_migrations(postgres_server):
    with psycopg.connect(postgres_server.dsn) as conn:
        recorded = conn.execute("SELECT version, checksum FROM schema_migrations ORDER BY version").fetchall()
    assert recorded == [(m.version, m.checksum) for m in migrate.discover()]
