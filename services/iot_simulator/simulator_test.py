"""The simulator against a real PostgreSQL: what it reports is what the table holds."""

import re
import subprocess
import sys

import psycopg

from tests.fixtures.postgres_server import postgres_server  # noqa: F401  (pytest fixture)


def run_simulator(dsn, *args):
    result = subprocess.run(
        [sys.executable, "-m", "services.iot_simulator.main", "--dsn", dsn, *args],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    finished = re.search(r"event=finished .* inserts=(\d+) late=(\d+) updates=(\d+) deletes=(\d+)", result.stdout)
    assert finished, result.stdout
    return [int(x) for x in finished.groups()], result.stdout


def test_writes_readings_corrections_and_deletions(postgres_server):  # noqa: F811
    (inserts, late, updates, deletes), out = run_simulator(
        postgres_server.app_dsn, "--rate", "400", "--duration", "2", "--sites", "3", "--devices", "12",
        "--update-fraction", "0.05", "--delete-fraction", "0.05", "--late-fraction", "0.1", "--seed", "11",
    )
    assert "event=started sites=3 devices=12" in out
    assert inserts > 400 and updates > 0 and deletes > 0 and late > 0
    with psycopg.connect(postgres_server.app_dsn) as conn:
        rows = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        sites = conn.execute("SELECT count(*) FROM sites").fetchone()[0]
        devices = conn.execute("SELECT count(DISTINCT device_id) FROM readings").fetchone()[0]
        behind = conn.execute(
            "SELECT count(*) FROM readings WHERE reading_time < inserted_at - interval '1 second'"
        ).fetchone()[0]
    assert rows == inserts - deletes
    assert sites == 3 and devices == 12
    assert behind > 0, "late readings carry a reading time behind their insert time"

    # A second run continues the id sequence and keeps the fleet.
    (inserts2, _, _, deletes2), _ = run_simulator(postgres_server.app_dsn, "--rate", "200", "--duration", "1",
                                                  "--sites", "3", "--devices", "12")
    with psycopg.connect(postgres_server.app_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == rows + inserts2 - deletes2


def test_unreachable_database_is_explained():
    result = subprocess.run(
        [sys.executable, "-m", "services.iot_simulator.main", "--dsn",
         "postgresql://dp_app:x@127.0.0.1:1/datapipelines", "--duration", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "cannot connect to PostgreSQL" in result.stderr and "bazel run //deploy/postgres:server" in result.stderr
