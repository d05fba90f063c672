"""What each task of the commerce_daily DAG does; the DAG file only wires these together.

Every function takes the day ("YYYY-MM-DD", Airflow's `ds`) and a `RuntimeSettings`, and is
idempotent over that day: waiting reads, the Spark job replaces the day atomically, checks
read, publishing upserts one row, the dashboard refresh only invalidates and re-warms caches.
Errors say what failed, for which day and service, and what to do; errors that a retry cannot
fix (bad configuration) raise `PermanentError` so the task fails without retrying.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pathlib
import signal
import subprocess
import threading
import time
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence

from deploy.hdfs.webhdfs import WebHdfsClient, WebHdfsError
from jobs.commerce.dags import checks
from jobs.commerce.dags.settings import RuntimeSettings, redact_dsn

LOG = logging.getLogger("commerce_daily")

SUCCESS_MARKER = "_SUCCESS"
DATA_FILE_PREFIX = "part-"
PUBLISHED_TABLE = "mart.published_day"
# Environment a child py_binary must not inherit from this process: it would find our
# runfiles and our Python path instead of its own.
CHILD_ENV_DROP = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE",
                  "RUNFILES_MANIFEST_ONLY", "JAVA_RUNFILES", "PYTHON_RUNFILES")
JOB_USAGE_EXIT = 2  # argparse: the job refused its arguments; a retry cannot help
OUTPUT_TAIL_LINES = 30


class TaskError(RuntimeError):
    """A task failed in a way a retry may fix (a service down, a killed job)."""


class PermanentError(RuntimeError):
    """A task failed in a way a retry cannot fix (configuration, a data-quality failure)."""


# --- wait for the partition ----------------------------------------------------------------------

def partition_ready(day: str, settings: RuntimeSettings, client: Optional[WebHdfsClient] = None) -> bool:
    """True once <raw root>/dt=<day>/_SUCCESS exists (the writer puts it there last).

    WebHDFS being unreachable counts as "not yet", logged with the address, so a short
    HDFS restart does not fail the run; the sensor's timeout ends the wait.
    """
    client = client or WebHdfsClient(settings.webhdfs_url)
    marker = "%s/%s" % (settings.partition_path(day), SUCCESS_MARKER)
    try:
        status = client.status(marker)
    except (WebHdfsError, OSError) as err:
        LOG.warning("event=webhdfs_unreachable url=%s marker=%s error=%s", settings.webhdfs_url, marker, err)
        return False
    if status is None:
        LOG.info("event=partition_not_ready day=%s marker=%s webhdfs=%s", day, marker, settings.webhdfs_url)
        return False
    LOG.info("event=partition_ready day=%s marker=%s", day, marker)
    return True


def data_files(client: WebHdfsClient, partition: str) -> List[Dict]:
    """The partition's data files, `part-*`: what the job reads (jobs/commerce/marts/io.py)."""
    try:
        entries = client.list(partition)
    except WebHdfsError as err:
        raise TaskError("cannot list the raw partition %s: %s" % (partition, err)) from None
    return [e for e in entries if e.get("type") == "FILE" and e["pathSuffix"].startswith(DATA_FILE_PREFIX)]


# --- run the Spark job ---------------------------------------------------------------------------

def job_command(day: str, settings: RuntimeSettings) -> List[str]:
    if not settings.job_launcher:
        raise PermanentError(
            "DP_COMMERCE_JOB is not set: it must name the launcher of the commerce marts job "
            "(bazel-bin/jobs/commerce/marts/job); `bazel run //deploy/airflow:standalone` sets it")
    if not os.access(settings.job_launcher, os.X_OK):
        raise PermanentError("DP_COMMERCE_JOB=%s is not an executable file (build it: bazel build "
                             "//jobs/commerce/marts:job)" % settings.job_launcher)
    return [settings.job_launcher, "--day", day, "--raw-root", settings.raw_root,
            "--spark-remote", settings.spark_remote]


def child_env(settings: RuntimeSettings, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The job's environment: ours without Python/runfiles paths, plus the DSN (kept off argv)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in CHILD_ENV_DROP}
    env["DP_COMMERCE_POSTGRES_DSN"] = settings.postgres_dsn
    return env


def _pump(stream, sink: Deque[str], log: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        sink.append(line)
        log(line)
    stream.close()


def _die_with_parent() -> None:
    """In the child: SIGKILL when the task process dies, so a killed task never leaves a job behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def parse_summary(stdout_tail: Sequence[str]) -> Dict:
    """The job's JSON summary: its last non-empty stdout line."""
    for line in reversed(stdout_tail):
        if line.strip():
            try:
                summary = json.loads(line)
            except ValueError:
                break
            if isinstance(summary, dict):
                return summary
            break
    raise TaskError("the job exited 0 but its last stdout line is not the JSON summary: %r"
                    % (stdout_tail[-1] if stdout_tail else ""))


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return "was killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "was killed by signal %d" % -code
    return "exited with %d" % code


def run_spark_job(day: str, settings: RuntimeSettings, on_start: Optional[Callable[[int], None]] = None) -> Dict:
    """Run the marts job for `day` through the Spark Connect server; its JSON summary.

    The job is a child process in its own process group: if this task is stopped (timeout,
    mark-failed, SIGTERM) the group is terminated; if the task process dies outright, the
    kernel kills the job (parent-death signal). A killed or failed job raises TaskError and
    Airflow retries the task; the job replaces the day in one transaction, so a retry starts
    from a clean slate.
    """
    argv = job_command(day, settings)
    env = child_env(settings)
    LOG.info("event=job_start day=%s argv=%s dsn=%s", day, " ".join(argv), redact_dsn(settings.postgres_dsn))
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent)
    if on_start:
        on_start(process.pid)
    stdout: Deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
    stderr: Deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
    pumps = [
        threading.Thread(target=_pump, args=(process.stdout, stdout, lambda l: LOG.info("job| %s", l)), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, stderr, lambda l: LOG.info("job! %s", l)), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    try:
        code = process.wait()
    finally:
        _stop_group(process)
        for pump in pumps:
            pump.join(10)
    seconds = time.monotonic() - started
    if code != 0:
        message = "spark job for %s %s after %.1f s (spark %s). Last output lines:\n%s" % (
            day, describe_exit(code), seconds, settings.spark_remote, "\n".join(list(stderr)[-15:] + list(stdout)[-5:]))
        if code == JOB_USAGE_EXIT:
            raise PermanentError(message)
        raise TaskError(message)
    summary = parse_summary(list(stdout))
    LOG.info("event=job_done day=%s seconds=%.1f summary=%s", day, seconds, json.dumps(summary, sort_keys=True))
    return summary


# --- data quality --------------------------------------------------------------------------------

def _connect(settings: RuntimeSettings):
    import psycopg

    try:
        return psycopg.connect(settings.postgres_dsn, connect_timeout=15)
    except psycopg.OperationalError as err:
        raise TaskError("cannot connect to PostgreSQL (%s): %s" % (redact_dsn(settings.postgres_dsn),
                                                                  str(err).strip())) from None


def _rows(conn, sql: str, params: Sequence) -> List[Dict]:
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def latest_job_run(conn, day: str, run_id: Optional[str]) -> checks.JobRun:
    where = "event_date = %s AND status = 'SUCCEEDED'" + (" AND run_id = %s" if run_id else "")
    params = [day] + ([run_id] if run_id else [])
    rows = _rows(conn, "SELECT run_id::text AS run_id, raw_lines, valid_events, rejected_lines, table_rows "
                       "FROM mart.job_run WHERE " + where + " ORDER BY finished_at DESC LIMIT 1", params)
    if not rows:
        raise PermanentError("mart.job_run has no successful run for %s%s: the marts of that day were not "
                             "written by the job" % (day, " with run_id %s" % run_id if run_id else ""))
    row = rows[0]
    table_rows = row["table_rows"] or {}
    return checks.JobRun(
        run_id=row["run_id"],
        raw_lines=int(row["raw_lines"] or 0),
        valid_events=int(row["valid_events"] or 0),
        rejected_lines=int(row["rejected_lines"] or 0),
        table_rows={k: int(v) for k, v in table_rows.items() if isinstance(v, (int, float, str)) and str(v).isdigit()},
    )


def mart_counts(conn, day: str) -> Dict[str, int]:
    counts = {}
    for table, column in sorted(checks.DAY_COLUMN_BY_TABLE.items()):
        counts[table] = _rows(conn, "SELECT count(*) AS n FROM mart.%s WHERE %s = %%s" % (table, column), [day])[0]["n"]
    return counts


def raw_totals(client: WebHdfsClient, partition: str, rejected: set) -> checks.RawTotals:
    totals = checks.RawTotals()
    orders: Dict = {}
    for entry in data_files(client, partition):
        path = "%s/%s" % (partition, entry["pathSuffix"])
        try:
            data = client.read(path)
        except WebHdfsError as err:
            raise TaskError("cannot read %s over WebHDFS: %s" % (path, err)) from None
        checks.scan_raw_file(path, checks.split_lines(data, path), rejected, totals, orders)
    return checks.finish_raw_totals(totals, orders)


def check_quality(day: str, settings: RuntimeSettings, run_id: Optional[str] = None,
                  client: Optional[WebHdfsClient] = None) -> Dict[str, str]:
    """All data-quality checks of `day` against the job's run `run_id` (default: the latest
    successful one). {"job_run_id", "report"} when they pass; PermanentError naming each failure."""
    client = client or WebHdfsClient(settings.webhdfs_url)
    with _connect(settings) as conn:
        run = latest_job_run(conn, day, run_id)
        counts = mart_counts(conn, day)
        rejected = {(pathlib.PurePosixPath(r["source_file"]).name, int(r["line_number"])) for r in _rows(
            conn, "SELECT source_file, line_number FROM mart.rejected_line WHERE event_date = %s", [day])}
        categories = _rows(conn, "SELECT category, currency_code, gross_revenue_amount_minor, refunded_amount_minor, "
                                 "net_revenue_amount_minor FROM mart.daily_category_revenue WHERE event_date = %s", [day])
        top = _rows(conn, "SELECT product_id, currency_code, revenue_amount_minor FROM mart.daily_top_product "
                          "WHERE event_date = %s", [day])
        customer_types = _rows(conn, "SELECT customer_type, currency_code, gross_revenue_amount_minor "
                                     "FROM mart.daily_customer_type WHERE event_date = %s", [day])
        funnel = _rows(conn, "SELECT stage, session_count, visitor_count, conversion_rate_from_previous "
                             "FROM mart.daily_funnel_step WHERE event_date = %s", [day])
    raw = raw_totals(client, settings.partition_path(day), rejected)
    results = [
        checks.check_row_counts(run, raw, counts),
        checks.check_no_negative_revenue(categories, top, customer_types),
        checks.check_funnel_monotone(funnel),
        checks.check_revenue_reconciles(categories, raw, top),
    ]
    text = checks.report(day, results)
    for line in text.splitlines():
        LOG.info("dq| %s", line)
    if checks.failures(results):
        raise PermanentError(text)
    return {"job_run_id": run.run_id, "report": text}


# --- publish -------------------------------------------------------------------------------------

def ensure_published_table(conn) -> None:
    """Fails clearly when mart.published_day is missing: migration 0003 of deploy/postgres creates it."""
    if not _rows(conn, "SELECT to_regclass(%s) IS NOT NULL AS present", [PUBLISHED_TABLE])[0]["present"]:
        raise PermanentError(
            "table %s does not exist: apply the PostgreSQL migrations (bazel run //deploy/postgres:migrate, "
            "migration 0003_commerce_published_day)" % PUBLISHED_TABLE)


def publish(day: str, settings: RuntimeSettings, run_id: str, dag_run_id: str, quality_report: str) -> None:
    """Marks `day` published (the dashboards show published days only); re-running updates the row."""
    with _connect(settings) as conn:
        ensure_published_table(conn)
        with conn.transaction():
            conn.execute(
                "INSERT INTO mart.published_day (event_date, job_run_id, dag_run_id, published_at, quality_report) "
                "VALUES (%s, %s, %s, now(), %s) ON CONFLICT (event_date) DO UPDATE SET "
                "job_run_id = EXCLUDED.job_run_id, dag_run_id = EXCLUDED.dag_run_id, "
                "published_at = EXCLUDED.published_at, quality_report = EXCLUDED.quality_report",
                [day, run_id, dag_run_id, quality_report])
    LOG.info("event=published day=%s job_run_id=%s dag_run_id=%s", day, run_id, dag_run_id)


# --- dashboards ----------------------------------------------------------------------------------

def refresh_dashboards(day: str, settings: RuntimeSettings) -> Optional[str]:
    """Invalidate and warm the Superset charts on schema mart; None when no Superset is configured."""
    if not settings.superset_url:
        return None
    from jobs.commerce.dags.superset import SupersetClient, SupersetError, SupersetLoginError

    client = SupersetClient(settings.superset_url, settings.superset_user, settings.superset_password)
    try:
        report = client.refresh()
    except SupersetLoginError as err:  # a wrong or missing password: retrying cannot help
        raise PermanentError("refreshing the dashboards for %s failed: %s" % (day, err)) from None
    except SupersetError as err:  # Superset down or failing: a retry may find it back
        raise TaskError("refreshing the dashboards for %s failed: %s" % (day, err)) from None
    if report.chart_errors:
        raise TaskError("refreshing the dashboards for %s: %s" % (day, report.describe()))
    LOG.info("event=dashboards_refreshed day=%s %s", day, report.describe())
    return report.describe()
