"""Kafka clients with the project's defaults, and topic creation from the topics module.

Producers are idempotent with acks=all, so a retried send is written once and in order per
partition. Consumers commit only what the caller has processed (auto commit off).
"""

from __future__ import annotations

import logging
from typing import Iterable

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from google.protobuf.message import Message

from datapipelines import records, topics

log = logging.getLogger(__name__)


def producer_config(bootstrap: str, **overrides) -> dict:
    config = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 60_000,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap: str, group_id: str, **overrides) -> dict:
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    }
    config.update(overrides)
    return config


def produce(producer: Producer, topic: topics.Topic, message: Message, on_delivery=None) -> None:
    """Queue `message` on `topic` with its key and contract headers (call poll/flush as usual)."""
    record = records.encode(topic, message)
    while True:
        try:
            producer.produce(
                record.topic, value=record.value, key=record.key, headers=record.headers, on_delivery=on_delivery
            )
            return
        except BufferError:  # local queue full: serve delivery reports, then retry
            producer.poll(0.1)


# CreateTopics' "use the broker's default.replication.factor" (KIP-464).
BROKER_DEFAULT_REPLICATION = -1


def replication_of(topic: topics.Topic) -> int:
    """The replication factor to create `topic` with: its own declaration, else the broker's default.

    The default lets one configuration serve both profiles: a single broker (default 1) and a
    3-node cluster (default 3, min ISR 2 from the brokers' config).
    """
    declared = getattr(topic, "replication_factor", None)
    if declared is None:
        return BROKER_DEFAULT_REPLICATION
    if not isinstance(declared, int) or declared < 1:
        raise ValueError(f"topic {topic.name} declares replication factor {declared!r}: use an integer >= 1")
    return declared


def ensure_topics(bootstrap: str, wanted: Iterable[topics.Topic] = topics.ALL, timeout: float = 30.0) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Replication: a topic's declared factor, else the broker's `default.replication.factor`.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in wanted if t.name not in existing]
    if not missing:
        return []
    new_topics = [
        NewTopic(t.name, num_partitions=t.partitions, replication_factor=replication_of(t), config=t.config())
        for t in missing
    ]
    futures = admin.create_topics(
        new_topics,
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                continue
            raise RuntimeError(f"could not create topic {name} on {bootstrap}: {exc}") from exc
    log.info("created topics %s on %s", ", ".join(sorted(created)), bootstrap)
    return sorted(created)


def dead_letter_topic(source: topics.Topic) -> topics.Topic:
    return topics.get(source.name + ".dlq")


def decode_or_dead_letter(producer: Producer, topic: topics.Topic, record, stage: str) -> Message | None:
    """Decode a consumed record of `topic`; a malformed one goes to the topic's DLQ with the reason.

    Returns the message, or None when the record was dead-lettered (the caller carries on
    with the next record; the DLQ write is flushed with the caller's next flush/commit).
    """
    try:
        return records.decode(topic, record.value(), record.headers())
    except records.MalformedRecord as error:
        dlq = dead_letter_topic(topic)
        headers = records.dead_letter_headers(
            error, record.topic(), record.partition(), record.offset(), stage, record.headers()
        )
        log.warning(
            "dead-lettered %s[%d]@%d to %s: %s", record.topic(), record.partition(), record.offset(), dlq.name, error
        )
        while True:
            try:
                producer.produce(dlq.name, value=record.value(), key=record.key(), headers=headers)
                return None
            except BufferError:
                producer.poll(0.1)
