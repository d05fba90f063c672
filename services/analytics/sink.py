"""Kafka → analytics store: batches of versioned results stored idempotently, then committed.

One loop and one consumer per process (the store has a single owner), subscribed to every
target's topic (`TARGETS`: iot.aggregates.v1, behaviour.metrics.v1, behaviour.sessions.v1):

    consume (read_committed, no auto commit)
      → records.decode each record; malformed → `<topic>.dlq` with the reason (stage analytics-sink);
        decodable but meaningless (unspecified scope/kind/dimension, no key, version 0, ...) → DLQ
        with the target's reason (invalid-aggregate, invalid-metric, invalid-session)
      → batch (size or age), values grouped by target
      → per target, insert the original bytes in ClickHouse's Protobuf format into its ingest table
        (a Null table whose materialized view writes the ReplacingMergeTree table)
      → insert the batch's offset ranges into `ingest_offsets`
      → flush dead letters, commit offsets.

A crash anywhere before the commit replays the batch. Replayed rows carry the same `version`
as the stored ones, so ReplacingMergeTree collapses them and every reader's FINAL hides them
before that; and on assignment the sink resumes after the last offset range the store
recorded, so a batch whose rows and range were stored is not even re-inserted.
See docs/adr/0007-analytics-store.md.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from typing import Callable, Optional

from confluent_kafka import OFFSET_STORED, KafkaError, KafkaException, TopicPartition
from google.protobuf.message import Message

from datapipelines import kafka, records, topics
from services.analytics import protobuf_schema
from services.analytics.metrics import Metrics
from services.analytics.store import Store, StoreError

LOG = logging.getLogger("analytics.sink")

STAGE = "analytics-sink"
INVALID = "invalid-aggregate"
STORE_REJECTED = "store-rejected"

# Test-only fault injection (the kill -9 tests): DP_ANALYTICS_CRASH_POINT=<point>:<batch number>
# SIGKILLs the process at that point of that batch. Points, in order within a batch:
CRASH_POINTS = ("after-data-insert", "after-offsets-insert", "after-commit")

# The lag gauge is refreshed after every batch and, while no batch is open, at least this often.
LAG_REFRESH_SECONDS = 1.0
# Longest wait for a broker to report a partition's watermarks the consumer has not fetched yet.
WATERMARK_QUERY_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class SinkTarget:
    """A topic and the ingest table its records go to, with the checks a decoded record must pass."""

    topic: topics.Topic
    ingest_table: str
    stored_table: str
    validate: Callable[[Message], Optional[str]]  # a problem description, or None when the record is usable
    invalid_reason: str = INVALID  # dp.dlq.reason of a record that decodes but fails `validate`

    @property
    def message_descriptor(self):
        return self.topic.message_class().DESCRIPTOR

    def insert_schema(self) -> tuple:
        descriptor = self.message_descriptor
        return protobuf_schema.render(descriptor), protobuf_schema.flat_name(descriptor)


def validate_reading_aggregate(message) -> Optional[str]:
    """Why a decoded ReadingAggregate cannot be stored, or None (contract: UNSPECIFIED is rejected)."""
    problems = []
    if message.scope not in (1, 2):
        problems.append("scope %d is not DEVICE or SITE" % message.scope)
    if not message.key_id:
        problems.append("key_id is empty")
    if message.window_kind not in (1, 2):
        problems.append("window_kind %d is not TUMBLING or HOPPING" % message.window_kind)
    if not message.HasField("window_start_time") or not message.HasField("window_end_time"):
        problems.append("window_start_time and window_end_time are required")
    elif (message.window_end_time.seconds, message.window_end_time.nanos) <= (
            message.window_start_time.seconds, message.window_start_time.nanos):
        problems.append("window_end_time is not after window_start_time")
    if message.version == 0:
        problems.append("version is 0 (versions start at 1)")
    return "; ".join(problems) or None


IOT_AGGREGATES = SinkTarget(
    topic=topics.IOT_AGGREGATES,
    ingest_table="iot_reading_aggregates_ingest",
    stored_table="iot_reading_aggregates",
    validate=validate_reading_aggregate,
)


def _window_problems(message, problems: list) -> None:
    if not message.HasField("window_start_time") or not message.HasField("window_end_time"):
        problems.append("window_start_time and window_end_time are required")
    elif (message.window_end_time.seconds, message.window_end_time.nanos) <= (
            message.window_start_time.seconds, message.window_start_time.nanos):
        problems.append("window_end_time is not after window_start_time")


def validate_behaviour_metric(message) -> Optional[str]:
    """Why a decoded BehaviourMetric cannot be stored, or None (contract: UNSPECIFIED is rejected)."""
    problems = []
    if message.window_kind not in (1, 2):
        problems.append("window_kind %d is not TUMBLING or HOPPING" % message.window_kind)
    _window_problems(message, problems)
    if message.dimension not in (1, 2, 3, 4):
        problems.append("dimension %d is not ALL, EVENT_TYPE, PAGE_PATH or DEVICE_CATEGORY" % message.dimension)
    elif message.dimension == 1 and message.dimension_value:
        problems.append("dimension_value must be empty for METRIC_DIMENSION_ALL, got %r" % message.dimension_value[:80])
    elif message.dimension != 1 and not message.dimension_value:
        problems.append("dimension_value is empty")
    for name in ("event_count", "unique_user_count", "unique_session_count", "late_event_count"):
        if getattr(message, name) < 0:
            problems.append("%s is negative" % name)
    if message.version == 0:
        problems.append("version is 0 (versions start at 1)")
    return "; ".join(problems) or None


def validate_session_summary(message) -> Optional[str]:
    """Why a decoded SessionSummary cannot be stored, or None."""
    problems = []
    if not message.session_id:
        problems.append("session_id is empty")
    if not message.HasField("session_start_time") or not message.HasField("session_end_time"):
        problems.append("session_start_time and session_end_time are required")
    elif (message.session_end_time.seconds, message.session_end_time.nanos) < (
            message.session_start_time.seconds, message.session_start_time.nanos):
        problems.append("session_end_time is before session_start_time")
    if not 0 <= message.funnel_stage <= 5:
        problems.append("funnel_stage %d is not a FunnelStage" % message.funnel_stage)
    for name in ("event_count", "page_view_count", "unique_page_count"):
        if getattr(message, name) < 0:
            problems.append("%s is negative" % name)
    if message.version == 0:
        problems.append("version is 0 (versions start at 1)")
    return "; ".join(problems) or None


BEHAVIOUR_METRICS = SinkTarget(
    topic=topics.BEHAVIOUR_METRICS,
    ingest_table="behaviour_metrics_ingest",
    stored_table="behaviour_metrics",
    validate=validate_behaviour_metric,
    invalid_reason="invalid-metric",
)

BEHAVIOUR_SESSIONS = SinkTarget(
    topic=topics.BEHAVIOUR_SESSIONS,
    ingest_table="behaviour_sessions_ingest",
    stored_table="behaviour_sessions",
    validate=validate_session_summary,
    invalid_reason="invalid-session",
)

# What the service consumes: one consumer subscribed to every topic here.
TARGETS = (IOT_AGGREGATES, BEHAVIOUR_METRICS, BEHAVIOUR_SESSIONS)


@dataclasses.dataclass
class _Range:
    first: int
    last: int
    rows: int = 0
    dead_letters: int = 0


class Batch:
    def __init__(self):
        # topic -> values, and the consumed record of each (for dead-lettering store rejects)
        self.values: dict = {}
        self.sources: dict = {}
        self.ranges: dict = {}  # (topic, partition) -> _Range
        self.started = time.monotonic()

    def note(self, topic: str, partition: int, offset: int, stored: bool) -> None:
        span = self.ranges.get((topic, partition))
        if span is None:
            span = self.ranges[(topic, partition)] = _Range(offset, offset)
        span.first, span.last = min(span.first, offset), max(span.last, offset)
        if stored:
            span.rows += 1
        else:
            span.dead_letters += 1

    def __len__(self) -> int:
        return sum(span.rows + span.dead_letters for span in self.ranges.values())


def describe_ranges(batch: Batch) -> str:
    return ",".join("%s[%d]@%d-%d" % (t, p, s.first, s.last) for (t, p), s in sorted(batch.ranges.items()))


class CrashPoint:
    """Kills the process with SIGKILL at a named point of the n-th batch (tests only)."""

    def __init__(self, spec: Optional[str]):
        self.point, self.batch = None, 0
        if spec:
            point, _, number = spec.partition(":")
            if point not in CRASH_POINTS or not number.isdigit():
                raise ValueError("DP_ANALYTICS_CRASH_POINT=%r: want <%s>:<batch number>" % (spec, "|".join(CRASH_POINTS)))
            self.point, self.batch = point, int(number)

    def check(self, point: str, batch_number: int, ranges: str = "") -> None:
        if point == self.point and batch_number == self.batch:
            LOG.warning("event=crash_point point=%s batch=%d ranges=%s action=SIGKILL", point, batch_number, ranges)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


class Sink:
    def __init__(self, store: Store, consumer, producer, targets, group: str, metrics: Metrics,
                 batch_size: int = 50_000, batch_max_seconds: float = 0.5, crash_point: Optional[str] = None):
        self.store = store
        self.consumer = consumer
        self.producer = producer
        if isinstance(targets, SinkTarget):
            targets = (targets,)
        self.targets = {target.topic.name: target for target in targets}
        if not self.targets or len(self.targets) != len(targets):
            raise ValueError("want at least one target and one target per topic")
        self.group = group
        self.metrics = metrics
        self.batch_size = batch_size
        self.batch_max_seconds = batch_max_seconds
        self.crash = CrashPoint(crash_point)
        self.schemas = {name: target.insert_schema() for name, target in self.targets.items()}
        self.batch = Batch()
        self.batches_stored = 0
        self.assignment: list = []
        # (topic, partition) -> the offset reading starts at after an assignment (the store's resume
        # point or the committed offset), None when auto.offset.reset decides (earliest).
        self._start_offsets: dict = {}
        self._lag_updated = 0.0
        self._assigned = threading.Event()

    # --- assignment ----------------------------------------------------------------------

    def subscribe(self) -> None:
        self.consumer.subscribe(sorted(self.targets), on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    @property
    def assigned(self) -> bool:
        return self._assigned.is_set()

    def stored_offsets(self) -> dict:
        """(topic, partition) -> last offset the store recorded for this group, for every target topic."""
        result = self.store.query(
            "SELECT topic, kafka_partition, max(last_offset) AS last_offset FROM ingest_offsets"
            " WHERE consumer_group = {group:String} AND has({topics:Array(String)}, topic)"
            " GROUP BY topic, kafka_partition",
            {"group": self.group, "topics": "[%s]" % ",".join("'%s'" % name for name in sorted(self.targets))},
        )
        return {(str(topic), int(partition)): int(last) for topic, partition, last in result.rows}

    def _on_assign(self, consumer, partitions) -> None:
        stored = self.stored_offsets()
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=30)}
        starts = {}
        for tp in partitions:
            key = (tp.topic, tp.partition)
            resume = stored.get(key)
            if resume is not None and resume + 1 > committed.get(key, -1):
                skipped = resume + 1 - max(committed.get(key, 0), 0)
                tp.offset = resume + 1
                self.metrics.skipped_replays.labels(tp.topic).inc(max(skipped, 0))
                LOG.info("event=resume_from_store topic=%s partition=%d offset=%d committed=%d",
                         tp.topic, tp.partition, tp.offset, committed.get(key, -1))
            else:
                tp.offset = OFFSET_STORED
            starts[key] = tp.offset if tp.offset >= 0 else (committed.get(key, -1) if committed.get(key, -1) >= 0
                                                            else None)
        # Incremental assignment is not in use (eager protocol): this is the whole assignment.
        consumer.assign(partitions)
        self.assignment = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        self._start_offsets = starts
        self._assigned.set()
        self.update_lag()
        LOG.info("event=partitions_assigned partitions=%s",
                 ",".join("%s[%d]" % (tp.topic, tp.partition) for tp in partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        # Store and commit what was read from these partitions while they are still ours.
        self.flush()
        consumer.unassign()
        self._forget_lag(partitions)
        self._assigned.clear()
        LOG.info("event=partitions_revoked partitions=%s", ",".join(str(tp.partition) for tp in partitions))

    def _on_lost(self, consumer, partitions) -> None:
        # Another member may own them already: do not commit; the batch is replayed by its owner
        # (and collapses by version if both stored it).
        self.batch = Batch()
        self._forget_lag(partitions)
        self._assigned.clear()
        LOG.warning("event=partitions_lost partitions=%s", ",".join(str(tp.partition) for tp in partitions))

    # --- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set, then store and commit what was read."""
        self.subscribe()
        LOG.info("event=sink_started topics=%s group=%s batch_size=%d batch_max_ms=%d",
                 ",".join(sorted(self.targets)), self.group, self.batch_size, self.batch_max_seconds * 1000)
        while not stop.is_set():
            room = self.batch_size - len(self.batch)
            wait = max(0.01, min(0.2, self.batch_max_seconds - (time.monotonic() - self.batch.started)))
            for record in self.consumer.consume(num_messages=max(1, min(room, 10_000)), timeout=wait):
                self.accept(record)
            if len(self.batch) >= self.batch_size or (
                    len(self.batch) and time.monotonic() - self.batch.started >= self.batch_max_seconds):
                self.flush()
            elif not len(self.batch):
                self.batch.started = time.monotonic()
                if time.monotonic() - self._lag_updated >= LAG_REFRESH_SECONDS:
                    self.update_lag()
        self.flush()
        LOG.info("event=sink_stopped batches=%d", self.batches_stored)

    def accept(self, record) -> None:
        error = record.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                return
            if error.fatal():
                raise RuntimeError("fatal Kafka consumer error: %s" % error)
            LOG.warning("event=consumer_error error=%s", error)
            return
        target = self.targets[record.topic()]
        topic = target.topic
        try:
            message = records.decode(topic, record.value(), record.headers())
        except records.MalformedRecord as malformed:
            # The shared path writes the dead letter (original bytes + reason headers).
            kafka.decode_or_dead_letter(self.producer, topic, record, STAGE)
            self.metrics.dead_letters.labels(topic.name, malformed.reason).inc()
            self.batch.note(record.topic(), record.partition(), record.offset(), stored=False)
            return
        problem = target.validate(message)
        if problem is not None:
            self.dead_letter(record, records.MalformedRecord(target.invalid_reason, problem))
            return
        self.batch.values.setdefault(topic.name, []).append(record.value())
        self.batch.sources.setdefault(topic.name, []).append(record)
        self.batch.note(record.topic(), record.partition(), record.offset(), stored=True)

    def dead_letter(self, record, error: records.MalformedRecord, in_batch: bool = False) -> None:
        source = self.targets[record.topic()].topic
        dlq = kafka.dead_letter_topic(source)
        headers = records.dead_letter_headers(error, record.topic(), record.partition(), record.offset(), STAGE,
                                              record.headers())
        LOG.warning("event=dead_lettered topic=%s partition=%d offset=%d reason=%s detail=%r",
                    record.topic(), record.partition(), record.offset(), error.reason, error.detail)
        while True:
            try:
                self.producer.produce(dlq.name, value=record.value(), key=record.key(), headers=headers)
                break
            except BufferError:
                self.producer.poll(0.1)
        self.metrics.dead_letters.labels(source.name, error.reason).inc()
        if not in_batch:
            self.batch.note(record.topic(), record.partition(), record.offset(), stored=False)

    # --- storing -------------------------------------------------------------------------

    def flush(self) -> None:
        """Store the batch, record its offset ranges, flush dead letters, commit. No-op when empty."""
        batch = self.batch
        if not batch.ranges:
            return
        batch_topics = sorted({t for t, _ in batch.ranges})
        number = self.batches_stored + 1
        started = time.monotonic()
        try:
            for name in sorted(batch.values):
                self.insert_values(batch, self.targets[name])
            self.crash.check("after-data-insert", number, describe_ranges(batch))
            self.store.insert_rows(
                "ingest_offsets",
                ("consumer_group", "topic", "kafka_partition", "first_offset", "last_offset", "row_count",
                 "dead_letter_count"),
                [(self.group, t, p, span.first, span.last, span.rows, span.dead_letters)
                 for (t, p), span in sorted(batch.ranges.items())],
            )
        except StoreError:
            for name in batch_topics:
                self.metrics.batches.labels(name, "failed").inc()
            raise
        elapsed = time.monotonic() - started
        self.crash.check("after-offsets-insert", number, describe_ranges(batch))
        pending = self.producer.flush(30)
        if pending:
            raise RuntimeError("%d dead letters still unsent after 30 s: not committing (is the broker up?)" % pending)
        self.consumer.commit(
            offsets=[TopicPartition(t, p, span.last + 1) for (t, p), span in sorted(batch.ranges.items())],
            asynchronous=False,
        )
        self.crash.check("after-commit", number, describe_ranges(batch))
        self.batches_stored = number
        self.batch = Batch()
        rows = sum(span.rows for span in batch.ranges.values())
        for name in batch_topics:
            target = self.targets[name]
            topic_rows = sum(span.rows for (t, _), span in batch.ranges.items() if t == name)
            self.metrics.batches.labels(name, "stored").inc()
            self.metrics.batch_rows.labels(name).observe(topic_rows)
            self.metrics.rows_inserted.labels(target.stored_table).inc(topic_rows)
            if topic_rows:
                self.metrics.insert_seconds.labels(target.stored_table).observe(elapsed)
        self.update_lag()
        LOG.info("event=batch_stored batch=%d rows=%d dead_letters=%d ranges=%s insert_ms=%.1f",
                 number, rows, sum(s.dead_letters for s in batch.ranges.values()),
                 describe_ranges(batch), elapsed * 1000)

    def insert_values(self, batch: Batch, target: SinkTarget) -> None:
        name = target.topic.name
        values, sources = batch.values[name], batch.sources[name]
        schema, message_name = self.schemas[name]
        try:
            self.store.insert_protobuf(target.ingest_table, schema, message_name, protobuf_schema.frame(values))
            return
        except StoreError as err:
            if not self.store.ping():
                raise
            LOG.warning("event=batch_rejected topic=%s rows=%d error=%r action=insert_one_by_one", name, len(values),
                        str(err))
        # The store is up but refused the batch: find the records it refuses and dead-letter them.
        # (Rows of the failed batch that did land are re-inserted here and collapse by version.)
        rejected = []
        for index, value in enumerate(values):
            try:
                self.store.insert_protobuf(target.ingest_table, schema, message_name, protobuf_schema.frame([value]))
            except StoreError as err:
                rejected.append((index, str(err)))
        if len(rejected) == len(values):
            raise StoreError("the store refused every record of the batch one by one: %s" % rejected[0][1])
        for index, detail in rejected:
            record = sources[index]
            # Passed decoding yet refused by the store: the store and the contract disagree.
            self.dead_letter(record, records.MalformedRecord(STORE_REJECTED, detail[:1500]), in_batch=True)
            span = batch.ranges[(record.topic(), record.partition())]
            span.rows, span.dead_letters = span.rows - 1, span.dead_letters + 1

    def _forget_lag(self, partitions) -> None:
        """Partitions that are no longer ours leave the lag gauge (another member reports them)."""
        for tp in partitions:
            try:
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
            except KeyError:
                pass
        self.assignment = []
        self._start_offsets = {}

    def update_lag(self) -> None:
        """Sets the lag gauge of every assigned partition. Called only while no batch is open, so
        the consumer's position is also what is stored and committed.

        lag = end of the partition (the last stable offset under read_committed, from the last fetch
        or, before any fetch, from the broker) - the next offset to read (the consumer's position;
        before it has one, the start offset of the assignment). A partition the consumer has
        not fetched from yet therefore still counts; NaN when the broker cannot say (never a
        false 0).
        """
        self._lag_updated = time.monotonic()
        if not self.assignment:
            return
        try:
            positions = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(self.assignment)}
        except KafkaException as err:
            LOG.debug("event=lag_positions_unavailable error=%s", err)
            positions = {}
        for tp in self.assignment:
            key = (tp.topic, tp.partition)
            next_offset = positions.get(key, -1)
            if next_offset < 0:
                next_offset = self._start_offsets.get(key)
            low, high = self._watermarks(tp, cached=True)
            if high < 0 or (next_offset is None and low < 0):
                low, high = self._watermarks(tp, cached=False)
            if next_offset is None:
                next_offset = low  # no committed offset: auto.offset.reset=earliest starts at the low watermark
            lag = max(high - next_offset, 0) if high >= 0 and next_offset >= 0 else math.nan
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    def _watermarks(self, tp: TopicPartition, cached: bool) -> tuple:
        try:
            if cached:
                found = self.consumer.get_watermark_offsets(tp, cached=True)
            else:
                found = self.consumer.get_watermark_offsets(tp, timeout=WATERMARK_QUERY_SECONDS, cached=False)
        except KafkaException as err:
            LOG.debug("event=lag_watermarks_unavailable topic=%s partition=%d error=%s", tp.topic, tp.partition, err)
            found = None
        return found if found is not None else (-1, -1)  # None: the broker did not answer in time
