"""The commerce pipeline through Airflow on real services, every mart row against a recomputation.

HDFS (NameNode + 2 DataNodes), a Spark Connect server and PostgreSQL (migrated: schema `mart`,
`mart.published_day`) are the shared fixtures; the shop simulator writes three real daily
partitions over WebHDFS (the third with one more part file of hand-made bad lines, published
with the day by `--extra-part`); the DAG runs with the real Airflow 3.3 (`//deploy/airflow:cli`,
SQLite metadata in the test's directory), which starts the real marts job against the Spark
Connect server. After every run, EVERY row of every mart table in PostgreSQL must equal what
commerce_reference.py (plain Python over the same part files, read back over WebHDFS; never
the job's code) says the runs so far leave there: integers, text, dates and times exactly, the
two float columns (funnel conversion, retention rate) within 1e-12. In order:

1. day 1 goes through every task (sensor, job, four quality checks, publish; dashboard refresh
   skipped: no Superset here), and the job's run log counts what the reference counts;
2. day 2: the Spark job process is SIGKILLed mid-run, Airflow retries the task, the run
   succeeds, and the marts equal the reference (the killed attempt committed nothing);
3. day 3 holds the bad part file: malformed, truncated, non-UTF-8 lines, unknown event types,
   negative prices (and more): each ends in mart.rejected_line with its reason, file and line,
   the run succeeds and the valid data equals the reference;
4. day 2 again, after day 3: every table is unchanged (idempotence) and still equals the reference.
"""

import datetime
import json
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
from tests.e2e import commerce_reference as reference
from tests.fixtures.hdfs_cluster import hdfs_cluster  # noqa: F401 (a fixture)
from tests.fixtures.postgres_server import postgres_server  # noqa: F401 (a fixture)
from tests.fixtures.spark_connect import spark_connect_server  # noqa: F401 (a fixture)

RAW = "/raw/commerce/events"
DAY1, DAY2, DAY3 = datetime.date(2026, 1, 1), datetime.date(2026, 1, 2), datetime.date(2026, 1, 3)
DAG_TEST_TIMEOUT = 900
SHOP = ["--users", "300", "--products", "60", "--events-per-day", "3000", "--part-lines", "2000"]


def _event(event_id, time_of_day, payload, anonymous="extra-anon", user=None):
    doc = {"eventId": event_id, "eventTime": "2026-01-03T%sZ" % time_of_day, "anonymousId": anonymous}
    if user:
        doc["userId"] = user
    doc.update(payload)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


_PRODUCT = {"productId": "SKU-EXTRA", "productName": "Extra Lamp", "category": "home/lighting/lamps"}
_ORDER = {"orderPlaced": {"orderId": "extra-order-1", "total": {"currencyCode": "EUR", "amountMinor": "4999"},
                          "lines": [{"product": _PRODUCT, "quantity": 1,
                                     "unitPrice": {"currencyCode": "EUR", "amountMinor": "4999"},
                                     "lineTotal": {"currencyCode": "EUR", "amountMinor": "4999"}}]}}
_PAGE = {"pageView": {"pageUrl": "https://shop.example/", "pagePath": "/"}}
_VALID_PAGE = _event("extra-page-1", "08:00:00", _PAGE, anonymous="extra-page-anon")
# The bad part file of day 3: (line, reason it must be rejected with, or None for a valid line).
BAD_PART = [
    (_event("extra-bad-1", "08:01:00", _PAGE)[:-1] + b",}", "malformed_json"),  # trailing comma
    (_event("extra-bad-2", "08:02:00", _PAGE).replace(b'"eventId":', b"eventId:"), "malformed_json"),
    (_event("extra-bad-3", "08:03:00", _PAGE).replace(b'"', b"'"), "malformed_json"),  # single quotes
    (_event("extra-bad-4", "08:04:00", _PAGE)[:70], "truncated_json"),
    # Text after a complete object: Spark's JSON parsers alone stop at the end of the object.
    (_event("extra-bad-4b", "08:04:00", _PAGE) + b" trailing", "truncated_json"),
    (_event("extra-bad-4c", "08:04:00", _PAGE) + _event("extra-bad-4d", "08:04:00", _PAGE), "malformed_json"),
    (_event("extra-bad-5", "08:05:00", {"search": {"query": "caf\u00e9"}}).decode().encode("latin-1"), "not_utf8"),
    (_event("extra-bad-6", "08:06:00", {"search": {"query": "lamp"}}).replace(b"lamp", b"la\xffmp"), "not_utf8"),
    (_event("extra-bad-7", "08:07:00", {"wishlistAdd": {"productId": "SKU-EXTRA"}}), "unknown_event_type"),
    (_event("extra-bad-8", "08:08:00", {"newsletterSignup": {"email": "someone@example.com"}}), "unknown_event_type"),
    (_event("extra-bad-9", "08:09:00", {"productView": {
        "product": _PRODUCT, "price": {"currencyCode": "EUR", "amountMinor": "-4999"}}}), "negative_amount"),
    (_event("extra-bad-10", "08:10:00", {"addToCart": {
        "product": _PRODUCT, "quantity": 1, "unitPrice": {"currencyCode": "EUR", "amountMinor": "-1"}}}),
     "negative_amount"),
    (_event("extra-bad-11", "08:11:00", {"orderPlaced": dict(_ORDER["orderPlaced"], lines=[
        dict(_ORDER["orderPlaced"]["lines"][0], lineTotal={"currencyCode": "EUR", "amountMinor": "-4999"})])},
        user="extra-user"), "negative_amount"),
    (b"", "empty_line"),
    (_event("extra-bad-13", "08:13:00", _PAGE).replace(b"2026-01-03T08:13:00Z", b"2026-01-04T00:00:01Z"),
     "outside_partition"),
    (_event("extra-bad-14", "08:14:00", _PAGE).replace(b"2026-01-03T08:14:00Z", b"2026-01-03"), "invalid_timestamp"),
    (_VALID_PAGE, None),
    (_VALID_PAGE, "duplicate_event_id"),  # the same line logged twice
    (_event("extra-order-event-1", "09:00:00", _ORDER, user="extra-user"), None),
    # The same order logged again 90 minutes later with a new event id: a valid event of a new
    # session, but the order counts once (revenue, customer, purchase stage of the first session).
    (_event("extra-order-event-2", "10:30:00", _ORDER, user="extra-user"), None),
]


def clean_env(**extra):
    """Our environment without this test's Python path and runfiles: the child finds its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE", "PYTHONSAFEPATH")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def generate(hdfs_cluster, start, days, *extra):  # noqa: F811
    done = subprocess.run(
        [str(runfile("services/shop_simulator/shop_simulator")), "--start-date", start.isoformat(),
         "--days", str(days), *SHOP, "--webhdfs-url", hdfs_cluster.webhdfs_url, "--root", RAW, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=clean_env())
    assert done.returncode == 0, done.stdout[-5000:]


@pytest.fixture(scope="module")
def stack(hdfs_cluster, spark_connect_server, postgres_server, tmp_path_factory):  # noqa: F811
    home = tmp_path_factory.mktemp("airflow-home")
    bad_part = home / "bad-lines.jsonl"
    bad_part.write_bytes(b"\n".join(line for line, _ in BAD_PART) + b"\n")
    generate(hdfs_cluster, DAY1, 2)
    generate(hdfs_cluster, DAY3, 1, "--extra-part", str(bad_part))
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
    return {"env": env, "home": home, "dsn": postgres_server.app_dsn, "hdfs_url": hdfs_cluster.hdfs_url,
            "webhdfs": WebHdfsClient(hdfs_cluster.webhdfs_url), "reference": reference.MartState()}


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


def columns(stack, table):
    """The table's columns in their order, generated ones left out (the reference's tuples)."""
    return [name for name, in query(stack, "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                           "'mart' AND table_name = %s AND is_generated = 'NEVER' "
                                           "ORDER BY ordinal_position", table)]


def mart_rows(stack):
    """Every row of every mart table, in the reference's column order (the migrated tables have
    those columns in that order)."""
    found = {}
    for table in reference.TABLES:
        assert tuple(columns(stack, table)) == reference.COLUMNS[table], table
        found[table] = query(stack, "SELECT %s FROM mart.%s" % (", ".join(reference.COLUMNS[table]), table))
    return found


def recompute(stack, day):
    """The reference's run of `day` over the part files as they are in HDFS now."""
    files = reference.read_partition(stack["webhdfs"], RAW, day, stack["hdfs_url"])
    assert files, "no part files for %s" % day
    return stack["reference"].run_day(day, files)


def assert_marts_equal_reference(stack):
    got = mart_rows(stack)
    problems = {}
    for table in reference.TABLES:
        found = reference.differences(table, got[table], stack["reference"].rows(table))
        if found:
            problems[table] = found[:10] + (["... %d more" % (len(found) - 10)] if len(found) > 10 else [])
    assert not problems, "mart rows differ from the recomputation:\n" + json.dumps(problems, indent=1, default=str)
    assert all(got[t] for t in reference.TABLES), {t: len(r) for t, r in got.items()}
    return got


def assert_run_log_matches(stack, day, counts):
    """The job's own account of its last successful run of `day` counts what the reference counts."""
    (raw_lines, valid, rejected, summary), = query(
        stack, "SELECT raw_lines, valid_events, rejected_lines, summary FROM mart.job_run WHERE event_date = %s "
               "AND status = 'SUCCEEDED' ORDER BY finished_at DESC LIMIT 1", day)
    assert (raw_lines, valid, rejected) == (counts["raw_lines"], counts["valid_events"], counts["rejected_lines"])
    assert summary["rejected_by_reason"] == counts["rejected_by_reason"]
    assert valid > 0 and rejected > 0  # the simulator writes a small share of bad lines


def test_day1_runs_through_every_task_and_every_mart_row_equals_the_recomputation(stack):
    output = finish(start_dag_test(stack, DAY1, "dags-test-day1.log"))
    assert dag_run_state(stack, DAY1) == "success", output[-8000:]
    assert {t: s for t, (s, _) in task_states(stack, DAY1).items()} == {
        "wait_for_partition": "success", "submit_spark_job": "success", "check_quality": "success",
        "publish": "success", "refresh_dashboards": "skipped"}, output[-8000:]
    counts = recompute(stack, DAY1)
    assert_run_log_matches(stack, DAY1, counts)
    (run_id,), = query(stack, "SELECT run_id::text FROM mart.job_run WHERE event_date = %s AND status = 'SUCCEEDED'",
                       DAY1)
    (published_run, report), = query(stack, "SELECT job_run_id::text, quality_report FROM mart.published_day "
                                            "WHERE event_date = %s", DAY1)
    assert published_run == run_id
    assert report.startswith("data quality of %s: all 4 checks passed" % DAY1.isoformat()), report
    assert_marts_equal_reference(stack)


def _job_processes(day):
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(part.endswith("jobs/commerce/marts/job") or part.endswith("jobs/commerce/marts/main.py")
               for part in cmdline) and day.isoformat() in cmdline:
            found.append(proc)
    return found


def test_day2_a_killed_spark_job_is_retried_and_the_marts_equal_the_recomputation(stack):
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
    assert dag_run_state(stack, DAY2) == "success", output[-8000:]
    assert task_states(stack, DAY2)["submit_spark_job"] == ("success", 2), output[-8000:]
    assert "was killed by SIGKILL" in output or "killed by SIGKILL" in "".join(
        p.read_text(errors="replace") for p in pathlib.Path(stack["home"], "logs").rglob("*.log"))
    assert query(stack, "SELECT count(*) FROM mart.job_run WHERE event_date = %s AND status = 'SUCCEEDED'",
                 DAY2)[0][0] == 1  # the killed attempt wrote nothing
    assert_run_log_matches(stack, DAY2, recompute(stack, DAY2))
    assert_marts_equal_reference(stack)


def test_day3_bad_lines_end_in_rejects_and_the_valid_data_equals_the_recomputation(stack):
    output = finish(start_dag_test(stack, DAY3, "dags-test-day3.log"))
    assert dag_run_state(stack, DAY3) == "success", output[-8000:]
    assert task_states(stack, DAY3)["check_quality"][0] == "success", output[-8000:]
    folder = "%s/dt=%s" % (RAW, DAY3.isoformat())
    manifest = json.loads(stack["webhdfs"].read(folder + "/_SUCCESS"))
    extra_file = stack["hdfs_url"] + folder + "/" + manifest["parts"][-1]["name"]
    assert manifest["extra_lines"] == len(BAD_PART)
    got = query(stack, "SELECT line_number, reason FROM mart.rejected_line WHERE event_date = %s AND source_file = %s "
                       "ORDER BY line_number", DAY3, extra_file)
    assert got == [(number, reason) for number, (_, reason) in enumerate(BAD_PART, start=1) if reason], got
    assert_run_log_matches(stack, DAY3, recompute(stack, DAY3))
    # The valid lines of the bad file are in the marts: one order counted once, in its first session.
    assert query(stack, "SELECT order_count, gross_amount_minor FROM mart.customer_daily_order "
                        "WHERE order_date = %s AND user_id = 'extra-user'", DAY3) == [(1, 4999)]
    assert sorted(query(stack, "SELECT funnel_stage, order_total_amount_minor FROM mart.session_summary "
                               "WHERE event_date = %s AND anonymous_id = 'extra-anon'", DAY3)) == [
        ("FUNNEL_STAGE_PURCHASE", 4999), ("FUNNEL_STAGE_VISIT", None)]
    assert_marts_equal_reference(stack)


def test_day2_run_again_after_day3_changes_nothing(stack):
    before = mart_rows(stack)
    output = finish(start_dag_test(stack, DAY2, "dags-test-day2-again.log"))
    assert dag_run_state(stack, DAY2) == "success", output[-8000:]
    assert task_states(stack, DAY2)["submit_spark_job"] == ("success", 1)
    recompute(stack, DAY2)
    after = assert_marts_equal_reference(stack)
    for table in reference.TABLES:
        assert sorted(after[table], key=repr) == sorted(before[table], key=repr), table
    runs = query(stack, "SELECT count(*) FROM mart.job_run WHERE event_date = %s AND status = 'SUCCEEDED'", DAY2)
    assert runs[0][0] == 2
