"""A real PostgreSQL 18 as the IoT CDC source: TCP, logical WAL, publication, least-privilege
CDC role, a pgoutput slot, durability across restarts and a clean stop of the CLI on SIGTERM."""

import datetime
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg
import pytest
from psycopg import errors

from deploy.postgres import migrate
from deploy.common.process import port_is_open
from deploy.postgres.server import PostgresConfig, PostgresServer, only_uid0_mapped
from tests.fixtures.postgres_server import postgres_server, postgres_server_factory  # noqa: F401 (fixtures)

PUBLISHED_TABLES = {"readings", "devices", "sites"}


def insert_reading(app_dsn: str, suffix: str, temperature: float = 21.5) -> int:
    """A site, a device and one reading written by the app role; returns the reading_id."""
    site_id, device_id = "site-" + suffix, "dev-" + suffix
    with psycopg.connect(app_dsn) as conn:
        conn.execute("INSERT INTO sites (site_id, display_name, time_zone) VALUES (%s, %s, 'Europe/Berlin') "
                     "ON CONFLICT DO NOTHING", (site_id, "Site " + suffix))
        conn.execute("INSERT INTO devices (device_id, site_id, model, firmware_version) VALUES (%s, %s, 'TH-200', "
                     "'2.4.1') ON CONFLICT DO NOTHING", (device_id, site_id))
        (reading_id,) = conn.execute(
            "INSERT INTO readings (device_id, site_id, reading_time, temperature_celsius, humidity_percent, "
            "firmware_version) VALUES (%s, %s, %s, %s, NULL, '2.4.1') RETURNING reading_id",
            (device_id, site_id, datetime.datetime.now(datetime.timezone.utc), temperature),
        ).fetchone()
    return reading_id


def test_serves_sql_over_tcp_on_loopback(postgres_server):
    assert port_is_open("127.0.0.1", postgres_server.port)
    with psycopg.connect(postgres_server.app_dsn) as conn:
        assert conn.info.host == "127.0.0.1" and conn.info.port == postgres_server.port
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW server_version").fetchone()[0].startswith("18.")


def test_the_server_does_not_run_as_root(postgres_server):
    """Either another OS user, or root mapped to an unprivileged id in its own user namespace."""
    with open("/proc/%d/status" % postgres_server.pid) as status:
        uid = int(next(line for line in status if line.startswith("Uid:")).split()[1])
    other_namespace = os.readlink("/proc/%d/ns/user" % postgres_server.pid) != os.readlink("/proc/self/ns/user")
    print("run_as mode=%s name=%s uid=%d own_user_namespace=%s" % (
        postgres_server.identity.mode, postgres_server.identity.name, uid, other_namespace))
    assert uid != 0 or other_namespace
    expected_modes = ("user", "userns") if os.geteuid() == 0 else ("self",)
    assert postgres_server.identity.mode in expected_modes


def test_wal_is_logical_with_room_for_slots(postgres_server):
    with psycopg.connect(postgres_server.dsn) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('wal_level', 'max_replication_slots', 'max_wal_senders', 'shared_buffers', 'password_encryption')"
        ).fetchall())
    assert settings["wal_level"] == "logical"
    assert int(settings["max_replication_slots"]) >= 4 and int(settings["max_wal_senders"]) >= 4
    assert settings["password_encryption"] == "scram-sha-256"
    assert int(settings["shared_buffers"]) * 8192 <= 64 * 1024 * 1024  # small: 8 kB pages


def test_publication_covers_the_three_iot_tables(postgres_server):
    with psycopg.connect(postgres_server.dsn) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'dp_iot_publication'"
        ).fetchall()
        (pubinsert, pubupdate, pubdelete) = conn.execute(
            "SELECT pubinsert, pubupdate, pubdelete FROM pg_publication WHERE pubname = 'dp_iot_publication'"
        ).fetchone()
        identity = conn.execute("SELECT relreplident FROM pg_class WHERE oid = 'public.readings'::regclass").fetchone()
    assert {table for schema, table in tables} == PUBLISHED_TABLES and {s for s, _ in tables} == {"public"}
    assert pubinsert and pubupdate and pubdelete
    assert identity == ("f",), "readings must be REPLICA IDENTITY FULL"


def test_app_role_reads_and_writes_the_iot_tables(postgres_server):
    reading_id = insert_reading(postgres_server.app_dsn, "app-" + uuid.uuid4().hex[:8])
    with psycopg.connect(postgres_server.app_dsn) as conn:
        conn.execute("UPDATE readings SET battery_percent = 80 WHERE reading_id = %s", (reading_id,))
        row = conn.execute("SELECT battery_percent, humidity_percent, inserted_at IS NOT NULL FROM readings "
                           "WHERE reading_id = %s", (reading_id,)).fetchone()
        assert row == (80.0, None, True)
        conn.execute("DELETE FROM readings WHERE reading_id = %s", (reading_id,))
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM schema_migrations")
        conn.rollback()
        with pytest.raises(errors.CheckViolation):
            conn.execute("UPDATE readings SET humidity_percent = 101")


def test_cdc_role_reads_the_published_tables_and_nothing_else(postgres_server):
    insert_reading(postgres_server.app_dsn, "cdc-" + uuid.uuid4().hex[:8])
    with psycopg.connect(postgres_server.cdc_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] >= 1
        assert conn.execute("SELECT rolsuper, rolreplication, rolcreaterole, rolcreatedb FROM pg_roles "
                            "WHERE rolname = current_user").fetchone() == (False, True, False, False)
        refused = [
            "INSERT INTO readings (device_id, site_id, reading_time, firmware_version) "
            "VALUES ('x', 'x', now(), 'x')",
            "UPDATE devices SET model = 'x'",
            "DELETE FROM sites",
            "SELECT * FROM schema_migrations",
            "CREATE TABLE cdc_owned (id int)",
            "CREATE PUBLICATION cdc_pub FOR TABLE readings",
        ]
        for statement in refused:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry|not permitted"):
        psycopg.connect(postgres_server.cdc_dsn, dbname="postgres").close()


def test_wrong_password_and_unknown_users_are_rejected(postgres_server):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres_server.app_dsn, password="wrong").close()
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        psycopg.connect(postgres_server.app_dsn, user="postgres", password="").close()


def test_cdc_role_creates_reads_and_drops_a_pgoutput_slot(postgres_server):
    slot = "dp_test_" + uuid.uuid4().hex[:8]
    # The walsender protocol Debezium uses: a replication connection, CREATE/DROP_REPLICATION_SLOT.
    with psycopg.connect(postgres_server.cdc_dsn, replication="database", autocommit=True) as conn:
        created = conn.execute("CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT 'nothing')" % slot).fetchone()
        assert created[0] == slot and created[3] == "pgoutput"
    try:
        reading_id = insert_reading(postgres_server.app_dsn, "slot-" + uuid.uuid4().hex[:8], temperature=-3.25)
        with psycopg.connect(postgres_server.cdc_dsn, autocommit=True) as conn:
            changes = conn.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
                "'publication_names', 'dp_iot_publication')", (slot,)
            ).fetchall()
        messages = [bytes(data) for (data,) in changes]
        # pgoutput: R = relation, I = insert; the insert carries the new row as text values.
        assert any(m[:1] == b"R" and b"readings" in m for m in messages)
        assert any(m[:1] == b"I" and str(reading_id).encode() in m and b"-3.25" in m for m in messages)
    finally:
        with psycopg.connect(postgres_server.cdc_dsn, replication="database", autocommit=True) as conn:
            conn.execute("DROP_REPLICATION_SLOT %s WAIT" % slot)
    with psycopg.connect(postgres_server.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() == (0,)


def test_the_sql_slot_functions_need_the_replication_attribute(postgres_server):
    slot = "dp_test_sql_" + uuid.uuid4().hex[:8]
    with psycopg.connect(postgres_server.cdc_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    with psycopg.connect(postgres_server.app_dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))


def test_data_survives_a_stop_and_start(postgres_server_factory, tmp_path):
    state = tmp_path / "durable"
    first = postgres_server_factory(state_dir=state)
    reading_id = insert_reading(first.app_dsn, "durable")
    assert first.initdb_seconds is not None
    assert first.stop() == 0
    assert not port_is_open("127.0.0.1", first.port)

    second = postgres_server_factory(state_dir=state)
    assert second.initdb_seconds is None, "the data directory should have been reused"
    with psycopg.connect(second.app_dsn) as conn:
        assert conn.execute("SELECT device_id, temperature_celsius FROM readings WHERE reading_id = %s",
                            (reading_id,)).fetchone() == ("dev-durable", 21.5)
    with psycopg.connect(second.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone() == (len(migrate.discover()),)


def _read_until(process: subprocess.Popen, marker: str, timeout: float) -> list:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if marker in line:
            return lines
    raise AssertionError("no %r from the CLI within %.0f s; output:\n%s" % (marker, timeout, "\n".join(lines)))


def test_cli_prints_its_address_and_stops_cleanly_on_sigterm(tmp_path):
    state = tmp_path / "cli"
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy.postgres.server", "--port", "0", "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(pathlib.Path.cwd()),
    )
    try:
        lines = _read_until(process, "Ctrl-C stops", timeout=120)
        listening = next(line for line in lines if line.startswith("postgresql 18."))
        port = int(listening.split("127.0.0.1:")[1].split()[0])
        assert "(data: %s)" % (state / "postgres" / "data") in listening
        applied = "event=migrations_done applied=%d" % len(migrate.discover())
        assert any(applied in line for line in lines), lines
        with psycopg.connect(host="127.0.0.1", port=port, dbname="datapipelines", user=migrate.APP_ROLE,
                             password=migrate.DEFAULT_APP_PASSWORD) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone() == (0,)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        tail = process.stdout.read()
        assert "postgresql stopped" in tail, tail
        assert not port_is_open("127.0.0.1", port)
        assert not (state / "postgres" / "data" / "postmaster.pid").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.skipif(os.geteuid() != 0 or only_uid0_mapped(),
                    reason="needs root with other users mapped (not Bazel's linux-sandbox): "
                           "bazel test --spawn_strategy=standalone //deploy/postgres:server_test")
def test_as_root_runs_as_an_unprivileged_os_user():
    # `nobody` instead of dp-postgres: the test must not add users to the machine. /tmp because
    # the user cannot enter TEST_TMPDIR (under root's private home).
    state = pathlib.Path(tempfile.mkdtemp(prefix="dp-pg-user-test-"))
    os.chmod(state, 0o711)
    server = PostgresServer(PostgresConfig(state_dir=state, port=0, run_as="user", os_user="nobody"))
    try:
        server.start()
        assert server.identity.mode == "user" and server.identity.name == "nobody"
        with open("/proc/%d/status" % server.pid) as status:
            assert next(line for line in status if line.startswith("Uid:")).split()[1] == "65534"
        assert (state / "postgres" / "data").stat().st_uid == 65534
        insert_reading(server.app_dsn, "user-mode")
        assert server.stop() == 0
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
