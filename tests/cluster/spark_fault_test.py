"""The commerce marts job (jobs/commerce/marts, the real PySpark job) on a Spark standalone cluster
(master + 2 workers) over HDFS with 3 DataNodes loses a worker (SIGKILL) in the middle of its run.

What must hold: the job still finishes (exit 0, run SUCCEEDED), and every row of every mart table
of the day in PostgreSQL equals the rows a run of the same day without the fault wrote. The kill
comes after the job has parsed and cached the day's events on the executors (its `event=parsed`
progress line) and while worker-1 runs one of its executors, so Spark must recompute the lost
cached partitions and rerun the lost tasks on what is left; the launcher restarts the worker.
"""

import datetime
import math
import os
import re
import signal
import subprocess

import psycopg

from deploy.common.process import tail
from deploy.common.service import runfile
from tests.cluster.spark_cluster import standalone_cluster
from tests.fixtures.hdfs_cluster import hdfs_cluster_factory  # noqa: F401 (a fixture)
from tests.fixtures.postgres_server import postgres_server  # noqa: F401 (a fixture)

RAW = "/raw/commerce/events"
DAY = datetime.date(2026, 2, 1)
# Small parts: several input partitions, so both executors hold cached blocks of the day.
SHOP = ["--users", "300", "--products", "60", "--events-per-day", "4000", "--part-lines", "400"]
JOB_TIMEOUT = 600
WORKER_MEMORY, EXECUTOR_MEMORY = "768m", "512m"
# Bookkeeping of runs (ids, times) differs by design; every other table of the schema is a mart.
RUN_TABLES = {"job_run", "published_day"}
FLOAT_DIGITS = 12
LOST_EXECUTOR = re.compile(r"(?i)lost executor|executorlostfailure|executor \S+ (?:removed|lost)")


def clean_env(**extra):
    """Our environment without this test's Python path and runfiles: the child finds its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE", "PYTHONSAFEPATH")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def mart_tables(dsn):
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'mart' "
                            "AND table_type = 'BASE TABLE' ORDER BY table_name").fetchall()
    return [name for (name,) in rows if name not in RUN_TABLES]


def _cell(value):
    return round(value, FLOAT_DIGITS) if isinstance(value, float) and math.isfinite(value) else value


def mart_rows(dsn):
    """{table: sorted rows} of every mart table (the database holds only this test's day)."""
    rows = {}
    with psycopg.connect(dsn) as conn:
        for table in mart_tables(dsn):
            found = conn.execute("SELECT * FROM mart.%s" % table).fetchall()
            rows[table] = sorted((tuple(_cell(v) for v in row) for row in found), key=repr)
    return rows


def start_job(spark, hdfs, dsn, log_path):
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [str(runfile("jobs/commerce/marts/job")), "--day", DAY.isoformat(), "--raw-root", hdfs.hdfs_url + RAW,
         "--postgres-dsn", dsn, "--spark-master", spark.master_url, "--driver-memory", "768m"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        # Spark's default executor size (1g) is more than a worker offers; SparkContext reads this.
        env=clean_env(SPARK_EXECUTOR_MEMORY=EXECUTOR_MEMORY))
    log.close()
    return process


def finish(process, log_path):
    code = process.wait(JOB_TIMEOUT)
    assert code == 0, tail(log_path, 60)


def succeeded_runs(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT raw_lines, valid_events, rejected_lines FROM mart.job_run "
                            "WHERE event_date = %s AND status = 'SUCCEEDED' ORDER BY started_at", (DAY,)).fetchall()


def test_the_marts_job_survives_a_worker_sigkill(tmp_path, hdfs_cluster_factory, postgres_server):  # noqa: F811
    hdfs = hdfs_cluster_factory(datanodes=3)
    dsn = postgres_server.app_dsn
    generated = subprocess.run(
        [str(runfile("services/shop_simulator/shop_simulator")), "--start-date", DAY.isoformat(), "--days", "1",
         *SHOP, "--webhdfs-url", hdfs.webhdfs_url, "--root", RAW],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=clean_env())
    assert generated.returncode == 0, generated.stdout[-5000:]

    with standalone_cluster(tmp_path, workers=2, worker_memory=WORKER_MEMORY) as spark:
        # 1. The day without a fault: the marts to compare with.
        clean_log = tmp_path / "job-clean.log"
        finish(start_job(spark, hdfs, dsn, clean_log), clean_log)
        expected = mart_rows(dsn)
        assert expected["session_summary"] and expected["daily_category_revenue"], {t: len(r) for t, r in expected.items()}

        # 2. The same day again (the job replaces a day's rows), worker-1 SIGKILLed mid-run.
        fault_log = tmp_path / "job-fault.log"
        job = start_job(spark, hdfs, dsn, fault_log)
        worker_ids = {w["id"] for w in spark.status()["workers"]}

        def parsed_with_an_executor_on_worker_1():
            assert job.poll() is None, "the job ended before the kill:\n%s" % tail(fault_log, 60)
            if "event=parsed" not in fault_log.read_text(errors="replace"):
                return False
            # One core per worker and the application takes all: an executor on each, worker-1's included.
            busy = [w for w in spark.status()["workers"] if w["state"] == "ALIVE" and w["coresused"] > 0]
            return len(busy) == 2

        spark.wait(parsed_with_an_executor_on_worker_1, JOB_TIMEOUT, "the job to cache its events on both workers")
        killed = spark.pids()["worker-1"]
        os.kill(killed, signal.SIGKILL)
        written_before_kill = "event=written" in fault_log.read_text(errors="replace")
        finish(job, fault_log)
        assert not written_before_kill, "the job had already written its marts when the worker died"
        # The launcher replaced the worker and a new one registered with the master.
        assert spark.pids()["worker-1"] != killed
        spark.wait(lambda: any(w["state"] == "ALIVE" and w["id"] not in worker_ids for w in spark.status()["workers"]),
                   180, "the replacement worker to register")
        # The driver saw the dead worker's executor go: Spark's recovery, not luck, carried the job.
        after_kill = fault_log.read_text(errors="replace").split("event=parsed", 1)[1]
        assert LOST_EXECUTOR.search(after_kill), tail(fault_log, 60)

        got = mart_rows(dsn)
    assert spark.exit_code == 0, tail(spark.log, 40)

    runs = succeeded_runs(dsn)
    assert len(runs) == 2 and runs[0] == runs[1], runs
    assert set(got) == set(expected)
    differences = {table: {"only after the fault": [r for r in got[table] if r not in expected[table]][:5],
                           "only without it": [r for r in expected[table] if r not in got[table]][:5],
                           "rows": (len(got[table]), len(expected[table]))}
                   for table in expected if got[table] != expected[table]}
    assert not differences, "mart rows differ after the worker kill: %s" % differences
