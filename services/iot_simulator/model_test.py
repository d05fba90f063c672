"""The simulated fleet: rates, mixes of changes, lateness and determinism."""

import datetime as dt

import pytest

from services.iot_simulator.config import SimulatorConfig
from services.iot_simulator.model import Delete, Fleet, Insert, Update

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def run(config, ticks=200):
    fleet = Fleet(config)
    out = []
    for i in range(ticks):
        changes, _ = fleet.tick(T0 + dt.timedelta(seconds=i / config.ticks_per_second))
        out.extend(changes)
    return fleet, out


def test_rate_is_honoured_across_ticks():
    config = SimulatorConfig(rate=123.0, ticks_per_second=10)
    _, changes = run(config, ticks=100)  # 10 simulated seconds
    assert len(changes) in (1229, 1230)


def test_same_seed_same_stream_and_other_seed_differs():
    a = run(SimulatorConfig(seed=3))[1]
    assert a == run(SimulatorConfig(seed=3))[1]
    assert a != run(SimulatorConfig(seed=4))[1]


def test_updates_and_deletes_target_live_earlier_readings():
    config = SimulatorConfig(rate=500, update_fraction=0.1, delete_fraction=0.1, late_fraction=0.1)
    _, changes = run(config, ticks=300)
    live = set()
    kinds = {Insert: 0, Update: 0, Delete: 0}
    for change in changes:
        kinds[type(change)] += 1
        if isinstance(change, Insert):
            assert change.reading_id not in live
            live.add(change.reading_id)
        else:
            assert change.reading_id in live, "a change to a reading that is gone or never was"
            if isinstance(change, Delete):
                live.remove(change.reading_id)
    total = sum(kinds.values())
    assert 0.07 < kinds[Update] / total < 0.13
    assert 0.07 < kinds[Delete] / total < 0.13


def test_late_readings_lag_behind_and_stay_within_the_limit():
    config = SimulatorConfig(rate=1000, late_fraction=0.2, update_fraction=0, delete_fraction=0, max_lateness_s=60)
    fleet = Fleet(config)
    lags = []
    for i in range(50):
        now = T0 + dt.timedelta(seconds=i / 10)
        changes, counts = fleet.tick(now)
        lags += [(now - c.reading_time).total_seconds() for c in changes if isinstance(c, Insert)]
    late = [lag for lag in lags if lag > 0]
    assert 0.15 < len(late) / len(lags) < 0.25
    assert max(late) <= 60 and min(late) >= 1


def test_values_are_plausible_and_devices_belong_to_sites():
    fleet, changes = run(SimulatorConfig(rate=1000), ticks=50)
    sites = {s.site_id for s in fleet.sites}
    for change in changes:
        if isinstance(change, Insert):
            assert change.site_id in sites
            assert -20 < change.temperature_celsius < 50
            assert change.humidity_percent is None or 0 <= change.humidity_percent <= 100
            assert 0 <= change.battery_percent <= 100 and change.pressure_hpa > 900


def test_outages_silence_devices():
    config = SimulatorConfig(devices=20, sites=2, outage_probability=0.5, rate=100)
    fleet = Fleet(config)
    _, counts = fleet.tick(T0)
    assert counts.silent_devices > 0


@pytest.mark.parametrize("bad", [dict(sites=0), dict(devices=2, sites=3), dict(rate=0), dict(late_fraction=1.5),
                                 dict(update_fraction=0.6, delete_fraction=0.6)])
def test_invalid_settings_are_refused_with_a_reason(bad):
    with pytest.raises(ValueError, match="invalid simulator settings"):
        SimulatorConfig(**bad)
