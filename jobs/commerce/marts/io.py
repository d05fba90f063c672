"""Sources and sinks of the commerce marts job: the Spark session, the raw partition, PostgreSQL.

The raw partition is read by Spark itself (hdfs:// or file://, gzip decoded by extension). The
marts are small, so they are collected to this process and written to PostgreSQL with psycopg
in ONE transaction: delete the day's rows of every table, COPY the new rows, append the run log
row; a failure anywhere rolls all of it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import socket
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import psycopg
from psycopg import sql
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs.commerce.marts import transform
from jobs.commerce.marts.config import JobConfig

SCHEMA = "mart"
JOB_NAME = "commerce_marts"
# pg_advisory_xact_lock(key1, key2): key1 names this job ("dpma"), key2 is the day's ordinal, so
# two runs of one day queue while runs of different days do not.
_LOCK_CLASS = int.from_bytes(b"dpma", "big")

# Column order of every table as the job writes it (generated columns are left out).
TABLE_COLUMNS: Dict[str, Tuple[str, ...]] = {
    "daily_category_revenue": (
        "event_date", "category", "order_count", "units_sold", "gross_revenue_amount_minor",
        "gross_revenue_currency_code", "refunded_amount_minor", "refunded_currency_code",
        "net_revenue_amount_minor", "net_revenue_currency_code"),
    "daily_funnel_step": (
        "event_date", "stage", "stage_number", "session_count", "visitor_count", "conversion_rate_from_previous"),
    "daily_top_product": (
        "event_date", "rank", "product_id", "product_name", "category", "units_sold", "revenue_amount_minor",
        "revenue_currency_code", "view_count"),
    "cohort_retention": (
        "cohort_period", "cohort_start_date", "period_offset", "cohort_size", "retained_count", "retention_rate",
        "activity_period_start_date"),
    "customer_rfm": (
        "as_of_date", "user_id", "recency_days", "order_count", "monetary_amount_minor", "monetary_currency_code",
        "recency_score", "frequency_score", "monetary_score", "segment"),
    "session_summary": (
        "session_id", "event_date", "user_id", "anonymous_id", "session_start_time", "session_end_time",
        "event_count", "page_view_count", "product_view_count", "funnel_stage", "converted",
        "order_total_amount_minor", "order_total_currency_code"),
    "daily_customer_type": (
        "event_date", "customer_type", "currency_code", "customer_count", "order_count", "gross_revenue_amount_minor"),
    "customer_daily_order": (
        "order_date", "user_id", "currency_code", "order_count", "gross_amount_minor", "refunded_amount_minor"),
    "rejected_line": (
        "event_date", "source_file", "line_number", "reason", "detail", "raw_line", "raw_line_truncated"),
}


class SourceError(RuntimeError):
    """The raw partition cannot be read; the message names it and says what to check."""


class SinkError(RuntimeError):
    """PostgreSQL refused the write; nothing of this run was committed."""


# --- Spark ---------------------------------------------------------------------------------------

def spark_session(config: JobConfig) -> SparkSession:
    """A Spark Connect session (--spark-remote) or a Spark driver in this process (--spark-master)."""
    if config.spark_remote:
        host, _, port = config.spark_remote[len("sc://"):].split("/")[0].split(";")[0].partition(":")
        try:
            socket.create_connection((host, int(port or 15002)), timeout=5).close()
        except (OSError, ValueError) as err:
            raise SourceError("no Spark Connect server at %s (%s); start one: bazel run "
                              "//deploy/spark:connect_server" % (config.spark_remote, err)) from None
        session = SparkSession.builder.remote(config.spark_remote).getOrCreate()
    elif config.spark_master is None:
        # Started by spark-submit: its master, memory and executors stand (a builder setting here
        # would override them).
        session = SparkSession.builder.appName("commerce-marts").getOrCreate()
    else:
        session = (SparkSession.builder.master(config.spark_master).appName("commerce-marts")
                   .config("spark.driver.memory", config.driver_memory)
                   .config("spark.ui.enabled", "false")
                   .config("spark.sql.shuffle.partitions", "4")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .getOrCreate())
    # Runtime settings, allowed over Spark Connect too.
    session.conf.set("spark.sql.session.timeZone", "UTC")
    return session


@contextlib.contextmanager
def whole_stage_codegen(spark: SparkSession, enabled: bool):
    """Whole-stage code generation on or off for the queries run inside; restored after."""
    key = "spark.sql.codegen.wholeStage"
    before = spark.conf.get(key, "true")
    spark.conf.set(key, "true" if enabled else "false")
    try:
        yield
    finally:
        spark.conf.set(key, before)


def read_raw_lines(spark: SparkSession, partition_path: str, require_success: bool = True) -> DataFrame:
    """The partition's lines as (source_file, line_number, value); line numbers count from 1.

    A line's number is its position in its file: Spark reads each split of a file in order in
    one task, so within a split the row ids are consecutive; the lines of earlier splits of the
    same file (by `_metadata.file_block_start`) are added. Gzip files are never split.
    """
    if require_success:
        try:
            spark.read.text(partition_path + "/_SUCCESS").limit(1).collect()
        except Exception as err:
            raise SourceError(
                "partition %s is not complete: no _SUCCESS marker (%s); wait for the producer or pass "
                "--allow-incomplete" % (partition_path, _first_line(err))) from err
    try:
        raw = spark.read.format("text").load(partition_path + "/part-*")
        with_ids = raw.select(
            F.col("_metadata.file_path").alias("source_file"),
            F.col("_metadata.file_block_start").alias("block_start"),
            F.monotonically_increasing_id().alias("row_id"),
            "value",
        )
        blocks = with_ids.groupBy("source_file", "block_start").agg(
            F.min("row_id").alias("first_row"), F.count(F.lit(1)).alias("n"))
        before = F.sum("n").over(Window.partitionBy("source_file").orderBy("block_start")
                                 .rowsBetween(Window.unboundedPreceding, -1))
        blocks = blocks.select("source_file", "block_start", "first_row",
                               F.coalesce(before, F.lit(0)).alias("lines_before"))
        lines = with_ids.join(F.broadcast(blocks), ["source_file", "block_start"]).select(
            "source_file",
            (F.col("row_id") - F.col("first_row") + F.col("lines_before") + 1).alias("line_number"),
            "value",
        )
        lines.schema  # resolve now: a missing path fails here, with its name
    except Exception as err:
        raise SourceError("cannot read %s/part-*: %s" % (partition_path, _first_line(err))) from err
    return lines


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def collect_rows(frame: DataFrame, columns: Sequence[str]) -> List[tuple]:
    return [tuple(row[c] for c in columns) for row in frame.select(*columns).collect()]


# --- PostgreSQL ----------------------------------------------------------------------------------

def read_customer_history(dsn: str, day: datetime.date) -> List[tuple]:
    """mart.customer_daily_order rows a run of `day` needs: every day up to the end of its week
    except `day` itself (that one the run computes)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT order_date, user_id, currency_code, order_count, gross_amount_minor, refunded_amount_minor "
            "FROM mart.customer_daily_order WHERE order_date <= %s AND order_date <> %s",
            (transform.week_end(day), day),
        ).fetchall()


def _delete_statements(day: datetime.date) -> List[Tuple[sql.Composed, tuple]]:
    by_event_date = ("daily_category_revenue", "daily_funnel_step", "daily_top_product", "session_summary",
                     "daily_customer_type", "rejected_line")
    statements = [
        (sql.SQL("DELETE FROM {}.{} WHERE event_date = %s").format(sql.Identifier(SCHEMA), sql.Identifier(t)), (day,))
        for t in by_event_date
    ]
    statements.append((sql.SQL("DELETE FROM mart.customer_daily_order WHERE order_date = %s"), (day,)))
    statements.append((sql.SQL("DELETE FROM mart.customer_rfm WHERE as_of_date = %s"), (day,)))
    statements.append((
        sql.SQL("DELETE FROM mart.cohort_retention WHERE (cohort_period = 'COHORT_PERIOD_DAY' AND "
                "activity_period_start_date = %s) OR (cohort_period = 'COHORT_PERIOD_WEEK' AND "
                "activity_period_start_date = %s)"),
        (day, transform.week_start(day)),
    ))
    return statements


@dataclasses.dataclass(frozen=True)
class RunRecord:
    run_id: str
    started_at: datetime.datetime
    raw_root: str
    spark: str


def write_day(dsn: str, day: datetime.date, tables: Mapping[str, List[tuple]], run: RunRecord,
              summary: Mapping) -> None:
    """Replaces `day` in every mart table and logs the run, in one transaction."""
    unknown = set(tables) - set(TABLE_COLUMNS)
    if unknown:
        raise SinkError("no such mart table(s): %s" % ", ".join(sorted(unknown)))
    try:
        with psycopg.connect(dsn) as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", (_LOCK_CLASS, day.toordinal()))
                for statement, params in _delete_statements(day):
                    conn.execute(statement, params)
                with conn.cursor() as cur:
                    for table, rows in tables.items():
                        columns = TABLE_COLUMNS[table]
                        copy_sql = sql.SQL("COPY {}.{} ({}) FROM STDIN").format(
                            sql.Identifier(SCHEMA), sql.Identifier(table),
                            sql.SQL(", ").join(map(sql.Identifier, columns)))
                        with cur.copy(copy_sql) as copy:
                            for row in rows:
                                copy.write_row(row)
                _insert_run(conn, day, run, "SUCCEEDED", summary, None)
    except psycopg.Error as err:
        raise SinkError("writing day %s to PostgreSQL failed, nothing was committed: %s"
                        % (day, str(err).strip())) from err


def _insert_run(conn: psycopg.Connection, day: datetime.date, run: RunRecord, status: str,
                summary: Optional[Mapping], error: Optional[str]) -> None:
    summary = summary or {}
    conn.execute(
        "INSERT INTO mart.job_run (run_id, job, event_date, status, started_at, finished_at, raw_root, spark, "
        "raw_lines, valid_events, rejected_lines, table_rows, summary, error) "
        "VALUES (%s, %s, %s, %s, %s, now(), %s, %s, %s, %s, %s, %s, %s, %s)",
        (run.run_id, JOB_NAME, day, status, run.started_at, run.raw_root, run.spark,
         summary.get("raw_lines"), summary.get("valid_events"), summary.get("rejected_lines"),
         json.dumps(summary.get("rows")) if summary.get("rows") is not None else None,
         json.dumps(summary) if summary else None, error),
    )


def log_failure(dsn: str, day: datetime.date, run: RunRecord, error: str) -> bool:
    """Best effort: a FAILED row in mart.job_run; False when the database is unreachable too."""
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            _insert_run(conn, day, run, "FAILED", None, error[:4000])
        return True
    except psycopg.Error:
        return False
