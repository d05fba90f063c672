"""Changelog codec and restore: a state rebuilt from its changelog goes on exactly like the original."""

import pytest

from datapipelines import records
from jobs.iot.aggregator import envelope, state, testdata, transform
from jobs.iot.aggregator.testdata import SECOND, T0, change, random_workload


def test_entry_round_trips_through_the_changelog_record():
    original = change("u", 42, T0 + 1234567, "dev-9", "site-3", temperature=-3.5, humidity=55.0, lsn=987654321,
                      before_t=T0)
    entry = (original, True, T0 + 2 * SECOND, T0)
    key, value, headers = state.encode(42, entry, ingest_us=T0 + 5 * SECOND)
    assert key == b"42"
    assert records.header(headers, records.SCHEMA_HEADER) == "datapipelines.iot.v1.DeviceReading"
    rid, back = state.decode(key, value, headers)
    assert rid == 42
    restored, counted, applied, retain = back
    assert (counted, applied, retain) == (True, T0 + 2 * SECOND, T0)
    # Everything the windows use survives; the old row time is not kept (not needed after apply).
    assert restored[:envelope.C_BEFORE_TIME] == original[:envelope.C_BEFORE_TIME]
    assert restored[envelope.C_CONNECTOR:] == original[envelope.C_CONNECTOR:]
    assert state.decode(b"42", None, []) == (42, None)


def test_unset_metrics_stay_unset_and_delete_markers_keep_their_operation():
    deleted = change("d", 7, T0, temperature=None)
    rid, (restored, counted, _, _) = state.decode(*state.encode(7, (deleted, False, T0, T0)))
    assert restored[envelope.C_TEMPERATURE] is None and restored[envelope.C_OP] == "d" and counted is False


def test_unreadable_changelog_records_are_refused_with_a_reason():
    with pytest.raises(records.MalformedRecord) as bad_key:
        state.decode(b"not-a-number", b"", [])
    assert bad_key.value.reason == "invalid-key"
    key, value, headers = state.encode(1, (change("c", 1, T0), True, T0, T0))
    with pytest.raises(records.MalformedRecord) as no_headers:
        state.decode(key, value, [h for h in headers if not h[0].startswith("dp.aggregator.")])
    assert no_headers.value.reason == "missing-header"


def test_compaction_keeps_the_last_write_in_the_order_of_last_writes():
    a, b = change("c", 1, T0), change("c", 2, T0)
    log = [state.encode(1, (a, True, T0, T0)), state.encode(2, (b, True, T0, T0)),
           state.encode(1, (a, True, T0 + 1, T0)), state.encode(3, (a, True, T0, T0)), state.encode(3, None)]
    assert [(rid, entry[2]) for rid, entry in state.compact(log)] == [(2, T0), (1, T0 + 1)]


def test_stream_time_travels_as_offset_metadata():
    assert state.parse_stream_time(state.stream_time_metadata(T0 + 5)) == T0 + 5
    assert state.parse_stream_time(None) is None
    assert state.parse_stream_time("something else") is None


def run_in_batches(partition_state, changes, offset, batch, log, outputs):
    for start in range(0, len(changes), batch):
        for i, c in enumerate(changes[start:start + batch]):
            partition_state.apply(offset + start + i, c)
        aggregates, late, changelog = partition_state.flush()
        outputs.append((aggregates, [(l[0][envelope.C_ID],) + l[1:] for l in late], changelog))
        log.extend(state.encode(rid, entry) for rid, entry in changelog.items())


@pytest.mark.parametrize("cut", [137, 900, 2211])
def test_state_rebuilt_from_changelog_emits_identical_aggregates(cut):
    changes, _ = random_workload(seed=cut, count=3000, late_fraction=0.05)
    settings = transform.Settings(grace_us=20 * SECOND)
    original = transform.PartitionState(settings)
    log = []
    run_in_batches(original, changes[:cut], 0, 50, log, [])
    # A crash after the batch that ended at `cut`: a new process reads the changelog.
    restored = transform.PartitionState(settings)
    kept = restored.restore(state.compact(log), original.stream_time)
    assert kept == len(original.readings)
    assert restored.stream_time == original.stream_time
    assert restored.open_panes() <= original.open_panes()  # emptied panes are not rebuilt
    rest_a, rest_b = [], []
    run_in_batches(original, changes[cut:], cut, 50, [], rest_a)
    run_in_batches(restored, changes[cut:], cut, 50, [], rest_b)
    assert len(rest_a) == len(rest_b)
    for (agg_a, late_a, log_a), (agg_b, late_b, log_b) in zip(rest_a, rest_b):
        assert agg_b == agg_a  # bit for bit: sums are folds in the same order
        assert late_b == late_a
        # Live records in the same order (it is the fold order of a later restore); tombstones
        # only remove, so their order does not matter.
        assert [rid for rid, e in log_b.items() if e] == [rid for rid, e in log_a.items() if e]
        assert {rid for rid, e in log_b.items() if e is None} == {rid for rid, e in log_a.items() if e is None}


def test_restore_without_committed_stream_time_falls_back_to_latest_arrival():
    partition_state = transform.PartitionState(transform.Settings())
    entry = (change("c", 1, T0 + SECOND), True, T0 + 3 * SECOND, T0)
    assert partition_state.restore([(1, entry)], None) == 1
    assert partition_state.stream_time == T0 + 3 * SECOND


def test_envelope_fixture_shape_is_what_the_decoder_reads():
    value = testdata.envelope("r", 5, after=testdata.row(5, "d", "s", T0), snapshot="last")
    decoded = envelope.decode(testdata.encode(value))
    assert decoded[envelope.C_OP] == "r" and decoded[envelope.C_LSN] == 5
