"""Counting the side topics on a real broker: transactional writes (commit markers take offsets,
aborted records must not count), a topic that does not exist, and a broker that is not there."""

import dataclasses
import time

import pytest
from confluent_kafka import Producer

from datapipelines import kafka, topics
from services.analytics.topic_counts import TopicCountError, TopicCounts
from tests.fixtures.kafka_broker import free_ports, kafka_broker  # noqa: F401  (pytest fixture)

CDC_DLQ = topics.dead_letters_of(topics.IOT_CDC_READINGS)
LATE = topics.IOT_LATE_READINGS
MISSING = dataclasses.replace(CDC_DLQ, name="not.created.dlq")


def rows_by_topic(answer):
    return {row["topic"]: row for row in answer["topics"]}


def test_counts_committed_records_only_and_reads_incrementally(kafka_broker):  # noqa: F811
    bootstrap = kafka_broker.bootstrap
    kafka.ensure_topics(bootstrap, [CDC_DLQ, LATE])
    producer = Producer(kafka.producer_config(bootstrap, **{"transactional.id": "topic-counts-test"}))
    producer.init_transactions(30)

    def transaction(count, commit=True, topic=CDC_DLQ):
        producer.begin_transaction()
        for number in range(count):
            producer.produce(topic.name, key=b"k%d" % number, value=b"v")
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            producer.abort_transaction(30)

    transaction(2)
    transaction(5, commit=False)
    transaction(1)
    transaction(4, topic=LATE)
    counter = TopicCounts(bootstrap, side_topics=[(CDC_DLQ, "dead-letters", "iot.cdc.readings"),
                                                  (LATE, "late", "iot.cdc.readings"),
                                                  (MISSING, "dead-letters", "not.created")],
                          ttl_seconds=0)
    try:
        answer = counter.counts()
        rows = rows_by_topic(answer)
        assert answer["caught_up"] is True
        assert rows[CDC_DLQ.name]["records"] == 3 and rows[CDC_DLQ.name]["exists"] is True
        assert rows[LATE.name]["records"] == 4 and rows[LATE.name]["kind"] == "late"
        assert rows["not.created.dlq"] == {"topic": "not.created.dlq", "kind": "dead-letters", "source": "not.created",
                                           "records": 0, "exists": False}
        transaction(3)
        rows = rows_by_topic(counter.counts())
        assert rows[CDC_DLQ.name]["records"] == 6 and rows[LATE.name]["records"] == 4
    finally:
        counter.close()
        producer.flush(10)


def test_cached_answer_within_the_ttl(kafka_broker):  # noqa: F811
    now = [100.0]
    counter = TopicCounts(kafka_broker.bootstrap, ttl_seconds=5, clock=lambda: now[0])
    try:
        first = counter.counts()
        assert counter.counts() is first
        now[0] += 6
        assert counter.counts() is not first
        assert {row["topic"] for row in first["topics"]} >= {"iot.aggregates.v1.dlq", "behaviour.events.v1.dlq",
                                                             "iot.readings.late.v1", "behaviour.events.late.v1"}
    finally:
        counter.close()


def test_an_absent_broker_is_a_clear_error():
    port = free_ports(1)[0]
    counter = TopicCounts("127.0.0.1:%d" % port, timeout_seconds=2)
    started = time.monotonic()
    try:
        with pytest.raises(TopicCountError, match="127.0.0.1:%d did not answer" % port):
            counter.counts()
    finally:
        counter.close()
    assert time.monotonic() - started < 30
