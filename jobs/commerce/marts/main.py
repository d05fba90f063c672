"""Commerce marts job: one day of raw shop events -> every mart of that day in PostgreSQL.

    bazel run //jobs/commerce/marts:job -- --help

Wiring only: config, Spark session, read and validate the partition, compute the marts
(transform.py), collect them, write them in one transaction (io.py), print the JSON summary as
the last stdout line. Exit 0 on success, 1 on a failure of the run (message on stderr, a FAILED
row in mart.job_run when the database is reachable), 2 on bad arguments.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import logging
import signal
import sys
import time
import uuid
from typing import Dict, Optional, Sequence

from jobs.commerce.marts import config as job_config
from jobs.commerce.marts import io, transform

LOG = logging.getLogger("commerce_marts")


def _progress(message: str, *args) -> None:
    LOG.info(message, *args)


def _revenue_by_currency(rows, amount_index: int, currency_index: int) -> Dict[str, int]:
    totals: Dict[str, int] = {}
    for row in rows:
        totals[row[currency_index]] = totals.get(row[currency_index], 0) + int(row[amount_index])
    return dict(sorted(totals.items()))


def run(cfg: job_config.JobConfig, run_record: io.RunRecord, require_success: bool = True) -> dict:
    """Computes and writes one day; returns the summary. Raises on any failure (nothing committed)."""
    began = time.monotonic()
    spark = io.spark_session(cfg)
    try:
        _progress("event=reading partition=%s spark=%s", cfg.partition_path, cfg.spark_target)
        lines = io.read_raw_lines(spark, cfg.partition_path, require_success)
        # Every line is parsed and checked once: the checked lines (narrow typed columns, raw text
        # of rejected lines only) are kept by Spark, and events and rejects are read from there.
        checked = transform.validate_lines(lines, cfg.day).persist()
        try:
            with io.whole_stage_codegen(spark, cfg.parse_whole_stage_codegen):
                line_count = checked.count()
            events = transform.valid_events(checked)
            reject_rows = io.collect_rows(transform.rejected_lines(checked), transform.REJECT_COLUMNS)
            valid_events = line_count - len(reject_rows)
            _progress("event=parsed lines=%d valid_events=%d rejected_lines=%d", line_count, valid_events,
                      len(reject_rows))

            history_rows = io.read_customer_history(cfg.postgres_dsn, cfg.day)
            history = spark.createDataFrame(history_rows, transform.CUSTOMER_HISTORY_SCHEMA)
            marts = transform.all_marts(events, history, cfg.day, cfg.top_products)
            tables = {}

            def collect(name):
                rows = io.collect_rows(marts[name], io.TABLE_COLUMNS[name])
                _progress("event=computed table=mart.%s rows=%d", name, len(rows))
                return name, rows

            # Independent queries over the cached events: planning and code generation of one
            # overlaps the execution of another.
            with concurrent.futures.ThreadPoolExecutor(max_workers=cfg.parallel_queries) as pool:
                for name, rows in pool.map(collect, list(marts)):
                    tables[name] = rows
        finally:
            checked.unpersist()
        tables["rejected_line"] = [(cfg.day,) + row for row in reject_rows]

        revenue = tables["daily_category_revenue"]
        columns = io.TABLE_COLUMNS["daily_category_revenue"]
        reasons: Dict[str, int] = {}
        for row in reject_rows:
            reasons[row[2]] = reasons.get(row[2], 0) + 1
        summary = {
            "day": cfg.day.isoformat(),
            "run_id": run_record.run_id,
            "raw_lines": valid_events + len(reject_rows),
            "valid_events": valid_events,
            "rejected_lines": len(reject_rows),
            "rejected_by_reason": dict(sorted(reasons.items())),
            "rows": {name: len(rows) for name, rows in sorted(tables.items())},
            "gross_revenue_minor": _revenue_by_currency(
                revenue, columns.index("gross_revenue_amount_minor"), columns.index("gross_revenue_currency_code")),
            "net_revenue_minor": _revenue_by_currency(
                revenue, columns.index("net_revenue_amount_minor"), columns.index("net_revenue_currency_code")),
            "spark": cfg.spark_target,
            "seconds": round(time.monotonic() - began, 1),
        }
        io.write_day(cfg.postgres_dsn, cfg.day, tables, run_record, summary)
        _progress("event=written day=%s tables=%d seconds=%.1f", cfg.day, len(tables), time.monotonic() - began)
        return summary
    finally:
        spark.stop()


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    require_success = "--allow-incomplete" not in argv
    argv = [a for a in argv if a != "--allow-incomplete"]
    if "-h" in argv or "--help" in argv:
        job_config.build_parser().print_help()
        print("  --allow-incomplete    read the partition even without its _SUCCESS marker")
        return 0
    cfg = job_config.parse_config(argv)

    def on_term(signum, _frame):
        # Nothing is committed before the single final transaction: stopping here loses nothing.
        raise SystemExit("commerce marts job for %s stopped by %s before committing; nothing was written"
                         % (cfg.day, signal.Signals(signum).name))

    signal.signal(signal.SIGTERM, on_term)
    run_record = io.RunRecord(
        run_id=str(uuid.uuid4()),
        started_at=datetime.datetime.now(datetime.timezone.utc),
        raw_root=cfg.raw_root,
        spark=cfg.spark_target,
    )
    try:
        summary = run(cfg, run_record, require_success)
    except (io.SourceError, io.SinkError) as err:
        print("commerce marts job for %s failed: %s" % (cfg.day, err), file=sys.stderr)
        io.log_failure(cfg.postgres_dsn, cfg.day, run_record, str(err))
        return 1
    except SystemExit:
        raise
    except Exception as err:  # Spark or anything else: say what, keep the trace in the log
        LOG.exception("event=failed day=%s", cfg.day)
        print("commerce marts job for %s failed (%s): %s" % (cfg.day, type(err).__name__, str(err).strip()[:2000]),
              file=sys.stderr)
        io.log_failure(cfg.postgres_dsn, cfg.day, run_record, "%s: %s" % (type(err).__name__, err))
        return 1
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
