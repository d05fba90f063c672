"""kill -9 of the analytics service mid-stream, restarted on the same chdb path each time:
after inserting a batch but before recording its offsets, after recording them but before the
Kafka commit, right after a commit, and at random moments while records keep arriving. At the
end the API shows exactly the latest version of every window: 0 lost, 0 doubled.

The expected rows are computed independently from the produced messages (plain Python).
"""

import math
import re
import random
import time

import pytest
from confluent_kafka import Consumer

from datapipelines import kafka
from services.analytics import sink, testing
from services.analytics.service_process import ServiceProcess, api_rows, produce
from services.analytics.store import ChdbStore
from tests.fixtures.kafka_broker import free_ports, kafka_broker  # noqa: F401  (pytest fixture)

BATCH = ["--batch-size", "150", "--batch-max-ms", "100"]


@pytest.fixture(scope="module")
def bootstrap(kafka_broker):  # noqa: F811
    kafka.ensure_topics(kafka_broker.bootstrap)
    return kafka_broker.bootstrap


def check(service, produced):
    expected = testing.latest(produced)
    rows = api_rows(service, expected)  # fails on a window returned twice
    assert len(rows) == len(expected), "lost %d windows" % (len(expected) - len(rows))
    for message in expected.values():
        want = testing.expected_row(message)
        got = rows[(message.scope, message.key_id, message.window_kind, want["window_start"], want["window_end"])]
        for column, value in want.items():
            if isinstance(value, float):
                assert math.isclose(got[column], value, rel_tol=1e-12), column
            else:
                assert got[column] == value, (column, got[column], value)


RANGE = re.compile(r"([\w.]+)\[(\d+)\]@(\d+)-(\d+)")


def crash_ranges(log):
    line = [line for line in log.splitlines() if "event=crash_point" in line][-1]
    return [(t, int(p), int(a), int(b)) for t, p, a, b in RANGE.findall(line.split("ranges=", 1)[1])]


def stored_ranges(log):
    out = []
    for line in log.splitlines():
        if "event=batch_stored" in line:
            out += [(t, int(p), int(a), int(b)) for t, p, a, b in RANGE.findall(line.split("ranges=", 1)[1])]
    return out


def covers(ranges, wanted):
    """Every wanted (topic, partition, first, last) lies inside some of `ranges` (it was read again)."""
    return all(any(t == wt and p == wp and a <= wa and wb <= b for t, p, a, b in ranges)
               or _union_covers([(a, b) for t, p, a, b in ranges if (t, p) == (wt, wp)], wa, wb)
               for wt, wp, wa, wb in wanted)


def _union_covers(spans, first, last):
    position = first
    for a, b in sorted(spans):
        if a <= position <= b:
            position = b + 1
    return position > last


def sink_partitions(bootstrap):
    """Every (topic, partition) the service consumes, as the lag gauge labels them."""
    consumer = Consumer(kafka.consumer_config(bootstrap, "analytics-fault-test-metadata"))
    try:
        metadata = consumer.list_topics(timeout=30)
        return {(target.topic.name, str(partition)) for target in sink.TARGETS
                for partition in metadata.topics[target.topic.name].partitions}
    finally:
        consumer.close()


def settled(service, bootstrap):
    """Everything produced so far is stored and committed: the lag gauge has a sample for every
    partition the service consumes (including ones it has not fetched from yet) and each is 0."""
    partitions = sink_partitions(bootstrap)
    seen = {}

    def done():
        status, _ = service.get("/readyz")
        seen.clear()
        seen.update({(labels["topic"], labels["partition"]): lag
                     for labels, lag in service.metric_samples("analytics_consumer_lag")})
        return status == 200 and set(seen) == partitions and all(lag == 0 for lag in seen.values())
    try:
        service.wait_for(done, what="consumer lag 0 on every partition")
    except AssertionError as err:
        raise AssertionError("lag samples %s, partitions %s\n%s" % (seen, sorted(partitions), err)) from None


def test_kill_9_at_every_point_of_a_batch_loses_and_doubles_nothing(bootstrap, tmp_path, capsys):
    data_dir = tmp_path / "chdb"
    messages = testing.stream(devices=20, sites=4, minutes=10, versions=3, seed=7, kinds=(1, 2))
    produce(bootstrap, messages)
    produced = list(messages)
    runs = []

    def run(name, crash_point=None, args=()):
        service = ServiceProcess(bootstrap, data_dir, free_ports(1)[0], tmp_path / ("%s.log" % name),
                                 extra_args=BATCH + list(args),
                                 env={"DP_ANALYTICS_CRASH_POINT": crash_point} if crash_point else {})
        runs.append(service)
        return service.start()

    try:
        # 1. Dies after its 2nd batch's rows are in the store, before the offsets row and the commit:
        #    the restart re-reads and re-inserts that batch; FINAL hides the doubles.
        crashed = run("crash-after-data-insert", "after-data-insert:2")
        assert crashed.wait_exit(120) == -9, crashed.log_text()[-3000:]
        assert "event=crash_point point=after-data-insert batch=2" in crashed.log_text()
        lost_commit = crash_ranges(crashed.log_text())

        # 2. Dies after recording the offsets of its 2nd batch, before committing them to Kafka:
        #    the restart resumes after the recorded range instead of replaying it.
        crashed = run("crash-after-offsets-insert", "after-offsets-insert:2")
        assert crashed.wait_exit(120) == -9, crashed.log_text()[-3000:]
        # The run that crashed in step 2 started by re-reading the batch step 1 never committed.
        assert covers(stored_ranges(crashed.log_text()), lost_commit), crashed.log_text()[-3000:]
        resumed = run("after-offsets-crash")
        resumed.wait_ready()
        assert "event=resume_from_store" in resumed.log_text()
        assert resumed.metric("analytics_skipped_offsets_total") > 0
        settled(resumed, bootstrap)
        check(resumed, produced)
        assert resumed.kill9() == -9

        # 3. New versions arrive; dies right after committing its 1st batch.
        newer = testing.stream(devices=20, sites=4, minutes=10, versions=5, seed=8, kinds=(1,))
        newer = [m for m in newer if m.version >= 4]  # versions 4 and 5 of every tumbling window
        produce(bootstrap, newer)
        produced += newer
        crashed = run("crash-after-commit", "after-commit:1")
        assert crashed.wait_exit(120) == -9, crashed.log_text()[-3000:]

        # 4. Random kill -9 from outside while records keep arriving.
        rng = random.Random(3)
        for round_number in range(3):
            service = run("random-kill-%d" % round_number)
            service.wait_ready()
            more = testing.stream(devices=20, sites=4, minutes=3, versions=7, seed=10 + round_number, kinds=(2,))
            more = [m for m in more if m.version == 3 + 2 * round_number or m.version == 4 + 2 * round_number]
            half = len(more) // 2
            produce(bootstrap, more[:half])
            time.sleep(rng.uniform(0.2, 1.5))
            produce(bootstrap, more[half:])
            time.sleep(rng.uniform(0.0, 0.6))
            assert service.kill9() == -9
            produced += more

        # 5. A last clean run: everything produced is there exactly once, at its latest version.
        final = run("final")
        final.wait_ready()
        settled(final, bootstrap)
        check(final, produced)
        assert final.terminate() == 0
    finally:
        for service in runs:
            service.stop_quietly()

    # The service is gone, so the test may open its chdb path: the crashes did store doubles and
    # superseded versions (raw rows), and FINAL (what every reader uses) hides all of them.
    store = ChdbStore(data_dir)
    try:
        raw = store.query("SELECT count() FROM iot_reading_aggregates").rows[0][0]
        visible = store.query("SELECT count() FROM iot_reading_aggregates FINAL").rows[0][0]
    finally:
        store.close()
    # (Background merges may already have collapsed some doubles and old versions for good.)
    assert visible == len(testing.latest(produced))
    with capsys.disabled():
        print("\nfault test: %d service runs, %d records produced, %d windows; stored rows %d, visible with "
              "FINAL %d" % (len(runs), len(produced), len(testing.latest(produced)), raw, visible))
