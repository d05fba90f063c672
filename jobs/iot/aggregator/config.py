"""Settings of the IoT aggregator: flags, then environment, then defaults that fit the local stack.

One frozen `Config` per process, checked when it is built: a bad value stops the process
before it touches Kafka, with a message naming the flag and the environment variable.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from jobs.iot.aggregator import transform


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    bootstrap: str
    group_id: str
    instance_id: str
    grace_seconds: float
    max_future_seconds: float
    tumbling_seconds: int
    hopping_size_seconds: int
    hopping_advance_seconds: int
    batch_size: int
    commit_interval_seconds: float
    http_host: str
    http_port: int
    session_timeout_ms: int
    transaction_timeout_ms: int
    restore_timeout_seconds: float
    shutdown_timeout_seconds: float
    source_table: str
    log_level: str

    def __post_init__(self):
        if not self.bootstrap.strip():
            raise ConfigError("--bootstrap / DP_KAFKA_BOOTSTRAP is empty")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.group_id):
            raise ConfigError(f"--group-id {self.group_id!r}: use letters, digits, '.', '_' or '-'")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.instance_id):
            raise ConfigError(f"--instance-id {self.instance_id!r}: use letters, digits, '.', '_' or '-'")
        if self.grace_seconds < 0:
            raise ConfigError(f"--grace-seconds {self.grace_seconds} must not be negative")
        if self.max_future_seconds <= 0:
            raise ConfigError(f"--max-future-seconds {self.max_future_seconds} must be positive")
        if self.batch_size < 1 or self.batch_size > 1_000_000:
            raise ConfigError(f"--batch-size {self.batch_size} must be in [1, 1000000]")
        if self.commit_interval_seconds <= 0:
            raise ConfigError(f"--commit-interval-seconds {self.commit_interval_seconds} must be positive")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(f"--http-port {self.http_port} is not a port (0 picks a free one)")
        if self.transaction_timeout_ms < 1000:
            raise ConfigError("--transaction-timeout-ms must be at least 1000")
        try:
            self.settings()
        except ValueError as error:
            raise ConfigError(f"windows: {error}") from None

    @property
    def transactional_id(self) -> str:
        """Stable per instance: a restarted instance fences its previous incarnation and aborts its open transaction."""
        return f"{self.group_id}-{self.instance_id}"

    def settings(self) -> transform.Settings:
        return transform.Settings(
            windows=(
                transform.WindowSpec(transform.KIND_TUMBLING, self.tumbling_seconds * 1_000_000,
                                     self.tumbling_seconds * 1_000_000),
                transform.WindowSpec(transform.KIND_HOPPING, self.hopping_size_seconds * 1_000_000,
                                     self.hopping_advance_seconds * 1_000_000),
            ),
            grace_us=int(self.grace_seconds * 1_000_000),
            max_future_us=int(self.max_future_seconds * 1_000_000),
        )


def _env(environ: Mapping[str, str], name: str, default, kind=str):
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"environment {name}={raw!r} is not a valid {kind.__name__}") from None


def parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    e = lambda name, default, kind=str: _env(environ, name, default, kind)  # noqa: E731
    p = argparse.ArgumentParser(
        prog="aggregator",
        description="Windowed IoT reading aggregates from Debezium change events, exactly once "
                    "(iot.cdc.readings -> iot.aggregates.v1, late readings, dead letters).",
        epilog="Example: bazel run //jobs/iot/aggregator -- --grace-seconds 30. "
               "Metrics at http://<http-host>:<http-port>/metrics, health at /healthz and /readyz.",
    )
    p.add_argument("--bootstrap", default=e("DP_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                   help="Kafka bootstrap servers [env DP_KAFKA_BOOTSTRAP, default 127.0.0.1:9092]")
    p.add_argument("--group-id", default=e("DP_IOT_AGGREGATOR_GROUP", "iot-aggregator"),
                   help="consumer group; also the prefix of the transactional id "
                        "[env DP_IOT_AGGREGATOR_GROUP, default iot-aggregator]")
    p.add_argument("--instance-id", default=e("DP_IOT_AGGREGATOR_INSTANCE", "0"),
                   help="stable id of this instance (static group membership, transactional id "
                        "<group>-<instance>) [env DP_IOT_AGGREGATOR_INSTANCE, default 0]")
    p.add_argument("--grace-seconds", type=float, default=e("DP_IOT_AGGREGATOR_GRACE_SECONDS", 30.0, float),
                   help="how long after a window's end (in stream time) late readings still count "
                        "[env DP_IOT_AGGREGATOR_GRACE_SECONDS, default 30]")
    p.add_argument("--max-future-seconds", type=float,
                   default=e("DP_IOT_AGGREGATOR_MAX_FUTURE_SECONDS", 3600.0, float),
                   help="readings further ahead of their capture time are not counted "
                        "[env DP_IOT_AGGREGATOR_MAX_FUTURE_SECONDS, default 3600]")
    p.add_argument("--tumbling-seconds", type=int, default=e("DP_IOT_AGGREGATOR_TUMBLING_SECONDS", 60, int),
                   help="tumbling window size [env DP_IOT_AGGREGATOR_TUMBLING_SECONDS, default 60]")
    p.add_argument("--hopping-size-seconds", type=int, default=e("DP_IOT_AGGREGATOR_HOPPING_SIZE_SECONDS", 300, int),
                   help="hopping window size [env DP_IOT_AGGREGATOR_HOPPING_SIZE_SECONDS, default 300]")
    p.add_argument("--hopping-advance-seconds", type=int,
                   default=e("DP_IOT_AGGREGATOR_HOPPING_ADVANCE_SECONDS", 60, int),
                   help="hopping window advance [env DP_IOT_AGGREGATOR_HOPPING_ADVANCE_SECONDS, default 60]")
    p.add_argument("--batch-size", type=int, default=e("DP_IOT_AGGREGATOR_BATCH_SIZE", 5000, int),
                   help="records per transaction at most [env DP_IOT_AGGREGATOR_BATCH_SIZE, default 5000]")
    p.add_argument("--commit-interval-seconds", type=float,
                   default=e("DP_IOT_AGGREGATOR_COMMIT_INTERVAL_SECONDS", 0.5, float),
                   help="longest idle wait of the loop; a batch is processed once full, or at most "
                        "20 ms after its first record was available "
                        "[env DP_IOT_AGGREGATOR_COMMIT_INTERVAL_SECONDS, default 0.5]")
    p.add_argument("--http-host", default=e("DP_IOT_AGGREGATOR_HTTP_HOST", "127.0.0.1"),
                   help="address of /metrics, /healthz, /readyz [env DP_IOT_AGGREGATOR_HTTP_HOST, default 127.0.0.1]")
    p.add_argument("--http-port", type=int, default=e("DP_IOT_AGGREGATOR_HTTP_PORT", 9464, int),
                   help="port of /metrics, /healthz, /readyz; 0 picks a free one "
                        "[env DP_IOT_AGGREGATOR_HTTP_PORT, default 9464]")
    p.add_argument("--session-timeout-ms", type=int, default=e("DP_IOT_AGGREGATOR_SESSION_TIMEOUT_MS", 10000, int),
                   help="consumer group session timeout [env DP_IOT_AGGREGATOR_SESSION_TIMEOUT_MS, default 10000]")
    p.add_argument("--transaction-timeout-ms", type=int,
                   default=e("DP_IOT_AGGREGATOR_TRANSACTION_TIMEOUT_MS", 60000, int),
                   help="broker aborts a transaction left open this long "
                        "[env DP_IOT_AGGREGATOR_TRANSACTION_TIMEOUT_MS, default 60000]")
    p.add_argument("--restore-timeout-seconds", type=float,
                   default=e("DP_IOT_AGGREGATOR_RESTORE_TIMEOUT_SECONDS", 300.0, float),
                   help="longest state restore per assignment [env DP_IOT_AGGREGATOR_RESTORE_TIMEOUT_SECONDS, default 300]")
    p.add_argument("--shutdown-timeout-seconds", type=float,
                   default=e("DP_IOT_AGGREGATOR_SHUTDOWN_TIMEOUT_SECONDS", 30.0, float),
                   help="drain deadline after SIGTERM [env DP_IOT_AGGREGATOR_SHUTDOWN_TIMEOUT_SECONDS, default 30]")
    p.add_argument("--source-table", default=e("DP_IOT_AGGREGATOR_SOURCE_TABLE", "readings"),
                   help="the only table whose changes are accepted [env DP_IOT_AGGREGATOR_SOURCE_TABLE, default readings]")
    p.add_argument("--log-level", default=e("DP_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="[env DP_LOG_LEVEL, default INFO]")
    return p


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Parses flags over environment; argparse exits 2 on a bad flag, ConfigError on a bad value."""
    environ = os.environ if environ is None else environ
    args = parser(environ).parse_args(argv)
    return Config(**vars(args))
