"""Protobuf events through a real Kafka broker: nothing lost, nothing doubled, order kept per key.

The broker is a real single-node KRaft Kafka started by the shared fixture on free loopback
ports. Topics come from the topics module, exactly as the broker bootstrap creates them.
"""

import collections
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from google.protobuf import timestamp_pb2

from datapipelines import kafka, records, topics
from datapipelines.iot.v1 import device_reading_pb2, late_reading_pb2, reading_aggregate_pb2
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401  (pytest fixture)

EVENTS = 10_000
KEYS = 50


@pytest.fixture(scope="module")
def bootstrap(kafka_broker):  # noqa: F811
    created = kafka.ensure_topics(kafka_broker.bootstrap)
    assert topics.IOT_AGGREGATES.name in created or not created
    # Creating again is a no-op, not an error.
    assert kafka.ensure_topics(kafka_broker.bootstrap) == []
    return kafka_broker.bootstrap


def aggregate(sequence: int) -> reading_aggregate_pb2.ReadingAggregate:
    """The event with this sequence number: content derived from it, so the reader can check it."""
    device = sequence % KEYS
    return reading_aggregate_pb2.ReadingAggregate(
        scope=reading_aggregate_pb2.AGGREGATE_SCOPE_DEVICE,
        key_id=f"device-{device:03d}",
        site_id=f"site-{device % 5}",
        window_start_time=timestamp_pb2.Timestamp(seconds=1_700_000_000 + 60 * (sequence // KEYS)),
        window_end_time=timestamp_pb2.Timestamp(seconds=1_700_000_060 + 60 * (sequence // KEYS)),
        reading_count=sequence % 97 + 1,
        temperature_celsius=reading_aggregate_pb2.MetricStats(
            count=sequence % 97 + 1, min=-5.0 + device, max=30.5 + device, mean=sequence / 7.0
        ),
        version=sequence,
    )


def consume(bootstrap: str, topic: str, group: str, expected: int, timeout: float = 90.0):
    consumer = Consumer(kafka.consumer_config(bootstrap, group))
    consumer.subscribe([topic])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for record in consumer.consume(num_messages=1000, timeout=1.0):
                assert record.error() is None, record.error()
                out.append(record)
        # Anything beyond `expected` would be a duplicate: give it a moment to show up.
        for record in consumer.consume(num_messages=1000, timeout=2.0):
            out.append(record)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return out


def test_ten_thousand_events_round_trip_in_order_per_key(bootstrap):
    config = kafka.producer_config(bootstrap)
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    producer = Producer(config)
    failures = []
    for sequence in range(EVENTS):
        kafka.produce(producer, topics.IOT_AGGREGATES, aggregate(sequence),
                      on_delivery=lambda err, _msg: err and failures.append(err))
        producer.poll(0)
    assert producer.flush(60) == 0, "records still queued after 60 s"
    assert failures == []

    received = consume(bootstrap, topics.IOT_AGGREGATES.name, "roundtrip-test", EVENTS)
    assert len(received) == EVENTS, f"received {len(received)} of {EVENTS}"

    per_key = collections.defaultdict(list)
    partitions_of_key = collections.defaultdict(set)
    for record in received:
        message = records.decode(topics.IOT_AGGREGATES, record.value(), record.headers())
        assert message == aggregate(message.version), f"content differs for sequence {message.version}"
        assert record.key() == topics.IOT_AGGREGATES.key_of(message)
        assert records.header(record.headers(), records.FINGERPRINT_HEADER) == records.fingerprint(message.DESCRIPTOR)
        per_key[record.key()].append(message.version)
        partitions_of_key[record.key()].add(record.partition())

    assert sorted(v for versions in per_key.values() for v in versions) == list(range(EVENTS))
    assert len(per_key) == KEYS
    for key, versions in per_key.items():
        assert versions == sorted(versions), f"key {key!r} out of order"
        assert len(partitions_of_key[key]) == 1
    # The key spreads the load: more than one partition is used.
    assert len({p for ps in partitions_of_key.values() for p in ps}) > 1


def test_malformed_records_go_to_the_dead_letter_topic_and_valid_ones_flow(bootstrap):
    topic = topics.IOT_LATE_READINGS
    producer = Producer(kafka.producer_config(bootstrap))

    def late(n):
        return late_reading_pb2.LateReading(
            reading=device_reading_pb2.DeviceReading(reading_id=f"r-{n}", device_id="device-001"),
            reason=late_reading_pb2.LATE_REASON_WINDOW_CLOSED,
        )

    schema = [(records.SCHEMA_HEADER, late(0).DESCRIPTOR.full_name.encode())]
    kafka.produce(producer, topic, late(1))
    producer.produce(topic.name, key=b"device-001", value=b"\xff\xfe not protobuf", headers=schema)
    kafka.produce(producer, topic, late(2))
    producer.produce(topic.name, key=b"device-001", value=late(99).SerializeToString())  # no contract header
    producer.produce(topic.name, key=b"device-001", value=b"\x08\x01",
                     headers=[(records.SCHEMA_HEADER, b"datapipelines.iot.v1.ReadingAggregate")])
    kafka.produce(producer, topic, late(3))
    assert producer.flush(30) == 0

    consumer = Consumer(kafka.consumer_config(bootstrap, "dlq-test"))
    consumer.assign([TopicPartition(topic.name, 0, 0)])
    router = Producer(kafka.producer_config(bootstrap))
    valid = []
    seen = 0
    deadline = time.monotonic() + 60
    while seen < 6 and time.monotonic() < deadline:
        for record in consumer.consume(num_messages=10, timeout=1.0):
            seen += 1
            message = kafka.decode_or_dead_letter(router, topic, record, stage="roundtrip-test")
            if message is not None:
                valid.append(message.reading.reading_id)
    consumer.close()
    assert router.flush(30) == 0
    assert valid == ["r-1", "r-2", "r-3"]

    dead = consume(bootstrap, topic.name + ".dlq", "dlq-reader", 3, timeout=60)
    reasons = [records.header(r.headers(), records.DLQ_REASON) for r in dead]
    assert reasons == ["undecodable-payload", "missing-schema-header", "wrong-schema"]
    first = dead[0]
    assert first.value() == b"\xff\xfe not protobuf"
    assert records.header(first.headers(), records.DLQ_TOPIC) == topic.name
    assert records.header(first.headers(), records.DLQ_OFFSET) == "1"
    assert records.header(first.headers(), records.DLQ_STAGE) == "roundtrip-test"
    assert "not a valid datapipelines.iot.v1.LateReading" in records.header(first.headers(), records.DLQ_DETAIL)
