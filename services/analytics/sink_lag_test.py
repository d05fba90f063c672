"""The sink's lag gauge on in-memory fakes of the consumer and the store (pure logic).

Every assigned partition gets a sample, including partitions the consumer has not fetched from
yet (no position, no cached watermarks): those count from the assignment's start offset
against the end the broker reports. Unknown stays NaN, never 0.
"""

import math

from confluent_kafka import OFFSET_INVALID, TopicPartition

from services.analytics import sink
from services.analytics.metrics import Metrics
from services.analytics.store import QueryResult

TOPIC = sink.IOT_AGGREGATES.topic.name


class FakeStore:
    def __init__(self, stored):
        self.stored = stored  # (topic, partition) -> last stored offset

    def query(self, sql, params=None):
        return QueryResult(("topic", "kafka_partition", "last_offset"),
                           [(t, p, last) for (t, p), last in self.stored.items()])


class FakeConsumer:
    """committed offsets, positions, cached and broker watermarks per partition (None: no answer)."""

    def __init__(self, committed, positions=None, cached=None, broker=None):
        self.committed_offsets = committed
        self.positions = positions or {}
        self.cached = cached or {}
        self.broker = broker or {}
        self.assigned = None
        self.broker_queries = 0

    def committed(self, partitions, timeout=None):
        return [TopicPartition(tp.topic, tp.partition, self.committed_offsets.get(tp.partition, OFFSET_INVALID))
                for tp in partitions]

    def assign(self, partitions):
        self.assigned = [(tp.partition, tp.offset) for tp in partitions]

    def unassign(self):
        self.assigned = []

    def position(self, partitions):
        return [TopicPartition(tp.topic, tp.partition, self.positions.get(tp.partition, OFFSET_INVALID))
                for tp in partitions]

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        if cached:
            return self.cached.get(tp.partition, (OFFSET_INVALID, OFFSET_INVALID))
        self.broker_queries += 1
        return self.broker.get(tp.partition)


def make_sink(consumer, stored=None):
    return sink.Sink(FakeStore(stored or {}), consumer, producer=None, targets=sink.IOT_AGGREGATES, group="g",
                     metrics=Metrics())


def lags(the_sink):
    samples = {}
    for metric in the_sink.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "analytics_consumer_lag":
                samples[int(sample.labels["partition"])] = sample.value
    return samples


def assign(the_sink, consumer, partitions):
    the_sink._on_assign(consumer, [TopicPartition(TOPIC, p) for p in partitions])


def test_unfetched_partitions_count_from_their_start_offset():
    # 0: resumes from the store at 10; 1: committed at 5; 2: no offset at all (earliest = low watermark 2).
    consumer = FakeConsumer(committed={1: 5}, broker={0: (0, 10), 1: (0, 9), 2: (2, 7)})
    the_sink = make_sink(consumer, stored={(TOPIC, 0): 9})
    assign(the_sink, consumer, [0, 1, 2])
    assert consumer.assigned == [(0, 10), (1, -1000), (2, -1000)]
    assert lags(the_sink) == {0: 0, 1: 4, 2: 5}


def test_positions_and_cached_watermarks_win_once_fetched():
    consumer = FakeConsumer(committed={0: 3, 1: 3}, broker={0: (0, 8), 1: (0, 8)})
    the_sink = make_sink(consumer)
    assign(the_sink, consumer, [0, 1])
    assert lags(the_sink) == {0: 5, 1: 5}
    consumer.positions = {0: 8}  # partition 0 read to its end; partition 1 not fetched yet
    consumer.cached = {0: (OFFSET_INVALID, 8)}
    queries = consumer.broker_queries
    the_sink.update_lag()
    assert lags(the_sink) == {0: 0, 1: 5}
    assert consumer.broker_queries == queries + 1  # only the unfetched partition asks the broker


def test_a_partition_whose_end_is_unknown_is_nan_not_zero():
    consumer = FakeConsumer(committed={0: 4}, broker={0: (0, 4), 1: None})
    the_sink = make_sink(consumer)
    assign(the_sink, consumer, [0, 1])
    found = lags(the_sink)
    assert found[0] == 0 and math.isnan(found[1])
    assert not sum(found.values()) == 0  # a settle check summing the gauge cannot pass


def test_revoked_and_lost_partitions_leave_the_gauge():
    consumer = FakeConsumer(committed={0: 1, 1: 1}, broker={0: (0, 1), 1: (0, 1)})
    the_sink = make_sink(consumer)
    assign(the_sink, consumer, [0, 1])
    assert set(lags(the_sink)) == {0, 1}
    the_sink._on_revoke(consumer, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    assert lags(the_sink) == {} and the_sink.assignment == []
    assign(the_sink, consumer, [1])
    the_sink._on_lost(consumer, [TopicPartition(TOPIC, 1)])
    assert lags(the_sink) == {}
