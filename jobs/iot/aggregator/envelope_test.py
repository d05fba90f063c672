"""Debezium envelopes of public.readings: every operation, and every way a record can be unusable."""

import json

import pytest

from datapipelines.records import MalformedRecord
from jobs.iot.aggregator import envelope, testdata
from jobs.iot.aggregator.envelope import (C_BEFORE_TIME, C_CAPTURE_MS, C_COMMIT_MS, C_DEVICE, C_HUMIDITY, C_ID, C_LSN,
                                          C_OP, C_SITE, C_TABLE, C_TEMPERATURE, C_TIME, C_TX_ID)

T0 = 1_767_225_600_000_000


def row(rid=1, t=T0 + 123456, **kwargs):
    return testdata.row(rid, "dev-000001", "site-0001", t, temperature=21.5, humidity=40, **kwargs)


def value(op, **kwargs):
    return testdata.encode(testdata.envelope(op, 5000, **kwargs))


@pytest.mark.parametrize("op", ["c", "r"])
def test_insert_and_snapshot_read_carry_after(op):
    change = envelope.decode(value(op, after=row(), snapshot="last" if op == "r" else "false"))
    assert change[C_OP] == op and change[C_ID] == 1
    assert change[C_DEVICE] == "dev-000001" and change[C_SITE] == "site-0001"
    assert change[C_TIME] == T0 + 123456
    assert change[C_TEMPERATURE] == 21.5 and change[C_HUMIDITY] == 40.0 and type(change[C_HUMIDITY]) is float
    assert change[C_LSN] == 5000 and change[C_TX_ID] == 1000 and change[C_TABLE] == "readings"
    assert change[C_CAPTURE_MS] == (T0 + 123456) // 1000 + 200 and change[C_COMMIT_MS] == change[C_CAPTURE_MS] - 50


def test_update_carries_after_and_remembers_the_old_time():
    change = envelope.decode(value("u", before=row(t=T0), after=row(t=T0 + 90_000_000)))
    assert change[C_OP] == "u" and change[C_TIME] == T0 + 90_000_000 and change[C_BEFORE_TIME] == T0


def test_delete_carries_before():
    change = envelope.decode(value("d", before=row(t=T0 + 5)))
    assert change[C_OP] == "d" and change[C_TIME] == T0 + 5 and change[C_ID] == 1


def test_null_value_is_skipped_not_an_error():
    assert envelope.decode(None) is None


def test_timestamps_with_any_fraction_or_offset():
    assert envelope.parse_time_us("2026-01-01T00:00:00Z") == T0
    assert envelope.parse_time_us("2026-01-01T00:00:00.5Z") == T0 + 500_000
    assert envelope.parse_time_us("2026-01-01T00:00:00.123456789Z") == T0 + 123456
    assert envelope.parse_time_us("2026-01-01T01:00:00+01:00") == T0
    for micros in (0, 1, 999_999, 86_399_999_999, 59_999_999):
        assert envelope.parse_time_us(testdata.iso(T0 + micros)) == T0 + micros


def reason(raw):
    with pytest.raises(MalformedRecord) as error:
        envelope.decode(raw)
    return error.value.reason


def broken(mutate):
    env = testdata.envelope("c", 5000, after=row())
    mutate(env)
    return testdata.encode(env)


MALFORMED = [
    (b"\xff\xfe not json", "undecodable-payload"),
    (b"{\"op\": \"c\", ", "undecodable-payload"),
    (b"", "undecodable-payload"),
    (b"[1, 2]", "invalid-envelope"),
    (json.dumps({"schema": {}, "payload": {}}).encode(), "invalid-envelope"),
    (broken(lambda e: e.update(op="t")), "invalid-envelope"),
    (broken(lambda e: e.pop("op")), "invalid-envelope"),
    (broken(lambda e: e.update(after=None)), "invalid-envelope"),
    (broken(lambda e: e.update(source="x")), "invalid-envelope"),
    (broken(lambda e: e["after"].pop("reading_id")), "missing-field"),
    (broken(lambda e: e["after"].update(device_id=None)), "missing-field"),
    (broken(lambda e: e["after"].update(reading_time=None)), "missing-field"),
    (broken(lambda e: e["after"].update(reading_id="12")), "invalid-field"),
    (broken(lambda e: e["after"].update(reading_id=-1)), "invalid-field"),
    (broken(lambda e: e["after"].update(site_id="")), "invalid-field"),
    (broken(lambda e: e["after"].update(temperature_celsius="21.5")), "invalid-field"),
    (broken(lambda e: e["after"].update(temperature_celsius=True)), "invalid-field"),
    (broken(lambda e: e["after"].update(reading_time="yesterday")), "invalid-field"),
    (broken(lambda e: e["after"].update(reading_time="2026-01-01T00:00:00")), "invalid-field"),
    (broken(lambda e: e["source"].update(lsn="0/16B3748")), "invalid-field"),
    (broken(lambda e: e["source"].update(table="devices")), "unexpected-table"),
    (testdata.encode(testdata.envelope("c", 1, after=row()))[:-1] + b',"x":NaN}', None),  # NaN elsewhere: fine
    (broken(lambda e: e["after"].update(humidity_percent=float("nan"))), "invalid-field"),
    (broken(lambda e: e["after"].update(humidity_percent=float("inf"))), "invalid-field"),
]


@pytest.mark.parametrize("raw,expected", MALFORMED)
def test_malformed_records_are_refused_with_a_stable_reason(raw, expected):
    if expected is None:
        assert envelope.decode(raw)[C_ID] == 1
    else:
        assert reason(raw) == expected


def test_error_detail_names_the_field():
    with pytest.raises(MalformedRecord) as error:
        envelope.decode(broken(lambda e: e["after"].update(temperature_celsius="hot")))
    assert "after.temperature_celsius" in error.value.detail


def test_batch_decoder_agrees_with_the_record_decoder_on_a_mixed_batch():
    values = []
    for i in range(300):
        kind = i % 10
        t = T0 + i * 1_000_003
        if kind == 1:
            values.append(value("u", before=row(i, t - 5), after=row(i, t)))
        elif kind == 2:
            values.append(value("d", before=row(i, t)))
        elif kind == 3:
            values.append(MALFORMED[i % len(MALFORMED)][0])
        elif kind == 4:
            values.append(None)
        elif kind == 5:  # pretty-printed JSON: newlines between tokens
            values.append(json.dumps(testdata.envelope("c", i, after=row(i, t)), indent=2).encode())
        else:
            values.append(value("c", after=row(i, t)))
    batch = envelope.decode_batch(values)
    single = [envelope.decode_or_error(v) for v in values]
    assert len(batch) == len(single)
    for got, want in zip(batch, single):
        if isinstance(want, MalformedRecord):
            assert isinstance(got, MalformedRecord) and got.reason == want.reason and got.detail == want.detail
        else:
            assert got == want


def test_batch_decoder_fast_path_handles_a_clean_batch():
    values = [value("c", after=row(i, T0 + i)) for i in range(500)]
    assert envelope.decode_batch(values) == [envelope.decode(v) for v in values]


def test_the_envelope_documented_by_deploy_connect_decodes():
    """The insert captured from the real connector (deploy/connect/README.md), extra source fields and all."""
    raw = json.dumps({
        "before": None,
        "after": {"reading_id": 7, "device_id": "dev-a1", "site_id": "site-a",
                  "reading_time": "2024-05-01T12:00:06.123456Z", "temperature_celsius": 21.5,
                  "humidity_percent": None, "pressure_hpa": 1013.25, "battery_percent": 93.0,
                  "firmware_version": "1.4.0", "inserted_at": "2026-11-28T05:52:08.886372Z"},
        "source": {"version": "3.7.0.Final", "connector": "postgresql", "name": "iot", "ts_ms": 1795845128887,
                   "ts_us": 1795845128887361, "ts_ns": 1795845128887361000, "snapshot": "false",
                   "db": "datapipelines", "sequence": "[null,\"28436664\"]", "schema": "public",
                   "table": "readings", "txId": 760, "lsn": 28436664, "xmin": None, "origin": None,
                   "origin_lsn": None},
        "transaction": None, "op": "c",
        "ts_ms": 1795845129034, "ts_us": 1795845129034535, "ts_ns": 1795845129034535089,
    }).encode()
    change = envelope.decode(raw)
    assert change[C_ID] == 7 and change[C_LSN] == 28436664 and change[C_TX_ID] == 760
    assert change[C_TIME] == envelope.parse_time_us("2024-05-01T12:00:06.123456Z")
    assert change[C_HUMIDITY] is None and change[C_COMMIT_MS] == 1795845128887
    assert envelope.decode_batch([raw] * 100) == [change] * 100
