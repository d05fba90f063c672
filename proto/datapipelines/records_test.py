"""Record codec: contract headers, fingerprints and the reasons malformed records are refused."""

import pytest
from google.protobuf import timestamp_pb2

from datapipelines import records, topics
from datapipelines.iot.v1 import late_reading_pb2, reading_aggregate_pb2


def aggregate(**fields):
    return reading_aggregate_pb2.ReadingAggregate(key_id="dev-1", reading_count=3, **fields)


def test_round_trip_keeps_content_and_names_the_contract():
    message = aggregate(version=7)
    record = records.encode(topics.IOT_AGGREGATES, message)
    assert record.topic == "iot.aggregates.v1"
    assert record.key == b"0:dev-1"
    assert records.header(record.headers, records.SCHEMA_HEADER) == "datapipelines.iot.v1.ReadingAggregate"
    assert records.header(record.headers, records.FINGERPRINT_HEADER).startswith("sha256:")
    assert records.decode(topics.IOT_AGGREGATES, record.value, record.headers) == message


def test_fingerprint_is_stable_and_differs_between_messages():
    a = records.fingerprint(reading_aggregate_pb2.ReadingAggregate.DESCRIPTOR)
    assert a == records.fingerprint(reading_aggregate_pb2.ReadingAggregate.DESCRIPTOR)
    assert a != records.fingerprint(late_reading_pb2.LateReading.DESCRIPTOR)
    assert a != records.fingerprint(timestamp_pb2.Timestamp.DESCRIPTOR)


def test_encode_refuses_the_wrong_message_type():
    with pytest.raises(TypeError, match="carries datapipelines.iot.v1.ReadingAggregate"):
        records.encode(topics.IOT_AGGREGATES, late_reading_pb2.LateReading())


@pytest.mark.parametrize(
    "value, headers, reason",
    [
        (b"\x0a\x05dev-1", [], "missing-schema-header"),
        (b"\x0a\x05dev-1", [(records.SCHEMA_HEADER, b"datapipelines.iot.v1.LateReading")], "wrong-schema"),
        (None, [(records.SCHEMA_HEADER, b"datapipelines.iot.v1.ReadingAggregate")], "empty-value"),
        (b"\xff\xff\xff\xff", [(records.SCHEMA_HEADER, b"datapipelines.iot.v1.ReadingAggregate")], "undecodable-payload"),
    ],
)
def test_malformed_records_are_refused_with_a_reason(value, headers, reason):
    with pytest.raises(records.MalformedRecord) as caught:
        records.decode(topics.IOT_AGGREGATES, value, headers)
    assert caught.value.reason == reason
    assert "iot.aggregates.v1" in caught.value.detail or "ReadingAggregate" in caught.value.detail


def test_dead_letter_headers_say_what_where_and_who():
    error = records.MalformedRecord("undecodable-payload", "4 bytes are not a valid X")
    original = [(records.SCHEMA_HEADER, b"x"), (records.DLQ_REASON, b"stale")]
    headers = dict(records.dead_letter_headers(error, "iot.aggregates.v1", 2, 41, "analytics-sink", original))
    assert headers[records.DLQ_REASON] == b"undecodable-payload"
    assert headers[records.DLQ_TOPIC] == b"iot.aggregates.v1"
    assert headers[records.DLQ_PARTITION] == b"2"
    assert headers[records.DLQ_OFFSET] == b"41"
    assert headers[records.DLQ_STAGE] == b"analytics-sink"
    assert headers[records.SCHEMA_HEADER] == b"x"


def test_timestamps_survive(tmp_path):
    start = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    message = aggregate(window_start_time=start)
    record = records.encode(topics.IOT_AGGREGATES, message)
    assert records.decode(topics.IOT_AGGREGATES, record.value, record.headers).window_start_time == start
