"""Test helpers: ReadingAggregate streams with several versions per window, and the rows the store
must show for them computed independently of ClickHouse (plain Python over the messages).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Iterable

from google.protobuf import timestamp_pb2

from datapipelines.iot.v1 import reading_aggregate_pb2

SCOPE_NAMES = {1: "device", 2: "site"}
KIND_NAMES = {1: "tumbling", 2: "hopping"}
METRIC_FIELDS = ("temperature_celsius", "humidity_percent", "pressure_hpa", "battery_percent")
BASE_SECONDS = 1_700_000_040  # a minute boundary (2023-11-14T22:14:00Z)


def _ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def aggregate(scope: int, key_id: str, site_id: str, minute: int, version: int, kind: int = 1,
              seed: int = 0, closed: bool = False) -> reading_aggregate_pb2.ReadingAggregate:
    """A window's `version`-th emission; the statistics depend on (key, minute, version, seed)."""
    rng = random.Random("%s/%s/%d/%d/%d" % (scope, key_id, minute, version, seed))
    start = BASE_SECONDS + 60 * minute
    size = 60 if kind == 1 else 300
    message = reading_aggregate_pb2.ReadingAggregate(
        scope=scope, key_id=key_id, site_id=site_id, window_kind=kind,
        window_start_time=_ts(start), window_end_time=_ts(start + size),
        reading_count=rng.randint(1, 500), late_reading_count=rng.randint(0, 3), version=version,
        emit_time=_ts(start + size + version, rng.randint(0, 999) * 1_000_000), window_closed=closed,
    )
    for name in METRIC_FIELDS:
        if name == "pressure_hpa" and rng.random() < 0.2:
            continue  # some windows have no pressure readings: count 0, stats unset
        count = rng.randint(1, 100)
        low = rng.uniform(-20, 40)
        high = low + rng.uniform(0, 15)
        total = (low + high) / 2 * count
        getattr(message, name).CopyFrom(reading_aggregate_pb2.MetricStats(
            count=count, min=round(low, 3), max=round(high, 3), mean=total / count, sum=total))
    return message


def stream(devices: int = 6, sites: int = 2, minutes: int = 5, versions: int = 3, seed: int = 0,
           kinds: Iterable[int] = (1,)) -> list:
    """Every window emitted `versions` times (the last one closed), shuffled like a real topic."""
    out = []
    for kind in kinds:
        for minute in range(minutes):
            for device in range(devices):
                site = "site-%d" % (device % sites)
                for version in range(1, versions + 1):
                    out.append(aggregate(1, "device-%03d" % device, site, minute, version, kind, seed,
                                         closed=version == versions))
            for site_number in range(sites):
                site = "site-%d" % site_number
                for version in range(1, versions + 1):
                    out.append(aggregate(2, site, site, minute, version, kind, seed, closed=version == versions))
    random.Random(seed).shuffle(out)
    return out


def iso(seconds: int, nanos: int = 0) -> str:
    value = dt.datetime.fromtimestamp(seconds, dt.timezone.utc) + dt.timedelta(microseconds=nanos // 1000 // 1000 * 1000)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def expected_row(message) -> dict:
    """The row the store holds for `message`, as the aggregates API returns it."""
    row = {
        "scope": SCOPE_NAMES[message.scope],
        "key_id": message.key_id,
        "site_id": message.site_id,
        "window_kind": KIND_NAMES[message.window_kind],
        "window_start": iso(message.window_start_time.seconds, message.window_start_time.nanos),
        "window_end": iso(message.window_end_time.seconds, message.window_end_time.nanos),
        "reading_count": message.reading_count,
        "late_reading_count": message.late_reading_count,
        "version": message.version,
        "emit_time": iso(message.emit_time.seconds, message.emit_time.nanos),
        "window_closed": message.window_closed,
    }
    for name in METRIC_FIELDS:
        stats = getattr(message, name)
        row[name + "_count"] = stats.count
        row[name + "_min"] = stats.min
        row[name + "_max"] = stats.max
        row[name + "_mean"] = stats.mean
    return row


def window_identity(message) -> tuple:
    return (message.scope, message.key_id, message.window_kind, message.window_start_time.seconds,
            message.window_end_time.seconds)


def latest(messages: Iterable) -> dict:
    """window identity -> the message with the largest version (what every query must show)."""
    out = {}
    for message in messages:
        key = window_identity(message)
        if key not in out or message.version > out[key].version:
            out[key] = message
    return out
