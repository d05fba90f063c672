"""Settings of the behaviour metrics job: flags, then environment, then local-stack defaults.

One frozen `Config` per process, checked when it is built: a bad value stops the job before it
starts a JVM, with a message naming the flag and the environment variable.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from jobs.behaviour.metrics import transform


STARTUP_MODES = ("group-offsets", "earliest-offset", "latest-offset")
STATE_BACKENDS = ("hashmap", "rocksdb")

# The broker's transaction.max.timeout.ms defaults to 15 minutes; the connector's own default
# (1 hour) is refused by such a broker.
_MAX_TRANSACTION_TIMEOUT_MS = 15 * 60 * 1000
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_HOST_PORT = re.compile(r"[A-Za-z0-9.\-]+:\d{1,5}")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    bootstrap: str
    group_id: str
    startup_mode: str
    bounded: bool
    allowed_lateness_seconds: float
    idle_timeout_seconds: float
    dedup_ttl_seconds: float
    windows: transform.WindowSpec
    checkpoint_interval_seconds: float
    state_dir: pathlib.Path
    state_backend: str
    restore_from: Optional[str]
    parallelism: int
    jobmanager: Optional[str]
    transactional_id_prefix: str
    transaction_timeout_ms: int
    late_events_topic: Optional[str]  # None: the registry's late-events topic (contracts.json)
    job_name: str

    def __post_init__(self) -> None:
        if not self.bootstrap.strip():
            raise ConfigError("--bootstrap / DP_KAFKA_BOOTSTRAP is empty")
        for flag, value in (
            ("--group-id / DP_BEHAVIOUR_GROUP_ID", self.group_id),
            ("--transactional-id-prefix / DP_BEHAVIOUR_TRANSACTIONAL_ID_PREFIX", self.transactional_id_prefix),
            ("--late-events-topic", self.late_events_topic),
        ):
            if value is not None and not _NAME.fullmatch(value):
                raise ConfigError(f"{flag} {value!r}: use letters, digits, '.', '_' or '-'")
        if self.startup_mode not in STARTUP_MODES:
            raise ConfigError(f"--startup-mode {self.startup_mode!r}: one of {', '.join(STARTUP_MODES)}")
        if self.allowed_lateness_seconds < 0:
            raise ConfigError(f"--allowed-lateness-seconds {self.allowed_lateness_seconds} must not be negative")
        if self.idle_timeout_seconds <= 0:
            raise ConfigError(f"--idle-timeout-seconds {self.idle_timeout_seconds} must be positive")
        if self.dedup_ttl_seconds < 1:
            raise ConfigError(f"--dedup-ttl-seconds {self.dedup_ttl_seconds} must be at least 1")
        if self.checkpoint_interval_seconds < 0.1:
            raise ConfigError(
                f"--checkpoint-interval-seconds {self.checkpoint_interval_seconds}: at least 0.1 "
                "(the exactly-once sink commits its transactions on checkpoints; they cannot be off)"
            )
        if self.state_backend not in STATE_BACKENDS:
            raise ConfigError(f"--state-backend {self.state_backend!r}: one of {', '.join(STATE_BACKENDS)}")
        if not 1 <= self.parallelism <= 256:
            raise ConfigError(f"--parallelism {self.parallelism} must be in [1, 256]")
        if self.jobmanager is not None and not _HOST_PORT.fullmatch(self.jobmanager):
            raise ConfigError(f"--jobmanager {self.jobmanager!r}: want host:port of the JobManager's REST endpoint")
        if not 1000 <= self.transaction_timeout_ms <= _MAX_TRANSACTION_TIMEOUT_MS:
            raise ConfigError(
                f"--transaction-timeout-ms {self.transaction_timeout_ms} must be in [1000, "
                f"{_MAX_TRANSACTION_TIMEOUT_MS}] (the broker's default transaction.max.timeout.ms)"
            )
        if self.transaction_timeout_ms < 2 * self.checkpoint_interval_seconds * 1000:
            raise ConfigError(
                f"--transaction-timeout-ms {self.transaction_timeout_ms} must be at least twice the checkpoint "
                f"interval ({self.checkpoint_interval_seconds}s): a transaction stays open until the next checkpoint"
            )

    @property
    def checkpoint_dir(self) -> pathlib.Path:
        return self.state_dir / "checkpoints"

    @property
    def log_dir(self) -> pathlib.Path:
        return self.state_dir / "log"


def _default_state_dir(env: Mapping[str, str]) -> pathlib.Path:
    # <workspace>/.state like the other local services (deploy.common.process.workspace_state_dir).
    workspace = env.get("BUILD_WORKSPACE_DIRECTORY") or os.getcwd()
    return pathlib.Path(workspace) / ".state" / "flink" / "behaviour-metrics"


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def number(name: str, default: float, kind=float):
        value = env.get(name)
        if not value:
            return default
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is not a number") from None

    windows = transform.WindowSpec()
    p = argparse.ArgumentParser(
        prog="behaviour-metrics",
        description=(
            "Flink SQL job: user events from Kafka (protobuf) -> windowed behaviour metrics, session "
            "summaries and late events, exactly once, back to Kafka (protobuf with contract headers). "
            "Runs on an in-process mini-cluster unless --jobmanager names a Flink cluster."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--bootstrap", default=env.get("DP_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                   help="Kafka bootstrap servers [DP_KAFKA_BOOTSTRAP]")
    p.add_argument("--group-id", default=env.get("DP_BEHAVIOUR_GROUP_ID", "behaviour-metrics"),
                   help="consumer group (offsets are committed on checkpoints) [DP_BEHAVIOUR_GROUP_ID]")
    p.add_argument("--startup-mode", default=env.get("DP_BEHAVIOUR_STARTUP_MODE", "group-offsets"),
                   choices=STARTUP_MODES,
                   help="where to start without a checkpoint; group-offsets falls back to the earliest offset")
    p.add_argument("--bounded", action="store_true",
                   help="stop at the offsets that are the latest when the job starts (benchmarks, backfills)")
    p.add_argument("--allowed-lateness-seconds", type=float,
                   default=number("DP_BEHAVIOUR_ALLOWED_LATENESS_SECONDS", 30.0),
                   help="watermark delay: events up to this much out of order are counted, later ones are late")
    p.add_argument("--idle-timeout-seconds", type=float, default=number("DP_BEHAVIOUR_IDLE_TIMEOUT_SECONDS", 30.0),
                   help="a partition without events for this long no longer holds the watermark back")
    p.add_argument("--dedup-ttl-seconds", type=float, default=number("DP_BEHAVIOUR_DEDUP_TTL_SECONDS", 3600.0),
                   help="how long an event id is remembered: a second copy within this time is dropped "
                        "(the ingestion service's dedup window is 1 h too) [DP_BEHAVIOUR_DEDUP_TTL_SECONDS]")
    p.add_argument("--tumbling-seconds", type=int, default=windows.tumbling_seconds)
    p.add_argument("--hopping-size-seconds", type=int, default=windows.hopping_size_seconds)
    p.add_argument("--hopping-slide-seconds", type=int, default=windows.hopping_slide_seconds)
    p.add_argument("--session-gap-seconds", type=int, default=windows.session_gap_seconds)
    p.add_argument("--checkpoint-interval-seconds", type=float,
                   default=number("DP_BEHAVIOUR_CHECKPOINT_INTERVAL_SECONDS", 10.0),
                   help="checkpoint interval; output becomes visible to read_committed readers at each checkpoint")
    p.add_argument("--state-dir", type=pathlib.Path,
                   default=pathlib.Path(env["DP_BEHAVIOUR_STATE_DIR"]) if env.get("DP_BEHAVIOUR_STATE_DIR")
                   else _default_state_dir(env),
                   help="checkpoints (<dir>/checkpoints) and logs (<dir>/log) [DP_BEHAVIOUR_STATE_DIR]")
    p.add_argument("--state-backend", default=env.get("DP_BEHAVIOUR_STATE_BACKEND", "hashmap"),
                   choices=STATE_BACKENDS)
    p.add_argument("--restore-from", default=env.get("DP_BEHAVIOUR_RESTORE_FROM") or None,
                   help="a retained checkpoint or savepoint to resume from (path or 'latest' in the state dir)")
    p.add_argument("--parallelism", type=int, default=int(number("DP_BEHAVIOUR_PARALLELISM", 2, int)))
    p.add_argument("--jobmanager", default=env.get("DP_FLINK_JOBMANAGER") or None,
                   help="host:port of a Flink cluster's REST endpoint; default: an in-process mini-cluster")
    p.add_argument("--transactional-id-prefix",
                   default=env.get("DP_BEHAVIOUR_TRANSACTIONAL_ID_PREFIX", "behaviour-metrics"),
                   help="Kafka transactional id prefix of the sinks; unique per job on one cluster")
    p.add_argument("--transaction-timeout-ms", type=int, default=int(number("DP_BEHAVIOUR_TRANSACTION_TIMEOUT_MS",
                                                                               600_000, int)))
    p.add_argument("--late-events-topic", default=None,
                   help="side output of late events (default: the topic registry's behaviour.events.late.v1)")
    p.add_argument("--job-name", default="behaviour-metrics")
    return p


def from_args(argv: Optional[Sequence[str]] = None, env: Optional[Mapping[str, str]] = None) -> Config:
    env = os.environ if env is None else env
    args = parser(env).parse_args(argv)
    try:
        windows = transform.WindowSpec(
            tumbling_seconds=args.tumbling_seconds,
            hopping_size_seconds=args.hopping_size_seconds,
            hopping_slide_seconds=args.hopping_slide_seconds,
            session_gap_seconds=args.session_gap_seconds,
        )
    except ValueError as err:
        raise ConfigError(f"window flags: {err}") from None
    return Config(
        bootstrap=args.bootstrap,
        group_id=args.group_id,
        startup_mode=args.startup_mode,
        bounded=args.bounded,
        allowed_lateness_seconds=args.allowed_lateness_seconds,
        idle_timeout_seconds=args.idle_timeout_seconds,
        dedup_ttl_seconds=args.dedup_ttl_seconds,
        windows=windows,
        checkpoint_interval_seconds=args.checkpoint_interval_seconds,
        state_dir=args.state_dir.absolute(),
        state_backend=args.state_backend,
        restore_from=args.restore_from,
        parallelism=args.parallelism,
        jobmanager=args.jobmanager,
        transactional_id_prefix=args.transactional_id_prefix,
        transaction_timeout_ms=args.transaction_timeout_ms,
        late_events_topic=args.late_events_topic,
        job_name=args.job_name,
    )
