"""Sources, sinks and the Flink environment of the behaviour job.

Source: `behaviour.events.v1` through the Flink Kafka connector, values parsed by the Flink
`protobuf` format with the generated Java class of UserEvent (jar from
//jobs/behaviour/metrics:contracts_java). Sinks: the same connector with
`sink.delivery-guarantee = exactly-once` (Kafka transactions committed on checkpoints) and the
`headers` metadata column, so every record carries `dp.schema` and `dp.schema.fingerprint`
like the records our Python producers write (docs/adr/0005).

Topic names, message types and fingerprints come from contracts.json, which the build writes
from the topic registry (contracts_gen.py runs in the core Python set; this process runs in
the flink set and never imports protobuf).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Mapping, Sequence

from jobs.behaviour.metrics import config as config_module
from jobs.behaviour.metrics import transform
from tools.jvm import classpath

# Generated files (contracts.json, contracts_java.jar) sit next to this file in runfiles.
_HERE = pathlib.Path(__file__).parent

SOURCE_TABLE = "behaviour_events_source"
METRICS_SINK = "behaviour_metrics_sink"
SESSIONS_SINK = "session_summaries_sink"
LATE_SINK = "late_events_sink"

# The job writes BehaviourMetric through a wire twin: BehaviourMetric's fields `dimension` and
# `dimension_value` make protoc rename their Java accessors (getDimension4, getDimensionValue5),
# which the Flink protobuf format cannot find. The twin has the same field numbers and types, so
# its bytes are BehaviourMetric bytes (checked by wire_format_test). See behaviour_metric_wire.proto.
METRIC_WIRE_CLASS = "io.datapipelines.jobs.behaviour.metrics.BehaviourMetricWire"
METRIC_WIRE_VALUE_FIELD = "dimension_text"

LATE_REASON = "behind-watermark"


@dataclass(frozen=True)
class Contract:
    topic: str
    message_type: str
    fingerprint: str
    java_class: str


@dataclass(frozen=True)
class Contracts:
    events: Contract
    late_events: Contract
    metrics: Contract
    sessions: Contract
    schema_header: str
    fingerprint_header: str

    @classmethod
    def load(cls, path: pathlib.Path | None = None) -> "Contracts":
        path = path or _HERE / "contracts.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path} is missing: run the job through Bazel (bazel run //jobs/behaviour/metrics), "
                "which generates it from proto/datapipelines/topics.py"
            ) from None
        return cls(
            events=Contract(**data["events"]),
            late_events=Contract(**data["late_events"]),
            metrics=Contract(**data["metrics"]),
            sessions=Contract(**data["sessions"]),
            schema_header=data["headers"]["schema"],
            fingerprint_header=data["headers"]["fingerprint"],
        )


def jars() -> list[str]:
    """Jars the job adds to PyFlink's Flink: Kafka connector, protobuf format, our classes."""
    contracts_jar = _HERE / "contracts_java.jar"
    if not contracts_jar.is_file():
        raise FileNotFoundError(f"{contracts_jar} is missing: build //jobs/behaviour/metrics:contracts_java")
    return classpath.jars("maven_flink") + [str(contracts_jar.resolve())]


def flink_settings(cfg: config_module.Config, jar_paths: Sequence[str]) -> dict[str, str]:
    """Flink configuration of the job (checkpointing, state, restart policy, where to run)."""
    settings = {
        "pipeline.name": cfg.job_name,
        "pipeline.jars": ";".join(pathlib.Path(j).absolute().as_uri() for j in jar_paths),
        "parallelism.default": str(cfg.parallelism),
        "table.exec.source.idle-timeout": f"{int(cfg.idle_timeout_seconds * 1000)} ms",
        # Expires the per-event-id state of the deduplication (window operators clean up on their own).
        "table.exec.state.ttl": f"{int(cfg.dedup_ttl_seconds * 1000)} ms",
        "execution.checkpointing.interval": f"{int(cfg.checkpoint_interval_seconds * 1000)} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.dir": cfg.checkpoint_dir.absolute().as_uri(),
        "state.backend.type": cfg.state_backend,
        # A failing job restarts a few times from its last checkpoint, then fails for good
        # (Flink's default with checkpointing is to retry forever, which hides errors).
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "1 s",
        "restart-strategy.exponential-delay.max-backoff": "30 s",
        "restart-strategy.exponential-delay.attempts-before-reset-backoff": "5",
    }
    if cfg.restore_from:
        settings["execution.state-recovery.path"] = resolve_restore_path(cfg)
    if cfg.jobmanager:
        host, port = cfg.jobmanager.rsplit(":", 1)
        settings.update({"execution.target": "remote", "rest.address": host, "rest.port": port})
    return settings


def resolve_restore_path(cfg: config_module.Config) -> str:
    """--restore-from: a path as given, or 'latest' = the newest completed checkpoint in the state dir."""
    if cfg.restore_from != "latest":
        return cfg.restore_from
    candidates = sorted(
        cfg.checkpoint_dir.glob("*/chk-*/_metadata"),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        raise FileNotFoundError(f"--restore-from latest: no completed checkpoint under {cfg.checkpoint_dir}")
    return candidates[-1].parent.as_uri()


def _options(options: Mapping[str, str]) -> str:
    return ",\n  ".join(f"'{key}' = '{value}'" for key, value in options.items())


def _kafka_common(cfg: config_module.Config) -> dict[str, str]:
    return {"connector": "kafka", "properties.bootstrap.servers": cfg.bootstrap}


def _sink_options(cfg: config_module.Config, topic: str, sink: str, java_class: str) -> dict[str, str]:
    return {
        **_kafka_common(cfg),
        "topic": topic,
        "key.format": "raw",
        "key.fields": "record_key",
        "value.format": "protobuf",
        "value.protobuf.message-class-name": java_class,
        "value.fields-include": "EXCEPT_KEY",
        "sink.delivery-guarantee": "exactly-once",
        # One prefix per sink: transactional ids must not collide between the three writers.
        "sink.transactional-id-prefix": f"{cfg.transactional_id_prefix}-{sink}",
        "properties.transaction.timeout.ms": str(cfg.transaction_timeout_ms),
        "properties.enable.idempotence": "true",
        "properties.acks": "all",
    }


def create_source(t_env, cfg: config_module.Config, contracts: Contracts) -> str:
    options = {
        **_kafka_common(cfg),
        "topic": contracts.events.topic,
        "properties.group.id": cfg.group_id,
        "properties.isolation.level": "read_committed",
        "scan.startup.mode": cfg.startup_mode,
        "properties.auto.offset.reset": "earliest",
        "format": "protobuf",
        "protobuf.message-class-name": contracts.events.java_class,
        # A value that does not parse is skipped instead of failing the job (the ingestion
        # service validated it; see the README for what this does not cover).
        "protobuf.ignore-parse-errors": "true",
    }
    if cfg.bounded:
        options["scan.bounded.mode"] = "latest-offset"
    t_env.execute_sql(f"""
CREATE TEMPORARY TABLE {SOURCE_TABLE} (
  {transform.event_columns_sql()},
  `headers` MAP<STRING, BYTES> METADATA VIRTUAL,
  {transform.event_time_columns_sql(cfg.allowed_lateness_seconds)}
) WITH (
  {_options(options)}
)""")
    # Records that claim another contract than UserEvent are not ours to count.
    t_env.execute_sql(f"""
CREATE TEMPORARY VIEW {SOURCE_TABLE}_checked AS
SELECT * FROM {SOURCE_TABLE}
WHERE `headers` IS NULL OR `headers`['{contracts.schema_header}'] IS NULL
   OR CAST(`headers`['{contracts.schema_header}'] AS STRING) = '{contracts.events.message_type}'
""")
    return f"{SOURCE_TABLE}_checked"


_TIMESTAMP = "ROW<`seconds` BIGINT, `nanos` INT>"


def create_sinks(t_env, cfg: config_module.Config, contracts: Contracts) -> None:
    t_env.execute_sql(f"""
CREATE TEMPORARY TABLE {METRICS_SINK} (
  `record_key` STRING,
  `window_kind` STRING,
  `window_start_time` {_TIMESTAMP},
  `window_end_time` {_TIMESTAMP},
  `dimension` STRING,
  `{METRIC_WIRE_VALUE_FIELD}` STRING,
  `event_count` BIGINT,
  `unique_user_count` BIGINT,
  `unique_session_count` BIGINT,
  `late_event_count` BIGINT,
  `version` BIGINT,
  `emit_time` {_TIMESTAMP},
  `window_closed` BOOLEAN,
  `headers` MAP<STRING, BYTES> METADATA
) WITH (
  {_options(_sink_options(cfg, contracts.metrics.topic, "metrics", METRIC_WIRE_CLASS))}
)""")
    t_env.execute_sql(f"""
CREATE TEMPORARY TABLE {SESSIONS_SINK} (
  `record_key` STRING,
  `session_id` STRING,
  `user_id` STRING,
  `anonymous_id` STRING,
  `session_start_time` {_TIMESTAMP},
  `session_end_time` {_TIMESTAMP},
  `event_count` BIGINT,
  `page_view_count` BIGINT,
  `unique_page_count` BIGINT,
  `landing_page_path` STRING,
  `exit_page_path` STRING,
  `funnel_stage` STRING,
  `converted` BOOLEAN,
  `version` BIGINT,
  `emit_time` {_TIMESTAMP},
  `headers` MAP<STRING, BYTES> METADATA
) WITH (
  {_options(_sink_options(cfg, contracts.sessions.topic, "sessions", contracts.sessions.java_class))}
)""")
    t_env.execute_sql(f"""
CREATE TEMPORARY TABLE {LATE_SINK} (
  `record_key` STRING,
  {transform.event_columns_sql()},
  `headers` MAP<STRING, BYTES> METADATA
) WITH (
  {_options(_sink_options(cfg, cfg.late_events_topic or contracts.late_events.topic, "late", contracts.events.java_class))}
)""")


def _headers_sql(contracts: Contracts, contract: Contract, extra: Mapping[str, str] | None = None) -> str:
    """MAP literal of record headers; `extra` values are SQL expressions of type STRING."""
    entries = [
        f"'{contracts.schema_header}', CAST('{contract.message_type}' AS BYTES)",
        f"'{contracts.fingerprint_header}', CAST('{contract.fingerprint}' AS BYTES)",
    ]
    for name, expression in (extra or {}).items():
        entries.append(f"'{name}', CAST({expression} AS BYTES)")
    return "MAP[" + ", ".join(entries) + "]"


def insert_statements(contracts: Contracts) -> list[str]:
    """INSERTs from the transform's views into the three sinks, headers added here."""
    metric_columns = (
        "record_key, window_kind, window_start_time, window_end_time, dimension, dimension_value, "
        "event_count, unique_user_count, unique_session_count, late_event_count, version, emit_time, window_closed"
    )
    session_columns = (
        "record_key, session_id, user_id, anonymous_id, session_start_time, session_end_time, event_count, "
        "page_view_count, unique_page_count, landing_page_path, exit_page_path, funnel_stage, converted, "
        "version, emit_time"
    )
    event_columns = ", ".join(f"`{name}`" for name in transform.EVENT_COLUMN_NAMES)
    late_headers = _headers_sql(contracts, contracts.events, {
        "dp.late.reason": f"'{LATE_REASON}'",
        "dp.late.watermark.ms": "CAST(watermark_ms AS STRING)",
        "dp.late.lateness.ms": "CAST(lateness_ms AS STRING)",
    })
    return [
        f"INSERT INTO {METRICS_SINK} SELECT {metric_columns}, {_headers_sql(contracts, contracts.metrics)} "
        f"FROM {transform.BEHAVIOUR_METRICS}",
        f"INSERT INTO {SESSIONS_SINK} SELECT {session_columns}, {_headers_sql(contracts, contracts.sessions)} "
        f"FROM {transform.SESSION_SUMMARIES}",
        f"INSERT INTO {LATE_SINK} SELECT record_key, {event_columns}, {late_headers} FROM {transform.LATE_EVENTS}",
    ]
