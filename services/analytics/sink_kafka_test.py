"""The real service binary against a real Kafka broker: versions collapse to the latest, malformed
records reach the dead-letter topic with their reasons, SIGTERM drains, a restart adds nothing."""

import math
import time

import pytest
from confluent_kafka import Consumer

from datapipelines import kafka, records, topics
from services.analytics import testing
from services.analytics.service_process import ServiceProcess, api_rows, produce
from tests.fixtures.kafka_broker import free_ports, kafka_broker  # noqa: F401  (pytest fixture)

DLQ = topics.IOT_AGGREGATES.name + ".dlq"


@pytest.fixture(scope="module")
def bootstrap(kafka_broker):  # noqa: F811
    kafka.ensure_topics(kafka_broker.bootstrap)
    return kafka_broker.bootstrap


def malformed_records():
    good = records.encode(topics.IOT_AGGREGATES, testing.aggregate(1, "device-900", "site-9", 0, 1))
    unspecified = testing.aggregate(1, "device-901", "site-9", 0, 1)
    unspecified.scope = 0
    version_zero = testing.aggregate(1, "device-902", "site-9", 0, 1)
    version_zero.version = 0
    headers = good.headers
    return [
        (b"k1", b"\xff\xff\xff not protobuf", headers),                             # undecodable-payload
        (b"k2", good.value, []),                                                     # missing-schema-header
        (b"k3", good.value, [("dp.schema", b"datapipelines.iot.v1.DeviceReading")]),  # wrong-schema
        (b"k4", unspecified.SerializeToString(), headers),                           # invalid-aggregate
        (b"k5", version_zero.SerializeToString(), headers),                          # invalid-aggregate
    ]


def dead_letters(bootstrap, expected, timeout=60.0):
    consumer = Consumer(kafka.consumer_config(bootstrap, "dlq-reader-%d" % time.time_ns()))
    consumer.subscribe([DLQ])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for record in consumer.consume(num_messages=100, timeout=1.0):
                assert record.error() is None
                out.append(record)
        out.extend(consumer.consume(num_messages=100, timeout=2.0))  # nothing more may come
    finally:
        consumer.close()
    return out


def assert_rows_match(rows, expected_latest):
    assert len(rows) == len(expected_latest)
    for message in expected_latest.values():
        want = testing.expected_row(message)
        identity = (message.scope, message.key_id, message.window_kind, want["window_start"], want["window_end"])
        got = rows[identity]
        for column, value in want.items():
            if isinstance(value, float):
                assert math.isclose(got[column], value, rel_tol=1e-12), (identity, column)
            else:
                assert got[column] == value, (identity, column, got[column], value)


def test_service_stores_latest_versions_dead_letters_bad_records_and_drains(bootstrap, tmp_path):
    messages = testing.stream(devices=12, sites=3, minutes=8, versions=3, seed=21, kinds=(1, 2))
    produce(bootstrap, messages[: len(messages) // 2])
    service = ServiceProcess(bootstrap, tmp_path / "chdb", free_ports(1)[0], tmp_path / "service.log",
                             extra_args=["--batch-size", "300", "--batch-max-ms", "200"])
    service.start()
    try:
        service.wait_ready()
        # The rest arrives while the service runs, with the malformed records in between.
        produce(bootstrap, messages[len(messages) // 2:], raw=malformed_records())
        total = len(messages) + 5
        service.wait_for(lambda: service.metric("analytics_rows_inserted_total")
                         + service.metric("analytics_dead_letters_total") >= total, what="all records stored")
        expected = testing.latest(messages)
        assert_rows_match(api_rows(service, expected), expected)
        assert service.metric("analytics_rows_inserted_total") == len(messages)

        letters = dead_letters(bootstrap, 5)
        reasons = sorted(records.header(r.headers(), records.DLQ_REASON) for r in letters)
        assert reasons == ["invalid-aggregate", "invalid-aggregate", "missing-schema-header",
                           "undecodable-payload", "wrong-schema"]
        for letter in letters:
            assert records.header(letter.headers(), records.DLQ_STAGE) == "analytics-sink"
            assert records.header(letter.headers(), records.DLQ_TOPIC) == topics.IOT_AGGREGATES.name
            assert records.header(letter.headers(), records.DLQ_OFFSET).isdigit()
        details = {records.header(r.headers(), records.DLQ_DETAIL) for r in letters}
        assert any("scope 0 is not DEVICE or SITE" in d for d in details)
        assert any("version is 0" in d for d in details)

        status, body = service.get("/api/v1/iot/sites/latest")
        assert status == 200 and [r["site_id"] for r in body["rows"]] == ["site-0", "site-1", "site-2"]
        assert service.metric("analytics_consumer_lag") == 0
    finally:
        code = service.terminate() if service.exited() is None else service.exited()
    assert code == 0, service.log_text()[-3000:]
    log = service.log_text()
    assert "event=signal signal=SIGTERM action=drain" in log and "event=stopped drained=True" in log
    assert "event=store_closed backend=chdb" in log

    # Restart on the same path: nothing is re-read (offsets committed), new versions replace old.
    newer = [testing.aggregate(m.scope, m.key_id, m.site_id, (m.window_start_time.seconds - testing.BASE_SECONDS)
                               // 60, 4, m.window_kind, seed=99, closed=True)
             for m in list(testing.latest(messages).values())[:10]]
    again = ServiceProcess(bootstrap, tmp_path / "chdb", free_ports(1)[0], tmp_path / "service2.log",
                           extra_args=["--batch-max-ms", "200"])
    again.start()
    try:
        again.wait_ready()
        produce(bootstrap, newer)
        again.wait_for(lambda: again.metric("analytics_rows_inserted_total") >= len(newer), what="new versions")
        expected = testing.latest(messages + newer)
        assert_rows_match(api_rows(again, expected), expected)
        assert again.metric("analytics_rows_inserted_total") == len(newer)
    finally:
        assert again.terminate() == 0
