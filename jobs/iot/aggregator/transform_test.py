"""Windows, grace, late and future readings, updates, deletes, replays and versions on in-memory changes."""

import collections

import pytest

from jobs.iot.aggregator import envelope, transform
from jobs.iot.aggregator.testdata import SECOND, T0, change, random_workload
from jobs.iot.aggregator.transform import KIND_HOPPING, KIND_TUMBLING, MINUTE_US, SCOPE_DEVICE, SCOPE_SITE


class Run:
    """Feeds changes with consecutive offsets and keeps the latest emission per window."""

    def __init__(self, grace_s=30, **kwargs):
        self.state = transform.PartitionState(transform.Settings(grace_us=grace_s * SECOND, **kwargs))
        self.offset = 0
        self.emitted = []
        self.late = []
        self.changelog = []

    def feed(self, *changes):
        for c in changes:
            self.state.apply(self.offset, c)
            self.offset += 1
        aggregates, late, changelog = self.state.flush()
        self.emitted.extend(aggregates)
        self.late.extend(late)
        self.changelog.extend(changelog.items())
        return aggregates

    def latest(self):
        out = {}
        for a in self.emitted:
            out[a[:2] + a[3:5]] = a
        return out

    def window(self, scope, key, kind, start):
        return self.latest().get((scope, key, kind, start))


def stats(aggregate):
    scope, key, site, kind, start, end, count, temperature, humidity, pressure, battery, late, version, closed = aggregate
    return {"count": count, "temperature": temperature, "late": late, "version": version, "closed": closed}


def test_window_assignment_tumbling_and_hopping_at_boundaries():
    state = transform.PartitionState(transform.Settings())
    at_boundary = state.windows_of(T0)
    assert [(i, s, e) for i, s, e in at_boundary if i == 0] == [(0, T0, T0 + MINUTE_US)]
    hopping = sorted((s, e) for i, s, e in at_boundary if i == 1)
    assert hopping == [(T0 - k * MINUTE_US, T0 - k * MINUTE_US + 5 * MINUTE_US) for k in range(4, -1, -1)]
    just_before = state.windows_of(T0 - 1)
    assert [(s, e) for i, s, e in just_before if i == 0] == [(T0 - MINUTE_US, T0)]
    assert sorted(s for i, s, e in just_before if i == 1) == [T0 - k * MINUTE_US for k in range(5, 0, -1)]
    # A reading belongs to exactly one tumbling window and size/advance hopping windows.
    for t in (T0 + 1, T0 + 59 * SECOND + 999_999, T0 + 3 * MINUTE_US):
        windows = state.windows_of(t)
        assert sum(1 for i, s, e in windows if i == 0 and s <= t < e) == 1
        assert sum(1 for i, s, e in windows if i == 1 and s <= t < e) == 5
        assert all(s <= t < e for _, s, e in windows)


def test_statistics_per_device_and_site_with_versions_from_offsets():
    run = Run()
    run.feed(change("c", 1, T0 + 1 * SECOND, "dev-1", temperature=10.0, humidity=50.0),
             change("c", 2, T0 + 2 * SECOND, "dev-2", temperature=30.0),
             change("c", 3, T0 + 3 * SECOND, "dev-1", temperature=20.0, humidity=None))
    device = stats(run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0))
    assert device["count"] == 2
    assert device["temperature"] == (2, 10.0, 20.0, 30.0)  # count, min, max, sum
    assert device["version"] == 3  # offset 2 was the last change: version = offset + 1
    site = run.window(SCOPE_SITE, "site-1", KIND_TUMBLING, T0)
    assert site[6] == 3 and site[7] == (3, 10.0, 30.0, 60.0) and site[8] == (1, 50.0, 50.0, 50.0)
    assert site[2] == "site-1" and run.window(SCOPE_DEVICE, "dev-2", KIND_TUMBLING, T0)[2] == "site-1"
    assert site[9] == (0, 0.0, 0.0, 0.0)  # no reading had pressure
    hopping = run.window(SCOPE_SITE, "site-1", KIND_HOPPING, T0 - 4 * MINUTE_US)
    assert hopping[5] == T0 + MINUTE_US and hopping[6] == 3
    assert len([k for k in run.latest() if k[0] == SCOPE_SITE]) == 6  # 1 tumbling + 5 hopping


def test_window_closes_at_end_plus_grace_and_later_readings_go_to_late_topic():
    run = Run(grace_s=30)
    run.feed(change("c", 1, T0 + 10 * SECOND))
    # Stream time reaches end + grace - 1 us: still open.
    run.feed(change("c", 2, T0 + MINUTE_US + 30 * SECOND - 1, "dev-2"))
    assert not run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0)[-1]
    # Inside the grace period, after the window end: counted, and counted as late.
    run.feed(change("c", 3, T0 + 20 * SECOND))
    within = stats(run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0))
    assert within["count"] == 2 and within["late"] == 1 and not within["closed"]
    # Stream time == end + grace: the window closes, final emission with the closing record's version.
    run.feed(change("c", 4, T0 + MINUTE_US + 30 * SECOND, "dev-2"))
    final = stats(run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0))
    assert final == {"count": 2, "temperature": (2, 20.0, 20.0, 40.0), "late": 1, "version": 4, "closed": True}
    # Now a reading for that minute is late: not counted, reported with the windows it missed.
    run.feed(change("c", 5, T0 + 30 * SECOND))
    assert stats(run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0)) == final
    (late,) = run.late
    assert late[0][envelope.C_ID] == 5 and late[1] == transform.LATE_WINDOW_CLOSED
    # The windows ending at T0 + 1 min closed; the hopping windows ending later are still open.
    assert late[2] == [(KIND_TUMBLING, T0, T0 + MINUTE_US), (KIND_HOPPING, T0 - 4 * MINUTE_US, T0 + MINUTE_US)]
    assert late[3] == T0 + MINUTE_US  # watermark = stream time - grace
    # The hopping windows still counted it.
    assert run.window(SCOPE_DEVICE, "dev-1", KIND_HOPPING, T0)[6] == 3


def test_reading_older_than_every_window_misses_all_of_them():
    run = Run(grace_s=0)
    run.feed(change("c", 1, T0 + 10 * MINUTE_US))
    run.feed(change("c", 2, T0))
    (late,) = run.late
    assert len(late[2]) == 6 and late[1] == transform.LATE_WINDOW_CLOSED
    assert 2 not in run.state.readings  # nothing to retain: every window of it is closed


def test_future_timestamps_are_not_counted_and_do_not_advance_stream_time():
    run = Run(max_future_us=3600 * SECOND)
    run.feed(change("c", 1, T0 + SECOND))
    far = T0 + 2 * 3600 * SECOND
    run.feed(change("c", 2, far, capture_ms=(T0 + SECOND) // 1000))
    assert run.state.stream_time == T0 + SECOND
    (late,) = run.late
    assert late[1] == transform.LATE_FUTURE_TIMESTAMP and late[0][envelope.C_ID] == 2
    assert not any(a[4] >= far - 5 * MINUTE_US for a in run.emitted)
    # Within the allowed skew it counts.
    run.feed(change("c", 3, T0 + 30 * 60 * SECOND, capture_ms=(T0 + SECOND) // 1000))
    assert run.state.stream_time == T0 + 30 * 60 * SECOND


def test_update_replaces_values_and_moves_reading_between_windows():
    run = Run()
    run.feed(change("c", 1, T0 + 10 * SECOND, temperature=10.0), change("c", 2, T0 + 20 * SECOND, temperature=30.0))
    run.feed(change("u", 1, T0 + 15 * SECOND, temperature=12.0, lsn=5000, before_t=T0 + 10 * SECOND))
    assert run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0)[7] == (2, 12.0, 30.0, 42.0)
    # Move reading 2 into the next minute.
    run.feed(change("u", 2, T0 + MINUTE_US + 5 * SECOND, temperature=31.0, lsn=5001, before_t=T0 + 20 * SECOND))
    first = run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0)
    second = run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0 + MINUTE_US)
    assert first[6] == 1 and first[7] == (1, 12.0, 12.0, 12.0)
    assert second[6] == 1 and second[7] == (1, 31.0, 31.0, 31.0)
    assert first[12] == second[12] == 4  # both changed by offset 3
    # The hopping window containing both minutes still has two readings.
    assert run.window(SCOPE_DEVICE, "dev-1", KIND_HOPPING, T0)[7] == (2, 12.0, 31.0, 43.0)


def test_delete_removes_the_reading_and_an_empty_window_is_emitted_empty():
    run = Run()
    run.feed(change("c", 1, T0 + 10 * SECOND, temperature=10.0), change("c", 2, T0 + 20 * SECOND, "dev-2"))
    run.feed(change("d", 1, T0 + 10 * SECOND, lsn=6000))
    device = run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0)
    assert device[6] == 0 and device[7] == (0, 0.0, 0.0, 0.0) and device[12] == 3
    assert run.window(SCOPE_SITE, "site-1", KIND_TUMBLING, T0)[6] == 1
    # An empty window gets no closing emission (restores could not reproduce one).
    run.feed(change("c", 3, T0 + 10 * MINUTE_US, "dev-2"))
    assert not run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0)[-1]
    assert run.window(SCOPE_SITE, "site-1", KIND_TUMBLING, T0)[-1]


def test_replays_with_same_or_older_lsn_do_not_count_twice():
    run = Run()
    insert = change("c", 1, T0 + 10 * SECOND, lsn=100)
    run.feed(insert, change("c", 1, T0 + 10 * SECOND, lsn=100), change("r", 1, T0 + 10 * SECOND, lsn=90))
    assert run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0)[6] == 1
    assert run.state.duplicates == 2
    run.feed(change("d", 1, T0 + 10 * SECOND, lsn=200))
    run.feed(insert)  # the connector replays the insert after the delete: still deleted
    assert run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0)[6] == 0
    # An update replayed before its insert's replay: the newer LSN wins either way.
    run.feed(change("c", 2, T0 + 11 * SECOND, lsn=300, temperature=1.0))
    run.feed(change("u", 2, T0 + 11 * SECOND, lsn=310, temperature=2.0), change("c", 2, T0 + 11 * SECOND, lsn=300,
                                                                               temperature=1.0))
    assert run.window(SCOPE_DEVICE, "dev-1", KIND_TUMBLING, T0)[7] == (1, 2.0, 2.0, 2.0)


def brute_force(rows, settings):
    """Aggregates recomputed from the final rows, window by window (no state, no panes)."""
    out = collections.defaultdict(list)
    for rid, (device, site, t, temperature) in rows.items():
        for spec in settings.windows:
            start = t - t % spec.advance_us
            while start > t - spec.size_us:
                out[(SCOPE_DEVICE, device, spec.kind, start)].append(temperature)
                out[(SCOPE_SITE, site, spec.kind, start)].append(temperature)
                start -= spec.advance_us
    return {k: (len(v), min(v), max(v), sum(v)) for k, v in out.items()}


def test_in_order_workload_with_updates_deletes_and_replays_equals_brute_force():
    changes, rows = random_workload(seed=7)
    run = Run(grace_s=3600)  # nothing is late: the result must equal the final table
    for start in range(0, len(changes), 250):
        run.feed(*changes[start:start + 250])
    expected = brute_force(rows, run.state.settings)
    got = {k: a for k, a in run.latest().items() if a[6] > 0}
    assert set(got) == set(expected)
    for k, (count, low, high, total) in expected.items():
        a = got[k]
        assert a[6] == count and a[7][:3] == (count, low, high)
        assert a[7][3] == pytest.approx(total, rel=1e-12, abs=1e-9)


def test_versions_strictly_increase_per_window_and_closed_is_last():
    changes, _ = random_workload(seed=3, late_fraction=0.05)
    run = Run(grace_s=20)
    for start in range(0, len(changes), 97):
        run.feed(*changes[start:start + 97])
    per_window = collections.defaultdict(list)
    for a in run.emitted:
        per_window[a[:2] + a[3:5]].append(a)
    assert run.late, "the workload has late readings"
    for emissions in per_window.values():
        versions = [a[12] for a in emissions]
        assert versions == sorted(set(versions)), versions
        assert all(not a[-1] for a in emissions[:-1])


def test_same_input_in_other_batches_gives_the_same_version_to_content_mapping():
    changes, _ = random_workload(seed=11, late_fraction=0.05)
    by_version = []
    for batch in (1, 50, 1000):
        run = Run(grace_s=20)
        for start in range(0, len(changes), batch):
            run.feed(*changes[start:start + batch])
        by_version.append({(a[:2] + a[3:5], a[12]): a for a in run.emitted})
        last = {k: v for k, v in run.latest().items()}
        if batch == 1:
            final = last
        else:
            assert last == final
    # Whatever the batching, a version always carries the same content.
    for mapping in by_version[1:]:
        for key, aggregate in mapping.items():
            assert by_version[0][key] == aggregate
