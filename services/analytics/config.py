"""Settings of the analytics service: flags over environment over defaults, checked at start-up.

Defaults run the local stack with no configuration: Kafka on 127.0.0.1:9092, the HTTP API on
127.0.0.1:8400 (not ClickHouse's own 8123), chdb data in <workspace>/.state/analytics.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from typing import Mapping, Optional, Sequence

from services.analytics.store import ServerAddress, parse_clickhouse_url

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_PORT = 8400
DEFAULT_GROUP = "analytics-sink"


def default_data_dir(env: Mapping[str, str]) -> pathlib.Path:
    """<workspace>/.state/analytics under `bazel run`, else .state/analytics below the current directory."""
    workspace = env.get("BUILD_WORKSPACE_DIRECTORY")
    return pathlib.Path(workspace or ".") / ".state" / "analytics"


@dataclasses.dataclass(frozen=True)
class Settings:
    bootstrap: str
    group: str
    instance_id: str
    host: str
    port: int
    data_dir: pathlib.Path
    database: str
    clickhouse: Optional[ServerAddress]
    batch_size: int
    batch_max_ms: int
    drain_seconds: float
    log_level: str
    crash_point: Optional[str]  # tests only

    def describe(self) -> str:
        store = self.clickhouse.redacted() if self.clickhouse else "chdb:%s" % self.data_dir
        return ("bootstrap=%s group=%s listen=%s:%d store=%s database=%s batch_size=%d batch_max_ms=%d"
                % (self.bootstrap, self.group, self.host, self.port, store, self.database, self.batch_size,
                   self.batch_max_ms))


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit("analytics: %s=%r is not a whole number" % (name, raw)) from None


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="analytics",
        description="The analytics service: stores the IoT aggregates from Kafka in ClickHouse (chdb "
                    "in-process by default, or a server) idempotently, and answers named queries over HTTP.",
        epilog="Example: bazel run //services/analytics   (Kafka on 127.0.0.1:9092 from //deploy/kafka:broker; "
               "then curl 'http://127.0.0.1:8400/api/v1/iot/sites/latest')",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--bootstrap", default=env.get("DP_KAFKA_BOOTSTRAP") or DEFAULT_BOOTSTRAP,
                   help="Kafka bootstrap servers [env DP_KAFKA_BOOTSTRAP]")
    p.add_argument("--group", default=env.get("DP_ANALYTICS_GROUP") or DEFAULT_GROUP,
                   help="Kafka consumer group [env DP_ANALYTICS_GROUP]")
    p.add_argument("--instance-id", default=env.get("DP_ANALYTICS_INSTANCE_ID") or "analytics-sink-1",
                   help="Kafka static group membership id: a restarted service takes its partitions back at "
                        "once, and a second service with the same id is fenced off [env DP_ANALYTICS_INSTANCE_ID]")
    p.add_argument("--host", default=env.get("DP_ANALYTICS_HOST") or "127.0.0.1",
                   help="HTTP listen address [env DP_ANALYTICS_HOST]")
    p.add_argument("--port", type=int, default=_int(env, "DP_ANALYTICS_PORT", DEFAULT_PORT),
                   help="HTTP port, 0 for any free port [env DP_ANALYTICS_PORT]")
    p.add_argument("--data-dir", type=pathlib.Path,
                   default=pathlib.Path(env["DP_ANALYTICS_DATA"]) if env.get("DP_ANALYTICS_DATA")
                   else default_data_dir(env),
                   help="chdb data directory; one process owns it [env DP_ANALYTICS_DATA]")
    p.add_argument("--database", default=env.get("DP_ANALYTICS_DATABASE") or "datapipelines",
                   help="ClickHouse database (chdb mode; in server mode the URL's path) [env DP_ANALYTICS_DATABASE]")
    p.add_argument("--clickhouse-url", default=env.get("DP_CLICKHOUSE_URL") or None,
                   help="use a ClickHouse server instead of chdb: http(s)://user@host:port/database; password "
                        "from DP_CLICKHOUSE_PASSWORD [env DP_CLICKHOUSE_URL]")
    p.add_argument("--batch-size", type=int, default=_int(env, "DP_ANALYTICS_BATCH_SIZE", 50_000),
                   help="records per insert at most [env DP_ANALYTICS_BATCH_SIZE]")
    p.add_argument("--batch-max-ms", type=int, default=_int(env, "DP_ANALYTICS_BATCH_MAX_MS", 500),
                   help="oldest record of a batch waits at most this long [env DP_ANALYTICS_BATCH_MAX_MS]")
    p.add_argument("--drain-seconds", type=float, default=float(env.get("DP_ANALYTICS_DRAIN_SECONDS") or 15),
                   help="on SIGTERM, time allowed to store and commit the last batch [env DP_ANALYTICS_DRAIN_SECONDS]")
    p.add_argument("--log-level", default=env.get("DP_ANALYTICS_LOG_LEVEL") or "INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="[env DP_ANALYTICS_LOG_LEVEL]")
    return p


def load(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None) -> Settings:
    env = os.environ if env is None else env
    p = parser(env)
    args = p.parse_args(argv)
    problems = []
    if not 1 <= args.batch_size <= 1_000_000:
        problems.append("--batch-size must be 1..1000000")
    if not 10 <= args.batch_max_ms <= 60_000:
        problems.append("--batch-max-ms must be 10..60000")
    if not 0 <= args.port <= 65535:
        problems.append("--port must be 0..65535")
    clickhouse = None
    if args.clickhouse_url:
        try:
            clickhouse = parse_clickhouse_url(args.clickhouse_url, env.get("DP_CLICKHOUSE_PASSWORD"))
        except ValueError as err:
            problems.append(str(err))
    if problems:
        p.error("; ".join(problems))
    return Settings(
        bootstrap=args.bootstrap,
        group=args.group,
        instance_id=args.instance_id,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir.resolve(),
        database=clickhouse.database if clickhouse else args.database,
        clickhouse=clickhouse,
        batch_size=args.batch_size,
        batch_max_ms=args.batch_max_ms,
        drain_seconds=args.drain_seconds,
        log_level=args.log_level,
        crash_point=env.get("DP_ANALYTICS_CRASH_POINT") or None,
    )
