"""Every Kafka topic of the project, declared once: name, key, message type, layout, retention.

Nothing else spells a topic name. Producers and consumers look topics up here
(`topics.IOT_AGGREGATES.name`), the broker bootstrap creates them from `ALL`, and the record
codec (`datapipelines.records`) checks payloads against `message_type`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

from google.protobuf.message import Message

DAY_MS = 24 * 60 * 60 * 1000

# Wire formats of record values.
PROTOBUF = "protobuf"
DEBEZIUM_JSON = "debezium-json"  # written by Kafka Connect, not by our producers
RAW = "raw"  # dead letters: the original bytes, whatever they were
CONNECT_INTERNAL = "connect-internal"  # Kafka Connect's own configs, offsets and status


@dataclass(frozen=True)
class Topic:
    """One topic's contract."""

    name: str
    description: str
    value_format: str
    # Full protobuf name of the value (PROTOBUF topics only), e.g. "datapipelines.iot.v1.ReadingAggregate".
    message_type: str | None
    # Python module that defines `message_type`.
    module: str | None
    # Derives the record key from a value; None where the writer (e.g. Debezium) sets the key.
    key: Callable[[Message], str] | None
    key_description: str
    partitions: int = 3
    retention_ms: int = 7 * DAY_MS
    cleanup_policy: str = "delete"
    extra_config: Mapping[str, str] = field(default_factory=dict)

    def message_class(self) -> type[Message]:
        """The generated class for this topic's values."""
        if self.value_format != PROTOBUF or not self.module or not self.message_type:
            raise TypeError(f"topic {self.name} does not carry protobuf values ({self.value_format})")
        module = importlib.import_module(self.module)
        return getattr(module, self.message_type.rsplit(".", 1)[1])

    def key_of(self, message: Message) -> bytes | None:
        return self.key(message).encode("utf-8") if self.key else None

    def config(self) -> dict[str, str]:
        """Topic-level configuration for CreateTopics."""
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            **self.extra_config,
        }


def dead_letters_of(source: Topic) -> Topic:
    """The dead-letter topic of `source`: records no reader could use, with the reason in headers."""
    return Topic(
        name=f"{source.name}.dlq",
        description=f"Records of {source.name} that could not be read, unchanged, with the reason in dp.dlq.* headers.",
        value_format=RAW,
        message_type=None,
        module=None,
        key=None,
        key_description="the source record's key, unchanged",
        partitions=1,
        retention_ms=30 * DAY_MS,
    )


# --- IoT real-time CDC -------------------------------------------------------------------

IOT_CDC_READINGS = Topic(
    name="iot.cdc.readings",
    description="Debezium change events of the PostgreSQL table public.readings (create, update, delete, snapshot read).",
    value_format=DEBEZIUM_JSON,
    message_type=None,
    module=None,
    key=None,
    # The connector keys records by site (Debezium message.key.columns), so every reading of a
    # site, and so of its devices, lands in one partition: per-device and per-site windows are
    # computed without a repartition step.
    key_description='Debezium key {"site_id": ...} as JSON (message.key.columns in the connector config)',
    partitions=3,
)

IOT_AGGREGATOR_CHANGELOG = Topic(
    name="iot.aggregator.readings.changelog",
    description=(
        "The aggregator's state store: the current version of every reading still inside an open "
        "window, written in the same transaction as the aggregates; a tombstone once all its windows closed."
    ),
    value_format=PROTOBUF,
    message_type="datapipelines.iot.v1.DeviceReading",
    module="datapipelines.iot.v1.device_reading_pb2",
    key=lambda m: str(m.reading_id),
    key_description="reading id",
    partitions=3,  # co-partitioned with iot.cdc.readings: state of input partition N lives in partition N
    retention_ms=-1,
    cleanup_policy="compact",
)

# Kafka Connect (distributed worker) keeps its configuration, source offsets (the PostgreSQL
# LSN Debezium confirmed) and task status in these compacted topics.
def connect_internal(name: str, description: str, partitions: int) -> Topic:
    """A compacted topic Kafka Connect keeps its own state in, kept forever."""
    return Topic(
        name=name,
        description=description,
        value_format=CONNECT_INTERNAL,
        message_type=None,
        module=None,
        key=None,
        key_description="written by Kafka Connect",
        partitions=partitions,
        retention_ms=-1,
        cleanup_policy="compact",
    )


# Connect requires exactly one partition for its configs topic.
CONNECT_CONFIGS = connect_internal("connect.iot.configs", "Kafka Connect connector and task configurations.", 1)
CONNECT_OFFSETS = connect_internal(
    "connect.iot.offsets", "Kafka Connect source offsets (Debezium's confirmed PostgreSQL LSN).", 3
)
CONNECT_STATUS = connect_internal("connect.iot.status", "Kafka Connect connector and task status.", 1)

DEBEZIUM_HEARTBEAT = Topic(
    name="__debezium-heartbeat.iot",
    description="Debezium heartbeats: keep the replication slot's LSN moving while readings are quiet.",
    value_format=CONNECT_INTERNAL,
    message_type=None,
    module=None,
    key=None,
    key_description="written by Debezium",
    partitions=1,
    retention_ms=1 * DAY_MS,
)

IOT_AGGREGATES = Topic(
    name="iot.aggregates.v1",
    description="Windowed per-device and per-site reading aggregates (tumbling 1 min, hopping 5 min/1 min).",
    value_format=PROTOBUF,
    message_type="datapipelines.iot.v1.ReadingAggregate",
    module="datapipelines.iot.v1.reading_aggregate_pb2",
    key=lambda m: f"{m.scope}:{m.key_id}",
    key_description="<scope number>:<device or site id>",
    partitions=3,
)

IOT_LATE_READINGS = Topic(
    name="iot.readings.late.v1",
    description="Readings that arrived after their window's grace period, with the reason.",
    value_format=PROTOBUF,
    message_type="datapipelines.iot.v1.LateReading",
    module="datapipelines.iot.v1.late_reading_pb2",
    key=lambda m: m.reading.device_id,
    key_description="device id",
    partitions=1,
    retention_ms=30 * DAY_MS,
)


# --- User behaviour streaming ------------------------------------------------------------

BEHAVIOUR_EVENTS = Topic(
    name="behaviour.events.v1",
    description="Validated user events accepted by the ingestion service.",
    value_format=PROTOBUF,
    message_type="datapipelines.behaviour.v1.UserEvent",
    module="datapipelines.behaviour.v1.user_event_pb2",
    key=lambda m: m.session_id or m.anonymous_id or m.user_id,
    key_description="session id (falls back to anonymous id, then user id) so a session stays in order",
    partitions=3,
)


BEHAVIOUR_LATE_EVENTS = Topic(
    name="behaviour.events.late.v1",
    description=(
        "Events the Flink job received behind its watermark (side output), unchanged as messages, "
        "with dp.late.reason, dp.late.watermark.ms and dp.late.lateness.ms headers."
    ),
    value_format=PROTOBUF,
    message_type="datapipelines.behaviour.v1.UserEvent",
    module="datapipelines.behaviour.v1.user_event_pb2",
    key=lambda m: m.session_id or m.anonymous_id or m.user_id,
    key_description="session id, as on behaviour.events.v1",
    partitions=1,
    retention_ms=30 * DAY_MS,
)

BEHAVIOUR_METRICS = Topic(
    name="behaviour.metrics.v1",
    description="Windowed behaviour metrics from the Flink job.",
    value_format=PROTOBUF,
    message_type="datapipelines.behaviour.v1.BehaviourMetric",
    module="datapipelines.behaviour.v1.behaviour_metric_pb2",
    key=lambda m: f"{m.dimension}:{m.dimension_value}",
    key_description="<dimension number>:<dimension value>",
    partitions=3,
)

BEHAVIOUR_SESSIONS = Topic(
    name="behaviour.sessions.v1",
    description="Session summaries (session windows) from the Flink job.",
    value_format=PROTOBUF,
    message_type="datapipelines.behaviour.v1.SessionSummary",
    module="datapipelines.behaviour.v1.session_summary_pb2",
    key=lambda m: m.session_id,
    key_description="session id",
    partitions=3,
)

SOURCES: tuple[Topic, ...] = (
    IOT_CDC_READINGS,
    IOT_AGGREGATES,
    IOT_LATE_READINGS,
    BEHAVIOUR_EVENTS,
    BEHAVIOUR_LATE_EVENTS,
    BEHAVIOUR_METRICS,
    BEHAVIOUR_SESSIONS,
)

# Every topic that readers consume has a dead-letter topic beside it.
DEAD_LETTERS: tuple[Topic, ...] = tuple(dead_letters_of(t) for t in SOURCES)

# Topics that only a framework or a component's own state uses (no dead-letter topic).
INTERNAL: tuple[Topic, ...] = (
    IOT_AGGREGATOR_CHANGELOG,
    CONNECT_CONFIGS,
    CONNECT_OFFSETS,
    CONNECT_STATUS,
    DEBEZIUM_HEARTBEAT,
)

ALL: tuple[Topic, ...] = SOURCES + DEAD_LETTERS + INTERNAL

BY_NAME: dict[str, Topic] = {t.name: t for t in ALL}


def get(name: str) -> Topic:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown topic {name!r}; declared topics: {', '.join(sorted(BY_NAME))}") from None
