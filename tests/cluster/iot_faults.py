"""The IoT CDC pipeline (PostgreSQL -> Debezium on Kafka Connect -> Kafka -> aggregator ->
analytics service) on a multi-node Kafka cluster loses a broker (SIGKILL) while changes stream.

The victim leads partition 0 of the change-event topic: Debezium's exactly-once source producer
writes there and the aggregator reads it in its consume-transform-produce transactions, so both
must move to the new leader and the transaction coordinators on the node must fail over. What
must hold afterwards: every window the analytics service serves equals the recomputation from
the rows the scenario wrote into PostgreSQL (tests/e2e/iot_reference.py), none lost, none doubled.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from confluent_kafka.admin import AdminClient

from datapipelines import topics
from tests.e2e.iot_reference import Source, wait_until_equal

# Minutes of readings before the kill (they must be served first: the pipeline flows) and while it happens.
BEFORE, DURING = range(0, 4), range(4, 16)


def _leader(bootstrap: str, topic: str, partition: int) -> int:
    return AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=30).topics[topic].partitions[partition].leader


def run(pipeline, kill_broker: Callable[[int], None]) -> str:
    """`pipeline` is a started deploy.pipelines.iot.IotPipeline on the cluster; `kill_broker(node_id)`
    SIGKILLs one of its nodes. Fails the test on any difference; returns a one-line summary."""
    source = Source(pipeline.app_dsn)
    for minute in BEFORE:
        source.insert_minute(minute)
    windows_before = wait_until_equal(pipeline, source, timeout=240)

    failures = []

    def write():
        try:
            for minute in DURING:
                source.insert_minute(minute)
                if minute == 8:
                    source.correct(source.in_minute(8)[2], 31.0)
                    source.delete(source.in_minute(8)[5])
                time.sleep(0.4)
        except Exception as exc:  # reported by the assertion below
            failures.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(1.5)
    victim = _leader(pipeline.bootstrap, topics.IOT_CDC_READINGS.name, 0)
    kill_broker(victim)
    writer.join(300)
    assert not writer.is_alive() and not failures, failures

    windows = wait_until_equal(pipeline, source, timeout=300)
    summary = ("iot: %d windows equal the recomputation before, %d after broker %d (leader of %s/0) was killed; "
               "%d source rows" % (windows_before, windows, victim, topics.IOT_CDC_READINGS.name, len(source.rows)))
    print(summary)
    return summary
