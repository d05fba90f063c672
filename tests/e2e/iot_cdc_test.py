"""IoT CDC pipeline end to end, on real components only:

    PostgreSQL -> Debezium on Kafka Connect -> Kafka -> aggregator -> analytics service (chdb)

The test writes a known set of readings into PostgreSQL (inserts, corrections, deletions, late
readings), then checks every aggregate the analytics service serves against a recomputation
made here from the rows the test wrote, never from pipeline output. The fault test kills the
aggregator and then the analytics service with SIGKILL while changes stream, restarts them and
checks again: nothing lost, nothing doubled. All tests share one set of services.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from datapipelines import kafka, records, topics
from datapipelines.iot.v1 import late_reading_pb2
from deploy.pipelines.iot import IotPipeline, IotPipelineConfig
from tests.e2e.iot_reference import Source, wait_until_equal


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    with IotPipeline(IotPipelineConfig(state_dir=tmp_path_factory.mktemp("iot-e2e")), say=print) as running:
        print("pipeline started: " + ", ".join(f"{k}={v:.1f}s" for k, v in running.timings.items()))
        yield running


def read_topic(bootstrap: str, topic: str) -> list:
    consumer = Consumer(kafka.consumer_config(bootstrap, f"e2e-reader-{time.time_ns()}"))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out, deadline = [], time.monotonic() + 30
    while sum(1 for r in out) < sum(ends.values()) and time.monotonic() < deadline:
        out += [r for r in consumer.consume(500, timeout=0.5) if r.error() is None]
    consumer.close()
    return out


@pytest.fixture(scope="module")
def source(pipeline):
    return Source(pipeline.app_dsn)


def test_aggregates_equal_a_recomputation_from_the_source_rows(pipeline, source):
    for minute in range(10):
        source.insert_minute(minute)
    # Corrections and deletions in minute 9, whose windows are all still open.
    minute9 = source.in_minute(9)
    source.correct(minute9[0], 55.5)
    source.correct(minute9[7], -3.25)
    source.delete(minute9[3])
    source.delete(minute9[12])
    # Readings from minute 1 arrive now: every window they belong to closed long ago.
    source.insert_minute(1, late=True)
    # More time passes: minute 9's tumbling windows close.
    for minute in (10, 11):
        source.insert_minute(minute)

    windows = wait_until_equal(pipeline, source)
    print(f"{windows} windows served by the analytics service equal the recomputation "
          f"({len(source.rows)} source rows, {len(source.late_ids)} late)")

    late = [records.decode(topics.IOT_LATE_READINGS, r.value(), r.headers())
            for r in read_topic(pipeline.bootstrap, topics.IOT_LATE_READINGS.name)]
    assert sorted(int(m.reading.reading_id) for m in late) == sorted(source.late_ids)
    assert {m.reason for m in late} == {late_reading_pb2.LATE_REASON_WINDOW_CLOSED}


def test_malformed_change_events_go_to_the_dead_letter_topic(pipeline, source):
    producer = Producer(kafka.producer_config(pipeline.bootstrap))
    bad = [b"{not json", b'{"op": "c", "after": {"reading_id": "x"}}', b"[]"]
    for value in bad:
        producer.produce(topics.IOT_CDC_READINGS.name, key=b'{"site_id":"site-e2e-1"}', value=value)
    producer.flush(30)
    source.insert_minute(12)  # valid changes after the bad ones still flow

    wait_until_equal(pipeline, source)
    deadline = time.monotonic() + 60
    dead = []
    while time.monotonic() < deadline:
        dead = [r for r in read_topic(pipeline.bootstrap, topics.IOT_CDC_READINGS.name + ".dlq") if r.value() in bad]
        if len(dead) == len(bad):
            break
        time.sleep(1)
    assert sorted(r.value() for r in dead) == sorted(bad)
    for record in dead:
        assert records.header(record.headers(), records.DLQ_REASON)
        assert records.header(record.headers(), records.DLQ_TOPIC) == topics.IOT_CDC_READINGS.name
        assert records.header(record.headers(), records.DLQ_OFFSET) is not None


def test_killed_aggregator_and_analytics_lose_and_double_nothing(pipeline, source):
    writer_done = threading.Event()
    failures = []

    def write():
        try:
            for minute in range(13, 25):
                source.insert_minute(minute)
                if minute == 16:
                    source.correct(source.in_minute(16)[2], 31.0)
                time.sleep(0.4)
        except Exception as exc:  # reported by the assertion below
            failures.append(exc)
        finally:
            writer_done.set()

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(1.5)
    assert pipeline.aggregator.kill9() == -9
    print("aggregator killed (SIGKILL) mid-stream")
    pipeline.start_aggregator()
    time.sleep(1.5)
    assert pipeline.analytics.kill9() == -9
    print("analytics service killed (SIGKILL) mid-stream")
    pipeline.start_analytics()
    thread.join(120)
    assert writer_done.is_set() and not failures, failures

    windows = wait_until_equal(pipeline, source)
    print(f"after two crashes: {windows} windows equal the recomputation (0 lost, 0 doubled)")
