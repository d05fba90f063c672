"""The topics module is the single, consistent declaration of every topic."""

import re

import pytest

from datapipelines import topics
from datapipelines.behaviour.v1 import user_event_pb2
from datapipelines.iot.v1 import reading_aggregate_pb2


def test_names_are_unique_and_well_formed():
    names = [t.name for t in topics.ALL]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"(__)?[a-z]+(-[a-z]+)?(\.[a-z0-9]+)+", name), name


def test_protobuf_topics_resolve_their_message_class():
    for topic in topics.ALL:
        if topic.value_format == topics.PROTOBUF:
            assert topic.message_class().DESCRIPTOR.full_name == topic.message_type
            assert topic.key is not None, f"{topic.name} must derive its key"
        else:
            with pytest.raises(TypeError):
                topic.message_class()


def test_every_protobuf_topic_is_versioned_in_its_name():
    for topic in topics.SOURCES:
        if topic.value_format == topics.PROTOBUF:
            assert topic.name.endswith(".v1"), topic.name


def test_keys_follow_the_declared_fields():
    aggregate = reading_aggregate_pb2.ReadingAggregate(scope=reading_aggregate_pb2.AGGREGATE_SCOPE_SITE, key_id="site-7")
    assert topics.IOT_AGGREGATES.key_of(aggregate) == b"2:site-7"
    event = user_event_pb2.UserEvent(user_id="u1", anonymous_id="a1")
    assert topics.BEHAVIOUR_EVENTS.key_of(event) == b"a1"
    event.session_id = "s1"
    assert topics.BEHAVIOUR_EVENTS.key_of(event) == b"s1"


def test_dead_letter_topics_keep_bytes_longer():
    dlq = topics.get("behaviour.events.v1.dlq")
    assert dlq.value_format == topics.RAW
    assert dlq.retention_ms > topics.BEHAVIOUR_EVENTS.retention_ms


def test_unknown_topic_names_the_known_ones():
    with pytest.raises(KeyError, match="iot.aggregates.v1"):
        topics.get("iot.aggregates.v9")


def test_config_carries_retention_and_cleanup():
    config = topics.IOT_AGGREGATES.config()
    assert config == {"cleanup.policy": "delete", "retention.ms": str(7 * topics.DAY_MS)}


def test_state_and_connect_topics_are_compacted_and_kept():
    for topic in (topics.IOT_AGGREGATOR_CHANGELOG, topics.CONNECT_CONFIGS, topics.CONNECT_OFFSETS, topics.CONNECT_STATUS):
        assert topic.cleanup_policy == "compact" and topic.retention_ms == -1, topic.name
    assert topics.CONNECT_CONFIGS.partitions == 1
    # State of input partition N lives in changelog partition N.
    assert topics.IOT_AGGREGATOR_CHANGELOG.partitions == topics.IOT_CDC_READINGS.partitions


def test_only_reader_topics_have_dead_letters():
    dead = {t.name for t in topics.DEAD_LETTERS}
    assert dead == {t.name + ".dlq" for t in topics.SOURCES}
    assert not any(t.name + ".dlq" in dead for t in topics.INTERNAL)
