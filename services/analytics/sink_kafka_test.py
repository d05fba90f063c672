"""The real service binary against a real Kafka broker: versions collapse to the latest, malformed
records reach the dead-letter topic with their reasons, SIGTERM drains, a restart adds nothing.
The same for the behaviour topics (metrics and sessions), consumed by the same process."""

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


def dead_letters(bootstrap, expected, timeout=60.0, dlq=DLQ):
    consumer = Consumer(kafka.consumer_config(bootstrap, "dlq-reader-%d" % time.time_ns()))
    consumer.subscribe([dlq])
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


# --- behaviour.metrics.v1 and behaviour.sessions.v1 ------------------------------------------

METRICS, SESSIONS = topics.BEHAVIOUR_METRICS, topics.BEHAVIOUR_SESSIONS
WINDOW = {"from": "2023-11-14T22:00:00Z", "to": "2023-11-14T23:00:00Z"}


def malformed_metrics():
    good = records.encode(METRICS, testing.behaviour_metric(1, "", 0, 1))
    no_dimension = testing.behaviour_metric(3, "/x", 0, 1)
    no_dimension.dimension = 0
    version_zero = testing.behaviour_metric(3, "/y", 0, 1)
    version_zero.version = 0
    all_with_value = testing.behaviour_metric(1, "", 0, 1)
    all_with_value.dimension_value = "/z"
    session_headers = records.encode(SESSIONS, testing.session_summary(900, 1)).headers
    return [
        (b"m1", b"\xff\xff\xff not protobuf", good.headers),    # undecodable-payload
        (b"m2", good.value, session_headers),                      # wrong-schema
        (b"m3", no_dimension.SerializeToString(), good.headers),    # invalid-metric
        (b"m4", version_zero.SerializeToString(), good.headers),    # invalid-metric
        (b"m5", all_with_value.SerializeToString(), good.headers),  # invalid-metric
    ]


def malformed_sessions():
    good = records.encode(SESSIONS, testing.session_summary(901, 1))
    no_id = testing.session_summary(902, 1)
    no_id.session_id = ""
    backwards = testing.session_summary(903, 1)
    backwards.session_end_time.seconds = backwards.session_start_time.seconds - 60
    return [
        (b"s1", good.value, []),                                 # missing-schema-header
        (b"s2", no_id.SerializeToString(), good.headers),        # invalid-session
        (b"s3", backwards.SerializeToString(), good.headers),    # invalid-session
    ]


def check_behaviour(service, metrics, sessions):
    latest_metrics = testing.latest_by(metrics, testing.metric_identity)
    seen = 0
    for dimension in testing.DIMENSION_NAMES.values():
        for kind, kind_name in testing.KIND_NAMES.items():
            status, body = service.get("/api/v1/behaviour/metrics", dimension=dimension, window_kind=kind_name,
                                       **WINDOW)
            assert status == 200, body
            want = sorted((testing.expected_metric_row(m) for m in latest_metrics.values()
                           if testing.DIMENSION_NAMES[m.dimension] == dimension and m.window_kind == kind),
                          key=lambda r: (r["window_start"], r["window_end"], r["dimension_value"]))
            assert body["rows"] == want, (dimension, kind_name)
            seen += len(want)
    assert seen == len(latest_metrics)

    latest_sessions = testing.latest_by(sessions, testing.session_identity)
    status, body = service.get("/api/v1/behaviour/sessions", **WINDOW)
    assert status == 200, body
    want = sorted((testing.expected_session_row(m) for m in latest_sessions.values()),
                  key=lambda r: (r["session_start"], r["session_id"]))
    assert [{k: row[k] for k in want[0]} for row in body["rows"]] == want

    status, body = service.get("/api/v1/behaviour/sessions/summary", **WINDOW)
    assert status == 200, body
    summary = body["rows"][0]
    assert summary["sessions"] == len(latest_sessions)
    assert summary["converted_sessions"] == sum(1 for m in latest_sessions.values() if m.converted)
    assert math.isclose(summary["mean_duration_seconds"], sum(
        testing.session_duration_ms(m) for m in latest_sessions.values()) / len(latest_sessions) / 1000)
    status, body = service.get("/api/v1/behaviour/funnel", **WINDOW)
    assert status == 200 and [r["sessions"] for r in body["rows"]] == [
        sum(1 for m in latest_sessions.values() if m.funnel_stage >= n) for n in range(1, 6)]


def test_service_stores_latest_behaviour_metrics_and_sessions_and_dead_letters_bad_ones(bootstrap, tmp_path):
    metrics = testing.behaviour_stream(minutes=6, versions=3, seed=31, kinds=(1, 2))
    sessions = testing.session_stream(sessions=60, versions=3, seed=31)
    produce(bootstrap, metrics[: len(metrics) // 2], topic=METRICS)
    produce(bootstrap, sessions[: len(sessions) // 2], topic=SESSIONS)
    # Its own consumer group: the IoT test's records on iot.aggregates.v1 are read too (one
    # consumer, every target topic), which is why the counts below are per table.
    service = ServiceProcess(bootstrap, tmp_path / "chdb", free_ports(1)[0], tmp_path / "service.log",
                             extra_args=["--batch-size", "250", "--batch-max-ms", "200",
                                         "--group", "analytics-behaviour-test", "--instance-id", "behaviour-test-1"])
    service.start()
    try:
        service.wait_ready()
        produce(bootstrap, metrics[len(metrics) // 2:], raw=malformed_metrics(), topic=METRICS)
        produce(bootstrap, sessions[len(sessions) // 2:], raw=malformed_sessions(), topic=SESSIONS)

        def stored(table, topic, total):
            return (service.metric("analytics_rows_inserted_total", table=table)
                    + service.metric("analytics_dead_letters_total", topic=topic)) >= total

        service.wait_for(lambda: stored("behaviour_metrics", METRICS.name, len(metrics) + 5)
                         and stored("behaviour_sessions", SESSIONS.name, len(sessions) + 3),
                         what="all behaviour records stored")
        assert service.metric("analytics_rows_inserted_total", table="behaviour_metrics") == len(metrics)
        assert service.metric("analytics_rows_inserted_total", table="behaviour_sessions") == len(sessions)
        check_behaviour(service, metrics, sessions)

        for dlq, expected in ((METRICS.name + ".dlq", ["invalid-metric", "invalid-metric", "invalid-metric",
                                                       "undecodable-payload", "wrong-schema"]),
                              (SESSIONS.name + ".dlq", ["invalid-session", "invalid-session",
                                                        "missing-schema-header"])):
            letters = dead_letters(bootstrap, len(expected), dlq=dlq)
            assert sorted(records.header(r.headers(), records.DLQ_REASON) for r in letters) == expected, dlq
            for letter in letters:
                assert records.header(letter.headers(), records.DLQ_STAGE) == "analytics-sink"
                assert records.header(letter.headers(), records.DLQ_TOPIC) == dlq[:-4]
            details = " | ".join(records.header(r.headers(), records.DLQ_DETAIL) for r in letters)
            if dlq.startswith(METRICS.name):
                assert "dimension 0 is not ALL" in details and "version is 0" in details
                assert "dimension_value must be empty for METRIC_DIMENSION_ALL" in details
            else:
                assert "session_id is empty" in details and "session_end_time is before session_start_time" in details
        assert service.metric("analytics_consumer_lag") == 0
    finally:
        code = service.terminate() if service.exited() is None else service.exited()
    assert code == 0, service.log_text()[-3000:]

    # Restart on the same path: newer versions replace, nothing is re-read.
    newer_metrics = [testing.behaviour_metric(m.dimension, m.dimension_value,
                                              (m.window_start_time.seconds - testing.BASE_SECONDS) // 60, 4,
                                              m.window_kind, seed=77, closed=True)
                     for m in list(testing.latest_by(metrics, testing.metric_identity).values())[:15]]
    newer_sessions = [testing.session_summary(number, 4, seed=31) for number in range(10)]
    again = ServiceProcess(bootstrap, tmp_path / "chdb", free_ports(1)[0], tmp_path / "service2.log",
                           extra_args=["--batch-max-ms", "200", "--group", "analytics-behaviour-test",
                                       "--instance-id", "behaviour-test-1"])
    again.start()
    try:
        again.wait_ready()
        produce(bootstrap, newer_metrics, topic=METRICS)
        produce(bootstrap, newer_sessions, topic=SESSIONS)
        again.wait_for(lambda: again.metric("analytics_rows_inserted_total", table="behaviour_metrics")
                       >= len(newer_metrics) and again.metric("analytics_rows_inserted_total",
                                                              table="behaviour_sessions") >= len(newer_sessions),
                       what="new versions")
        check_behaviour(again, metrics + newer_metrics, sessions + newer_sessions)
        assert again.metric("analytics_rows_inserted_total", table="behaviour_metrics") == len(newer_metrics)
        assert again.metric("analytics_rows_inserted_total", table="behaviour_sessions") == len(newer_sessions)
    finally:
        assert again.terminate() == 0
