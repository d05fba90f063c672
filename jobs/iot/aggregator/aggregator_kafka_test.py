"""The aggregator binary against a real Kafka broker: every aggregate equals a brute-force recomputation.

Synthetic Debezium change events (inserts, updates, deletes, replays, late, within-grace, future
and malformed records) go to iot.cdc.readings; the real `aggregator` binary runs in a
subprocess; iot.aggregates.v1 is read back read_committed, the latest version per window is
compared with what the test computes from the rows it wrote.
"""

import time

import pytest

from datapipelines import kafka, records, topics
from jobs.iot.aggregator import kafka_harness as h
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401  (pytest fixture)

GROUP = "iot-aggregator-it"


@pytest.fixture(scope="module")
def run(kafka_broker, tmp_path_factory):  # noqa: F811
    bootstrap = kafka_broker.bootstrap
    kafka.ensure_topics(bootstrap)
    scenario = h.build_scenario()
    h.produce(bootstrap, scenario.records)
    log = tmp_path_factory.mktemp("aggregator") / "aggregator.log"
    aggregator = h.Aggregator(bootstrap, GROUP, log, "--batch-size", "500")
    try:
        h.wait_until_consumed(bootstrap, GROUP, aggregator.process)
        health = aggregator.http("/healthz"), aggregator.http("/readyz"), aggregator.http("/metrics")
        code = aggregator.stop()
    except BaseException:
        aggregator.kill()
        print(log.read_text()[-5000:])
        raise
    return {
        "scenario": scenario,
        "bootstrap": bootstrap,
        "exit": code,
        "health": health,
        "log": log.read_text(),
        "aggregates": h.read_all(bootstrap, topics.IOT_AGGREGATES, "it-aggregates"),
        "late": h.read_all(bootstrap, topics.IOT_LATE_READINGS, "it-late", quiet=1.0),
        "dead": h.read_all(bootstrap, kafka.dead_letter_topic(topics.IOT_CDC_READINGS), "it-dlq", quiet=1.0),
    }


def test_every_aggregate_equals_the_brute_force_recomputation(run):
    latest, repeated = h.latest_aggregates(run["aggregates"])
    expected = h.expected_aggregates(run["scenario"])
    problems = h.compare(latest, expected)
    assert not problems, "\n".join(problems[:20])
    assert repeated == 0, "a (window, version) was written twice: some batch was committed twice"
    assert len(expected) > 500
    assert sum(1 for e in expected.values() if e["late"]) >= 4, "the scenario exercises late-within-grace counts"


def test_aggregates_carry_their_contract_and_key(run):
    message = run["aggregates"][0]
    aggregate = records.decode(topics.IOT_AGGREGATES, message.value(), message.headers())
    assert message.key() == topics.IOT_AGGREGATES.key_of(aggregate)
    assert aggregate.version > 0 and aggregate.emit_time.seconds > 0


def test_late_and_future_readings_reach_the_late_topic(run):
    scenario = run["scenario"]
    late = [records.decode(topics.IOT_LATE_READINGS, m.value(), m.headers()) for m in run["late"]]
    closed = {int(m.reading.reading_id) for m in late if m.reason == 1}
    future = {int(m.reading.reading_id) for m in late if m.reason == 3}
    assert closed == scenario.late_ids
    assert future == scenario.future_ids
    sample = next(m for m in late if m.reason == 1)
    assert len(sample.missed_windows) == 6  # 1 tumbling + 5 hopping, all closed
    assert sample.grace_period.seconds == 30
    assert sample.lateness.seconds > 15 * 60
    assert sample.watermark_time.seconds > sample.reading.reading_time.seconds


def test_malformed_records_reach_the_dead_letter_topic_with_reasons(run):
    reasons = [records.header(m.headers(), records.DLQ_REASON) for m in run["dead"]]
    assert sorted(reasons) == sorted(run["scenario"].dead_letter_reasons)
    for message in run["dead"]:
        assert records.header(message.headers(), records.DLQ_STAGE) == "iot-aggregator"
        assert records.header(message.headers(), records.DLQ_TOPIC) == topics.IOT_CDC_READINGS.name
        assert records.header(message.headers(), records.DLQ_OFFSET).isdigit()
        assert records.header(message.headers(), records.DLQ_PARTITION).isdigit()
    assert run["dead"][0].value() == b"\x00\x01 not json"


def test_health_metrics_and_graceful_stop(run):
    (live, _), (ready, _), (metrics_code, metrics) = run["health"]
    assert (live, ready, metrics_code) == (200, 200, 200)
    assert "dp_iot_aggregator_transactions_total{outcome=\"commit\"}" in metrics
    assert "dp_iot_aggregator_dead_letters_total{reason=\"invalid-field\"} 1.0" in metrics
    assert "dp_iot_aggregator_duplicates_total" in metrics
    assert run["exit"] == 0
    assert "event=signal signal=SIGTERM" in run["log"] and "event=stopped" in run["log"]
    assert "event=state_restored" in run["log"]


def test_a_second_run_resumes_from_committed_offsets_and_restores_state(run, tmp_path):
    """A restart with nothing new to read: state restored from the changelog, no new aggregates."""
    bootstrap = run["bootstrap"]
    before = len(run["aggregates"])
    aggregator = h.Aggregator(bootstrap, GROUP, tmp_path / "second.log", "--batch-size", "500")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and aggregator.http("/readyz")[0] != 200:
            time.sleep(0.2)
        assert aggregator.http("/readyz")[0] == 200
        _, metrics = aggregator.http("/metrics")
    finally:
        assert aggregator.stop() == 0
    restored = [line for line in metrics.splitlines() if line.startswith("dp_iot_aggregator_restored_entries_total")]
    assert restored and float(restored[0].split()[-1]) > 0
    assert len(h.read_all(bootstrap, topics.IOT_AGGREGATES, "it-aggregates-2", quiet=1.0)) == before
