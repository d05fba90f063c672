"""The commerce marts job (jobs/commerce/marts, the real PySpark job) on a Spark standalone cluster
(master + 2 workers) over HDFS with 3 DataNodes loses a DataNode as it starts reading the day, then
a Spark worker in the middle of its run (SIGKILL each): the scenario, run on clusters of the test
fixtures (spark_fault_test.py) and on the whole multi-node profile (local_profile_test.py).

What must hold: the job still finishes (exit 0, run SUCCEEDED), and every row of every mart table
in PostgreSQL equals the independent recomputation of the day from the same part files
(tests/e2e/commerce_reference.py: standard-library Python, never the job's code). The kill
of the DataNode comes when the job logs `event=reading`: the part files (replication 3) are read
from the DataNodes left. The kill of the worker comes after the job has parsed and cached the
day's events on the executors (its `event=parsed` progress line) and while worker-1 runs one of
its executors, so Spark must recompute the lost cached partitions and rerun the lost tasks on what
is left; the launcher restarts the worker.
"""

import datetime
import os
import re
import signal
import subprocess
from typing import Callable, NamedTuple

import psycopg

from deploy.common.process import tail
from deploy.common.service import runfile
from deploy.hdfs.webhdfs import WebHdfsClient
from tests.e2e import commerce_reference as reference

RAW = "/raw/commerce/events"
DAY = datetime.date(2026, 2, 1)
# Small parts: several input partitions, so both executors hold cached blocks of the day.
SHOP = ["--users", "300", "--products", "60", "--events-per-day", "4000", "--part-lines", "400"]
JOB_TIMEOUT = 600
WORKER_MEMORY, EXECUTOR_MEMORY = "768m", "512m"
LOST_EXECUTOR = re.compile(r"(?i)lost executor|executorlostfailure|executor \S+ (?:removed|lost)")


def clean_env(**extra):
    """Our environment without this test's Python path and runfiles: the child finds its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE", "PYTHONSAFEPATH")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def mart_rows(dsn):
    """{table: rows} of every mart table, in the reference's column order."""
    with psycopg.connect(dsn) as conn:
        return {table: conn.execute("SELECT %s FROM mart.%s" % (", ".join(reference.COLUMNS[table]), table)).fetchall()
                for table in reference.TABLES}


def start_job(spark, hdfs_url, dsn, log_path):
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [str(runfile("jobs/commerce/marts/job")), "--day", DAY.isoformat(), "--raw-root", hdfs_url + RAW,
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


class Day(NamedTuple):
    hdfs_url: str
    expected: reference.MartState
    counts: dict


def prepare(hdfs_url: str, webhdfs_url: str) -> Day:
    """Publishes one simulated shop day into HDFS and recomputes its marts from the part files there."""
    generated = subprocess.run(
        [str(runfile("services/shop_simulator/shop_simulator")), "--start-date", DAY.isoformat(), "--days", "1",
         *SHOP, "--webhdfs-url", webhdfs_url, "--root", RAW],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=clean_env())
    assert generated.returncode == 0, generated.stdout[-5000:]
    expected = reference.MartState()
    counts = expected.run_day(DAY, reference.read_partition(WebHdfsClient(webhdfs_url), RAW, DAY, hdfs_url))
    assert counts["valid_events"] > 0 and counts["rejected_lines"] > 0, counts
    return Day(hdfs_url, expected, counts)


def run(day: Day, spark, kill_datanode: Callable[[], None], dsn: str, tmp_path) -> str:
    """The day's run on `spark` (tests.cluster.spark_cluster.SparkStandalone, started or attached)
    with `kill_datanode()` (a SIGKILL of one DataNode) as the job starts reading and worker-1
    SIGKILLed after the events are cached; then every mart row is compared. Returns a summary."""
    fault_log = tmp_path / "job-fault.log"
    job = start_job(spark, day.hdfs_url, dsn, fault_log)
    worker_ids = {w["id"] for w in spark.status()["workers"]}

    def reading():
        assert job.poll() is None, "the job ended before reading:\n%s" % tail(fault_log, 60)
        return "event=reading" in fault_log.read_text(errors="replace")

    spark.wait(reading, JOB_TIMEOUT, "the job to start reading the day")
    kill_datanode()

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

    counts = day.counts
    runs = succeeded_runs(dsn)
    assert runs == [(counts["raw_lines"], counts["valid_events"], counts["rejected_lines"])], runs
    got = mart_rows(dsn)
    problems = {table: found[:10] for table in reference.TABLES
                for found in [reference.differences(table, got[table], day.expected.rows(table))] if found}
    assert not problems, "mart rows after the worker kill differ from the recomputation: %s" % problems
    assert all(got[table] for table in reference.TABLES), {t: len(r) for t, r in got.items()}
    summary = "marts equal the recomputation after a DataNode and a worker SIGKILL: %s; %s" % (
        counts, {t: len(r) for t, r in got.items()})
    print(summary)
    return summary
