"""Records held in the pipeline's dead-letter and late-data topics, counted by reading them.

The dashboards show how many records each stage set aside (dead letters with a reason, readings
or events behind the watermark) across the whole pipeline, not only this service's own dead
letters. Watermarks alone would over-count: the aggregator writes its dead letters and late
readings in Kafka transactions, and every commit marker takes an offset. So a dedicated
read_committed consumer (no group subscription, nothing committed) reads every partition of
these topics from the beginning once and then only what is new at each call; a call reads for
at most `read_budget_seconds` and says whether it caught up. Answers are cached for
`ttl_seconds`, so pages polling every second cost one read per second at most. A count is of
the records the topics hold: retention (30 days for dead letters) drops older ones.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from datapipelines import kafka, topics

# (topic, kind, the topic whose records it sets aside)
SIDE_TOPICS: Tuple[Tuple[topics.Topic, str, str], ...] = tuple(
    [(t, "dead-letters", t.name[: -len(".dlq")]) for t in topics.DEAD_LETTERS]
    + [(topics.IOT_LATE_READINGS, "late", topics.IOT_CDC_READINGS.name),
       (topics.BEHAVIOUR_LATE_EVENTS, "late", topics.BEHAVIOUR_EVENTS.name)]
)


class TopicCountError(RuntimeError):
    """Kafka did not answer; the message names the bootstrap and what to do."""


class TopicCounts:
    def __init__(self, bootstrap: str, side_topics: Sequence[tuple] = SIDE_TOPICS, ttl_seconds: float = 1.0,
                 read_budget_seconds: float = 2.0, timeout_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.bootstrap = bootstrap
        self.side_topics = tuple(side_topics)
        self.ttl_seconds = ttl_seconds
        self.read_budget_seconds = read_budget_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._consumer: Optional[Consumer] = None
        self._assigned: set = set()  # (topic, partition)
        self._records: Dict[str, int] = {}
        self._cached: Optional[dict] = None
        self._cached_at = 0.0

    def counts(self) -> dict:
        """{"caught_up": bool, "topics": [{topic, kind, source, records, exists}, ...]}."""
        with self._lock:
            if self._cached is not None and self.clock() - self._cached_at < self.ttl_seconds:
                return self._cached
            try:
                answer = self._read()
            except KafkaException as err:
                raise TopicCountError("Kafka at %s did not answer (%s); is the broker running? "
                                      "(bazel run //deploy:up)" % (self.bootstrap, err)) from None
            self._cached, self._cached_at = answer, self.clock()
            return answer

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(kafka.consumer_config(
                self.bootstrap, "analytics-topic-counts",
                **{"client.id": "analytics-topic-counts", "fetch.wait.max.ms": 100}))
        return self._consumer

    def _read(self) -> dict:
        client = self._client()
        metadata = client.list_topics(timeout=self.timeout_seconds)
        existing = set()
        new = []
        for topic, _, _ in self.side_topics:
            described = metadata.topics.get(topic.name)
            if described is None or described.error is not None:
                continue
            existing.add(topic.name)
            for partition in sorted(described.partitions):
                if (topic.name, partition) not in self._assigned:
                    new.append(TopicPartition(topic.name, partition, OFFSET_BEGINNING))
        if new:
            client.incremental_assign(new)
            self._assigned.update((tp.topic, tp.partition) for tp in new)
        caught_up = self._consume_new(client)
        rows = [{"topic": topic.name, "kind": kind, "source": source,
                 "records": self._records.get(topic.name, 0), "exists": topic.name in existing}
                for topic, kind, source in self.side_topics]
        return {"caught_up": caught_up, "topics": rows}

    def _consume_new(self, client: Consumer) -> bool:
        """Reads until every assigned partition reached its end (True) or the budget ran out."""
        if not self._assigned:
            return True
        ends = {}
        for name, partition in self._assigned:
            _, high = client.get_watermark_offsets(TopicPartition(name, partition), timeout=self.timeout_seconds,
                                                   cached=False)
            ends[(name, partition)] = high
        deadline = self.clock() + self.read_budget_seconds
        while True:
            for record in client.consume(num_messages=10_000, timeout=0.1):
                if record.error() is None:
                    self._records[record.topic()] = self._records.get(record.topic(), 0) + 1
            positions = client.position([TopicPartition(n, p) for n, p in self._assigned])
            # A partition with nothing fetched yet has no position (negative); one at its end is done.
            behind = [tp for tp in positions if ends[(tp.topic, tp.partition)] > max(tp.offset, 0)]
            if not behind:
                return True
            if self.clock() >= deadline:
                return False

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
