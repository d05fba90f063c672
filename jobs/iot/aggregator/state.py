"""The aggregator's state store: a compacted changelog topic co-partitioned with the input.

Topic `topics.IOT_AGGREGATOR_CHANGELOG`, partition N holds the state of input partition N.
Every reading the state keeps (see transform.Entry) is one record, keyed by reading id, value
the reading's latest change as a `DeviceReading`; three headers carry what the contract has no
field for:

    dp.aggregator.counted       "1" when the values are in their panes, "0" for a delete or a
                                change that arrived after all its windows closed
    dp.aggregator.applied-us    stream time when the change was applied (late-within-grace counts)
    dp.aggregator.retain-us     start of the pane whose expiry drops the entry

A tombstone (null value) is written when the entry leaves the state. Records are written in
the same transaction as the aggregates and the input offsets, so what a read_committed reader
sees is exactly the state after the last committed batch. Stream time per partition is not
in this topic: it is committed as the metadata of the input offset (`stream_time_us=<int>`),
in the same transaction.

The records of one batch are written in the order of their last change, so the log order of
the surviving records is the order in which readings last joined their panes; restoring in
that order reproduces the sums bit for bit (see transform.py).
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from google.protobuf import timestamp_pb2

from datapipelines import records, topics
from datapipelines.iot.v1 import change_source_pb2, device_reading_pb2
from jobs.iot.aggregator import transform

log = logging.getLogger("iot_aggregator.state")

COUNTED_HEADER = "dp.aggregator.counted"
APPLIED_HEADER = "dp.aggregator.applied-us"
RETAIN_HEADER = "dp.aggregator.retain-us"
STREAM_TIME_METADATA = "stream_time_us="

_OPERATIONS = {
    "c": change_source_pb2.CHANGE_OPERATION_CREATE,
    "u": change_source_pb2.CHANGE_OPERATION_UPDATE,
    "d": change_source_pb2.CHANGE_OPERATION_DELETE,
    "r": change_source_pb2.CHANGE_OPERATION_SNAPSHOT,
}
_OPS_BACK = {number: op for op, number in _OPERATIONS.items()}


def timestamp(micros: int) -> timestamp_pb2.Timestamp:
    seconds, rest = divmod(micros, 1_000_000)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=rest * 1000)


def micros_of(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def device_reading(change: tuple, ingest_us: int | None = None) -> device_reading_pb2.DeviceReading:
    """The contract form of a decoded change."""
    (op, rid, device, site, time_us, temperature, humidity, pressure, battery, firmware, lsn, tx_id, commit_ms,
     capture_ms, _before, connector, database, schema, table) = change
    message = device_reading_pb2.DeviceReading(
        reading_id=str(rid), device_id=device, site_id=site, firmware_version=firmware,
        reading_time=timestamp(time_us), operation=_OPERATIONS[op],
        source=change_source_pb2.ChangeSource(
            connector_name=connector, database_name=database, schema_name=schema, table_name=table,
            lsn=lsn, transaction_id=tx_id or 0),
    )
    if temperature is not None:
        message.temperature_celsius = temperature
    if humidity is not None:
        message.humidity_percent = humidity
    if pressure is not None:
        message.pressure_hpa = pressure
    if battery is not None:
        message.battery_percent = battery
    if commit_ms is not None:
        message.source.commit_time.CopyFrom(timestamp(commit_ms * 1000))
    if capture_ms is not None:
        message.source.capture_time.CopyFrom(timestamp(capture_ms * 1000))
    if ingest_us is not None:
        message.ingest_time.CopyFrom(timestamp(ingest_us))
    return message


def change_of(message: device_reading_pb2.DeviceReading) -> tuple:
    """The change tuple of a `DeviceReading` (inverse of `device_reading`, minus the old row time)."""
    source = message.source
    return (
        _OPS_BACK.get(message.operation, "c"), int(message.reading_id), message.device_id, message.site_id,
        micros_of(message.reading_time),
        message.temperature_celsius if message.HasField("temperature_celsius") else None,
        message.humidity_percent if message.HasField("humidity_percent") else None,
        message.pressure_hpa if message.HasField("pressure_hpa") else None,
        message.battery_percent if message.HasField("battery_percent") else None,
        message.firmware_version, source.lsn, source.transaction_id or None,
        micros_of(source.commit_time) // 1000 if source.HasField("commit_time") else None,
        micros_of(source.capture_time) // 1000 if source.HasField("capture_time") else None,
        None, source.connector_name, source.database_name, source.schema_name, source.table_name,
    )


def encode(rid: int, entry: transform.Entry | None, ingest_us: int | None = None):
    """(key, value, headers) of the changelog record of one entry; value None for a tombstone."""
    key = str(rid).encode()
    if entry is None:
        return key, None, []
    change, counted, applied, retain = entry
    record = records.encode(topics.IOT_AGGREGATOR_CHANGELOG, device_reading(change, ingest_us))
    headers = record.headers + [
        (COUNTED_HEADER, b"1" if counted else b"0"),
        (APPLIED_HEADER, str(applied).encode()),
        (RETAIN_HEADER, str(retain).encode()),
    ]
    return key, record.value, headers


def decode(key: bytes, value: bytes | None, headers) -> tuple[int, transform.Entry | None]:
    """(reading id, entry or None) of one changelog record; raises MalformedRecord if unreadable."""
    try:
        rid = int(key)
    except (TypeError, ValueError):
        raise records.MalformedRecord("invalid-key", f"changelog key {key!r} is not a reading id") from None
    if value is None:
        return rid, None
    message = records.decode(topics.IOT_AGGREGATOR_CHANGELOG, value, headers)
    counted = records.header(headers, COUNTED_HEADER)
    applied = records.header(headers, APPLIED_HEADER)
    retain = records.header(headers, RETAIN_HEADER)
    if counted is None or applied is None or retain is None:
        raise records.MalformedRecord("missing-header", f"changelog record {rid} lacks the aggregator's headers")
    return rid, (change_of(message), counted == "1", int(applied), int(retain))


def compact(log_records: Iterable[tuple[bytes, bytes | None, object]]) -> list[tuple[int, transform.Entry]]:
    """The live entries of a changelog partition read in offset order, in the order of their last write."""
    live: dict[int, transform.Entry] = {}
    for key, value, headers in log_records:
        rid, entry = decode(key, value, headers)
        live.pop(rid, None)
        if entry is not None:
            live[rid] = entry
    return list(live.items())


def stream_time_metadata(stream_time: int) -> str:
    return f"{STREAM_TIME_METADATA}{stream_time}"


def parse_stream_time(metadata: str | None) -> int | None:
    if metadata and metadata.startswith(STREAM_TIME_METADATA):
        try:
            return int(metadata[len(STREAM_TIME_METADATA):])
        except ValueError:
            return None
    return None


class ChangelogReader:
    """Reads changelog partitions to their end (the last stable offset, read_committed)."""

    def __init__(self, bootstrap: str, group_id: str):
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap,
            "group.id": f"{group_id}.restore",  # never joins or commits: partitions are assigned
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        })

    def read(self, partitions: list[int], timeout: float = 300.0) -> dict[int, list[tuple]]:
        """{partition: [(key, value, headers) in offset order]} up to the end of each partition."""
        name = topics.IOT_AGGREGATOR_CHANGELOG.name
        out: dict[int, list] = {p: [] for p in partitions}
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(name, p), timeout=30, cached=False)
            if high > low:
                ends[p] = high
        if not ends:
            return out
        self._consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in ends])
        pending = set(ends)
        deadline = time.monotonic() + timeout
        try:
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"restoring {name} partitions {sorted(pending)} took more than {timeout:.0f} s")
                for message in self._consumer.consume(num_messages=10_000, timeout=0.5):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(message.partition())
                            continue
                        raise KafkaException(error)
                    p = message.partition()
                    out[p].append((message.key(), message.value(), message.headers()))
                    if message.offset() + 1 >= ends[p]:
                        pending.discard(p)
        finally:
            self._consumer.unassign()
        return out

    def close(self) -> None:
        self._consumer.close()
