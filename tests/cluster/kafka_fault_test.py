"""A 3-node Kafka cluster loses a broker (SIGKILL) while an idempotent acks=all producer writes.

What must hold: every acknowledged record is in the topic exactly once, records of one key are in
the order they were produced, and nothing appears that was never produced. The killed node is
the leader of a partition, so the test also covers a leader election under load; afterwards the
node is restarted on its kept storage and must catch up into every ISR again.
"""

import threading
import time
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from datapipelines import kafka, topics
from tests.fixtures.kafka_cluster import kafka_cluster_factory  # noqa: F401 (a fixture)

TOPIC = "cluster.fault.orders"
PARTITIONS = 3
KEYS = 12
RECORDS = 12000
KILL_AT = RECORDS // 3


def _partitions(admin: AdminClient, topic: str, expected: int = 0, timeout: float = 60.0):
    """The topic's partitions once metadata shows at least `expected` of them, each with a leader
    (a topic just created may be missing from a broker's metadata for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(topic, timeout=15).topics.get(topic)
        partitions = metadata.partitions if metadata is not None and metadata.error is None else {}
        if partitions and len(partitions) >= expected and all(p.leader >= 0 for p in partitions.values()):
            return partitions
        assert time.monotonic() < deadline, "topic %s: metadata shows %d partitions with leaders after %.0f s" % (
            topic, len(partitions), timeout)
        time.sleep(0.5)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out after %.0f s waiting for %s" % (timeout, what)
        time.sleep(0.5)


def _consume_all(bootstrap: str, topic: str, partitions: int):
    """Every record of `topic` up to the current high watermarks, partition by partition."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "cluster-fault-" + uuid.uuid4().hex,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)}
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        records = defaultdict(list)
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 120
        while len(done) < partitions:
            assert time.monotonic() < deadline, "could not read up to the high watermarks %s" % ends
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            records[message.partition()].append((message.key().decode(), int(message.value())))
            if message.offset() + 1 >= ends[message.partition()]:
                done.add(message.partition())
        return records
    finally:
        consumer.close()


def test_acknowledged_records_survive_a_broker_sigkill(kafka_cluster_factory):
    cluster = kafka_cluster_factory(nodes=3)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})

    # The cluster profile's defaults, as the brokers report them.
    broker_config = admin.describe_configs([ConfigResource(ConfigResource.Type.BROKER, "1")])
    values = list(broker_config.values())[0].result(timeout=30)
    assert values["min.insync.replicas"].value == "2"
    assert values["default.replication.factor"].value == "3"

    # Topics created by our own code (the registry through ensure_topics) get the cluster's
    # replication factor and min ISR from the brokers' config.
    ours = [topics.BEHAVIOUR_EVENTS, kafka.dead_letter_topic(topics.BEHAVIOUR_EVENTS)]
    assert kafka.ensure_topics(cluster.bootstrap, ours) == sorted(t.name for t in ours)
    for topic in ours:
        assert all(len(p.replicas) == 3 for p in _partitions(admin, topic.name).values()), topic.name
    topic_config = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, ours[0].name)])
    assert list(topic_config.values())[0].result(timeout=30)["min.insync.replicas"].value == "2"

    # Replication factor from the broker default (-1), like a pipeline's topic declaration would.
    for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, -1)], operation_timeout=30).values():
        future.result(timeout=60)
    partitions = _partitions(admin, TOPIC, PARTITIONS)
    assert len(partitions) == PARTITIONS and all(len(p.replicas) == 3 for p in partitions.values())

    acknowledged, failures = [], []
    acked_lock = threading.Lock()

    def on_delivery(err, message):
        with acked_lock:
            if err is not None:
                failures.append(err)
            else:
                acknowledged.append((message.key().decode(), int(message.value())))

    producer = Producer({
        "bootstrap.servers": cluster.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        # Long enough to ride out a leader election on a loaded machine: nothing should fail.
        "message.timeout.ms": 180000,
    })
    victim = partitions[0].leader
    killed_at = None
    sequence = defaultdict(int)
    for i in range(RECORDS):
        key = "customer-%02d" % (i % KEYS)
        producer.produce(TOPIC, key=key.encode(), value=str(sequence[key]).encode(), on_delivery=on_delivery)
        sequence[key] += 1
        if i % 50 == 0:
            producer.poll(0.01)  # at most ~5k records/s: the rest is produced across the fail-over
        if i == KILL_AT:
            # Some records acknowledged, others in flight: the victim dies now, two thirds remain.
            _wait(lambda: producer.poll(0.1) >= 0 and len(acknowledged) >= KILL_AT // 2, 120,
                  "the first acknowledgements")
            killed_at = i
            assert cluster.kill(victim) == -9
    assert killed_at == KILL_AT
    assert producer.flush(240) == 0, "records still unacknowledged after 240 s"

    assert failures == []
    assert len(acknowledged) == RECORDS
    # The survivors took over every partition the victim led.
    _wait(lambda: all(p.leader != victim and victim not in p.isrs for p in _partitions(admin, TOPIC).values()),
          60, "the survivors to lead every partition without node %d" % victim)

    records = _consume_all(cluster.bootstrap, TOPIC, PARTITIONS)
    consumed = [record for part in records.values() for record in part]
    assert len(consumed) == len(set(consumed)), "duplicates in the topic"
    assert set(acknowledged) <= set(consumed), "acknowledged records lost: %d" % len(set(acknowledged) - set(consumed))
    produced = {(key, n) for key, count in sequence.items() for n in range(count)}
    assert set(consumed) <= produced
    for part in records.values():
        last = {}
        for key, n in part:
            assert n > last.get(key, -1), "key %s out of order: %d after %d" % (key, n, last[key])
            last[key] = n

    # The node comes back on its storage and catches up into every ISR.
    cluster.restart(victim)
    _wait(lambda: all(len(p.isrs) == 3 for p in _partitions(admin, TOPIC).values()), 120,
          "node %d to rejoin the ISRs" % victim)
