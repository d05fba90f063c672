"""The commerce pipeline through Airflow on real services: `airflow dags test commerce_daily <day>`.

HDFS (NameNode + 2 DataNodes), a Spark Connect server and PostgreSQL are the shared fixtures;
the shop simulator writes real daily partitions over WebHDFS; the DAG runs with the real
Airflow 3.3 (`//deploy/airflow:cli`, SQLite metadata in the test's directory), which starts the
real marts job against the Spark Connect server. Checked:

- a day goes through every task: the sensor sees _SUCCESS, the job writes the marts, the four
  data-quality checks pass, the day is published, the dashboard refresh is skipped (no
  Superset here); the raw line count the job logged equals the lines in HDFS, counted here;
- the fault case: the Spark job process is SIGKILLed mid-run, Airflow retries the task, the
  run succeeds, and every mart row of the day equals a clean run's.
"""

import datetime
import gzip
import os
import pathlib
import signal
import sqlite3
import subprocess
import time

import psutil
import psycopg
import pytest

from deploy.common.service import runfile
from deploy.hdfs.webhdfs import WebHdfsClient
from tests.fixtures.hdfs_cluster import hdfs_cluster  # noqa: F401 (a fixture)
from tests.fixtures.postgres_server import postgres_server  # noqa: F401 (a fixture)
from tests.fixtures.spark_connect import spark_connect_server  # noqa: F401 (a fixture)

RAW = "/raw/commerce/events"
DAY1 = datetime.date(2026, 1, 1)
DAY2 = datetime.date(2026, 1, 2)
DAG_TEST_TIMEOUT = 900
PUBLISHED_DDL = "jobs/commerce/dags/published_day.sql"
# Rows of day D per table (deploy/postgres/migrations/0002_commerce_marts.sql).
DAY_ROWS = {
    "daily_category_revenue": "event_date = %s",
    "daily_funnel_step": "event_date = %s",
    "daily_top_product": "event_date = %s",
    "customer_rfm": "as_of_date = %s",
    "session_summary": "event_date = %s",
    "daily_customer_type": "event_date = %s",
    "customer_daily_order": "order_date = %s",
    "rejected_line": "event_date = %s",
    "cohort_retention": "activity_period_start_date <= %s",
}


def clean_env(**extra):
    """Our environment without this test's Python path and runfiles: the child finds its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE", "PYTHONSAFEPATH")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="module")
def stack(hdfs_cluster, spark_connect_server, postgres_server, tmp_path_factory):  # noqa: F811
    generated = subprocess.run(
        [str(runfile("services/shop_simulator/shop_simulator")), "--start-date", DAY1.isoformat(), "--days", "2",
         "--users", "300", "--products", "60", "--events-per-day", "3000", "--part-lines", "2000",
         "--webhdfs-url", hdfs_cluster.webhdfs_url, "--root", RAW],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=clean_env())
    assert generated.returncode == 0, generated.stdout[-5000:]
    # mart.published_day until a deploy/postgres migration carries it: created by the schema owner.
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(runfile(PUBLISHED_DDL).read_text())
    home = tmp_path_factory.mktemp("airflow-home")
    env = clean_env(
        DP_AIRFLOW_HOME=home,
        DP_WEBHDFS_URL=hdfs_cluster.webhdfs_url,
        DP_COMMERCE_RAW_ROOT=hdfs_cluster.hdfs_url + RAW,
        DP_SPARK_REMOTE=spark_connect_server.url,
        DP_COMMERCE_POSTGRES_DSN=postgres_server.app_dsn,
        DP_COMMERCE_RETRY_DELAY_SECONDS=1,
        DP_COMMERCE_MAX_RETRY_DELAY_SECONDS=5,
        DP_COMMERCE_SENSOR_POKE_SECONDS=5,
        DP_COMMERCE_SENSOR_TIMEOUT_SECONDS=300,
    )
    return {"env": env, "home": home, "dsn": postgres_server.app_dsn,
            "webhdfs": WebHdfsClient(hdfs_cluster.webhdfs_url)}


def start_dag_test(stack, day, log_name):
    log = open(stack["home"] / log_name, "wb")
    process = subprocess.Popen([str(runfile("deploy/airflow/cli")), "dags", "test", "commerce_daily", day.isoformat()],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=stack["env"])
    process.log_path = stack["home"] / log_name
    return process


def finish(process):
    process.wait(DAG_TEST_TIMEOUT)
    return process.log_path.read_text(errors="replace")


def airflow_db(stack, sql, *params):
    with sqlite3.connect(str(stack["home"] / "airflow.db")) as conn:
        return conn.execute(sql, params).fetchall()


def task_states(stack, day):
    """{task_id: (state, try_number)} of the latest dag run of `day`."""
    rows = airflow_db(stack, "SELECT ti.task_id, ti.state, ti.try_number FROM task_instance ti JOIN dag_run dr "
                             "ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id WHERE dr.dag_id = 'commerce_daily' "
                             "AND date(dr.logical_date) = ?", day.isoformat())
    return {task: (state, tries) for task, state, tries in rows}


def dag_run_state(stack, day):
    return airflow_db(stack, "SELECT state FROM dag_run WHERE dag_id = 'commerce_daily' AND date(logical_date) = ?",
                      day.isoformat())[0][0]


def query(stack, sql, *params):
    with psycopg.connect(stack["dsn"]) as conn:
        return conn.execute(sql, params).fetchall()


def snapshot(stack, day):
    return {table: sorted(map(repr, query(stack, "SELECT * FROM mart.%s WHERE %s" % (table, where), day)))
            for table, where in DAY_ROWS.items()}


def raw_line_count(stack, day):
    folder = "%s/dt=%s" % (RAW, day.isoformat())
    total = 0
    for entry in stack["webhdfs"].list(folder):
        if entry["pathSuffix"].startswith("part-"):
            data = stack["webhdfs"].read(folder + "/" + entry["pathSuffix"])
            data = gzip.decompress(data) if entry["pathSuffix"].endswith(".gz") else data
            total += len(data.splitlines())
    return total


def test_a_real_day_runs_through_every_task(stack):
    output = finish(start_dag_test(stack, DAY1, "dags-test-day1.log"))
    states = task_states(stack, DAY1)
    assert dag_run_state(stack, DAY1) == "success", output[-8000:]
    assert {t: s for t, (s, _) in states.items()} == {
        "wait_for_partition": "success", "submit_spark_job": "success", "check_quality": "success",
        "publish": "success", "refresh_dashboards": "skipped"}, output[-8000:]
    (run_id, raw_lines, valid, rejected), = query(
        stack, "SELECT run_id::text, raw_lines, valid_events, rejected_lines FROM mart.job_run "
               "WHERE event_date = %s AND status = 'SUCCEEDED'", DAY1)
    assert raw_lines == raw_line_count(stack, DAY1) > 0
    assert valid > 0 and rejected > 0  # the simulator writes a small share of bad lines
    (published_run, report), = query(stack, "SELECT job_run_id::text, quality_report FROM mart.published_day "
                                            "WHERE event_date = %s", DAY1)
    assert published_run == run_id
    assert report.startswith("data quality of %s: all 4 checks passed" % DAY1.isoformat()), report
    assert query(stack, "SELECT count(*) FROM mart.daily_category_revenue WHERE event_date = %s", DAY1)[0][0] > 0


def _job_processes(day):
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(part.endswith("jobs/commerce/marts/job") or part.endswith("jobs/commerce/marts/main.py")
               for part in cmdline) and day.isoformat() in cmdline:
            found.append(proc)
    return found


def test_a_killed_spark_job_is_retried_and_the_marts_equal_a_clean_run(stack):
    process = start_dag_test(stack, DAY2, "dags-test-day2-fault.log")
    killed = None
    deadline = time.monotonic() + DAG_TEST_TIMEOUT
    while killed is None and process.poll() is None and time.monotonic() < deadline:
        if _job_processes(DAY2):
            time.sleep(3)  # let it get into its Spark work
            for job in _job_processes(DAY2):
                job.send_signal(signal.SIGKILL)
                killed = job.pid
        time.sleep(0.2)
    output = finish(process)
    assert killed is not None, "the job finished before it could be killed:\n" + output[-5000:]
    states = task_states(stack, DAY2)
    assert dag_run_state(stack, DAY2) == "success", output[-8000:]
    assert states["submit_spark_job"] == ("success", 2), (states, output[-8000:])
    assert "was killed by SIGKILL" in output or "killed by SIGKILL" in "".join(
        p.read_text(errors="replace") for p in pathlib.Path(stack["home"], "logs").rglob("*.log"))
    after_fault = snapshot(stack, DAY2)
    assert after_fault["daily_category_revenue"] and after_fault["session_summary"]

    output = finish(start_dag_test(stack, DAY2, "dags-test-day2-clean.log"))
    assert dag_run_state(stack, DAY2) == "success", output[-8000:]
    assert task_states(stack, DAY2)["submit_spark_job"] == ("success", 1)
    assert snapshot(stack, DAY2) == after_fault
    runs = query(stack, "SELECT count(*) FROM mart.job_run WHERE event_date = %s AND status = 'SUCCEEDED'", DAY2)
    assert runs[0][0] == 2  # the retried run and the clean one; the killed attempt wrote nothing
