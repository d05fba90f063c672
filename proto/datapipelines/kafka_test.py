"""Topic creation from the registry: replication comes from the broker unless a topic declares it.

The pure part (`replication_of`) is checked on plain values; `ensure_topics` against a real
single-node broker, whose `default.replication.factor` is 1 (the 3-node profile, where the same
call gives 3 replicas, is checked in tests/cluster/kafka_fault_test.py).
"""

import types

import pytest
from confluent_kafka.admin import AdminClient

from datapipelines import kafka, topics
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401  (pytest fixture)


def test_registry_topics_take_the_broker_default():
    for topic in topics.ALL:
        assert kafka.replication_of(topic) == kafka.BROKER_DEFAULT_REPLICATION == -1


def test_a_declared_replication_factor_wins():
    assert kafka.replication_of(types.SimpleNamespace(name="declared", replication_factor=2)) == 2


@pytest.mark.parametrize("bad", [0, -3, "3", 2.0])
def test_a_bad_declaration_is_refused_with_the_topic_name(bad):
    with pytest.raises(ValueError, match="topic declared declares replication factor"):
        kafka.replication_of(types.SimpleNamespace(name="declared", replication_factor=bad))


def test_created_topics_have_the_single_broker_default(kafka_broker):  # noqa: F811
    wanted = [topics.BEHAVIOUR_EVENTS, kafka.dead_letter_topic(topics.BEHAVIOUR_EVENTS)]
    created = kafka.ensure_topics(kafka_broker.bootstrap, wanted)
    assert created == sorted(t.name for t in wanted)
    assert kafka.ensure_topics(kafka_broker.bootstrap, wanted) == []
    described = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=15).topics
    for topic in wanted:
        partitions = described[topic.name].partitions
        assert len(partitions) == topic.partitions
        assert all(len(p.replicas) == 1 for p in partitions.values())
