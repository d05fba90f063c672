"""Settings of one run of the commerce marts job: flags and environment, checked up front."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
from typing import Optional, Sequence

DEFAULT_RAW_ROOT = "hdfs://127.0.0.1:8020/raw/commerce/events"
DEFAULT_SPARK_MASTER = "local[2]"
SUBMITTED = "spark-submit"  # spark_target when spark-submit chose the master (no flag overrides it)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it and says what to pass."""


@dataclasses.dataclass(frozen=True)
class JobConfig:
    day: datetime.date
    raw_root: str
    postgres_dsn: str
    spark_remote: Optional[str] = None
    spark_master: Optional[str] = None
    top_products: int = 10
    driver_memory: str = "1g"
    parallel_queries: int = 3
    # Spark's whole-stage code generation for the parse-and-validate step. Off by default: that
    # step is one very wide projection (the contract's nested schema, ~30 checks, array lambdas)
    # and ran 2.5-3x slower with it on (measured: 1M lines, local[2]); the marts keep it.
    parse_whole_stage_codegen: bool = False

    @property
    def partition_path(self) -> str:
        return "%s/dt=%s" % (self.raw_root.rstrip("/"), self.day.isoformat())

    @property
    def spark_target(self) -> str:
        return self.spark_remote or self.spark_master or SUBMITTED


def launched_by_spark_submit() -> bool:
    """spark-submit (a cluster's, the Spark Operator's) starts the Python driver with the JVM
    gateway already up and the master, memory and executors in its configuration."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT"))


def _day(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("want a day as YYYY-MM-DD, got %r" % text) from None


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="job",
        description="Commerce marts: read one daily raw partition of shop events (gzip JSON lines), validate "
                    "every line against the CommerceEvent contract, compute the marts and replace that day "
                    "in PostgreSQL schema `mart` in one transaction. The last stdout line is a JSON summary.",
        epilog="Example: bazel run //jobs/commerce/marts:job -- --day 2026-11-20 "
               "--raw-root hdfs://127.0.0.1:8020/raw/commerce/events "
               "--postgres-dsn 'host=127.0.0.1 port=5432 dbname=datapipelines user=dp_app password=...' "
               "--spark-remote sc://127.0.0.1:15002   (exit 0 on success; see jobs/commerce/README.md)",
    )
    parser.add_argument("--day", type=_day, default=_day(env["DP_COMMERCE_DAY"]) if env.get("DP_COMMERCE_DAY") else None,
                        help="the UTC day (partition dt=YYYY-MM-DD) to process [env DP_COMMERCE_DAY, required]")
    parser.add_argument("--raw-root", default=env.get("DP_COMMERCE_RAW_ROOT", DEFAULT_RAW_ROOT),
                        help="folder holding dt=YYYY-MM-DD/part-*.jsonl[.gz]: hdfs://HOST:PORT/PATH or "
                             "file:///PATH [env DP_COMMERCE_RAW_ROOT, default %s]" % DEFAULT_RAW_ROOT)
    parser.add_argument("--postgres-dsn", default=env.get("DP_COMMERCE_POSTGRES_DSN") or env.get("DP_POSTGRES_DSN"),
                        help="libpq DSN of the database with schema `mart` (migration 0002), a role that may "
                             "write it (dp_app) [env DP_COMMERCE_POSTGRES_DSN or DP_POSTGRES_DSN, required]")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--spark-remote", default=env.get("DP_SPARK_REMOTE"),
                        help="Spark Connect server, sc://HOST:PORT (bazel run //deploy/spark:connect_server) "
                             "[env DP_SPARK_REMOTE]")
    target.add_argument("--spark-master", default=None,
                        help="run Spark in this process instead: local[N] or spark://HOST:PORT "
                             "[env DP_SPARK_MASTER, default %s when no remote is set; under spark-submit "
                             "the submitted master]" % DEFAULT_SPARK_MASTER)
    parser.add_argument("--top-products", type=int, default=int(env.get("DP_COMMERCE_TOP_PRODUCTS", "10")),
                        help="rows per day and currency in mart.daily_top_product [env DP_COMMERCE_TOP_PRODUCTS, 10]")
    parser.add_argument("--parallel-queries", type=int, default=int(env.get("DP_COMMERCE_PARALLEL_QUERIES", "3")),
                        help="mart queries submitted at once [env DP_COMMERCE_PARALLEL_QUERIES, 3]")
    parser.add_argument("--parse-whole-stage-codegen", action=argparse.BooleanOptionalAction,
                        default=env.get("DP_COMMERCE_PARSE_WHOLE_STAGE_CODEGEN", "0") == "1",
                        help="Spark whole-stage code generation while parsing and validating the lines; off "
                             "by default because it made that step 2.5-3x slower (the marts keep it on) "
                             "[env DP_COMMERCE_PARSE_WHOLE_STAGE_CODEGEN=1]")
    parser.add_argument("--driver-memory", default=env.get("DP_SPARK_DRIVER_MEMORY", "1g"),
                        help="driver heap with --spark-master [env DP_SPARK_DRIVER_MEMORY, 1g]")
    return parser


def parse_config(argv: Optional[Sequence[str]] = None) -> JobConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.day is None:
        parser.error("no day: pass --day YYYY-MM-DD or set DP_COMMERCE_DAY")
    if not args.postgres_dsn:
        parser.error("no database: pass --postgres-dsn or set DP_COMMERCE_POSTGRES_DSN "
                     "(start one: bazel run //deploy/postgres:server)")
    if not re.match(r"^(hdfs|file|webhdfs)://", args.raw_root):
        parser.error("--raw-root %r: want hdfs://HOST:PORT/PATH or file:///PATH" % args.raw_root)
    if args.spark_remote and not args.spark_remote.startswith("sc://"):
        parser.error("--spark-remote %r: want sc://HOST:PORT" % args.spark_remote)
    master = args.spark_master
    if not args.spark_remote and not master:
        master = os.environ.get("DP_SPARK_MASTER") or (None if launched_by_spark_submit() else DEFAULT_SPARK_MASTER)
    if master and not re.fullmatch(r"local(\[(\d+|\*)\])?|spark://\S+", master):
        parser.error("--spark-master %r: want local[N] or spark://HOST:PORT" % master)
    if args.top_products < 1:
        parser.error("--top-products must be at least 1")
    if args.parallel_queries < 1:
        parser.error("--parallel-queries must be at least 1")
    return JobConfig(
        day=args.day,
        raw_root=args.raw_root,
        postgres_dsn=args.postgres_dsn,
        spark_remote=args.spark_remote,
        spark_master=None if args.spark_remote else master,
        top_products=args.top_products,
        driver_memory=args.driver_memory,
        parallel_queries=args.parallel_queries,
        parse_whole_stage_codegen=args.parse_whole_stage_codegen,
    )
