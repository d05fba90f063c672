"""A real Kafka 4 broker from @maven_kafka: topics, records, clean stop, data kept across restarts."""

import os
import time
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from deploy.kafka.broker import CLEAN_EXIT_CODES
from tests.fixtures.kafka_broker import kafka_broker, kafka_broker_factory  # noqa: F401 (fixtures)


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30).values():
        future.result(timeout=30)


def produce(bootstrap: str, topic: str, records) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    failures = []
    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=lambda err, _msg: err and failures.append(err))
    assert producer.flush(30) == 0, "records still unacknowledged after 30 s"
    assert failures == []


def consume(bootstrap: str, topic: str, count: int, timeout: float = 60.0):
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "broker-test-" + uuid.uuid4().hex,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    received = []
    deadline = time.monotonic() + timeout
    try:
        while len(received) < count and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            received.append((message.key(), message.value()))
    finally:
        consumer.close()
    return received


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); /proc says whether it has exited.
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_topic_produce_consume_round_trip(kafka_broker):
    assert kafka_broker.version.startswith("4.")
    metadata = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
    assert list(metadata.brokers) == [1]
    assert metadata.cluster_id == kafka_broker.cluster_id

    create_topic(kafka_broker.bootstrap, "broker.test.round_trip", partitions=1)
    records = [(b"device-%d" % i, b"reading-%d" % i) for i in range(20)]
    produce(kafka_broker.bootstrap, "broker.test.round_trip", records)
    assert consume(kafka_broker.bootstrap, "broker.test.round_trip", len(records)) == records


def test_auto_create_is_off(kafka_broker):
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "message.timeout.ms": 3000})
    errors = []
    producer.produce("broker.test.never_declared", value=b"x", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(10)
    assert errors and errors[0] is not None
    assert "broker.test.never_declared" not in admin.list_topics(timeout=10).topics


def test_stop_is_clean_and_restart_keeps_data(kafka_broker_factory, tmp_path):
    state = tmp_path / "state"
    first = kafka_broker_factory(state_dir=state)
    ports = {"port": first.config.port, "controller_port": first.config.controller_port}
    create_topic(first.bootstrap, "broker.test.durable", partitions=2)
    records = [(b"k%d" % i, b"v%d" % i) for i in range(10)]
    produce(first.bootstrap, "broker.test.durable", records)

    pid = first.pid
    assert first.stop() in CLEAN_EXIT_CODES
    assert process_is_gone(pid)
    assert "[BrokerServer id=1] shut down completed" in first.server_log.read_text()  # a controlled shutdown

    second = kafka_broker_factory(state_dir=state, **ports)
    assert second.cluster_id == first.cluster_id
    received = consume(second.bootstrap, "broker.test.durable", len(records))
    assert sorted(received) == sorted(records)
    assert second.stop() in CLEAN_EXIT_CODES
