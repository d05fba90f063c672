"""Test helpers: ReadingAggregate, BehaviourMetric and SessionSummary streams with several versions
per window or session, and the rows the store must show for them computed independently of
ClickHouse (plain Python over the messages).
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Iterable

from google.protobuf import timestamp_pb2

from datapipelines.behaviour.v1 import behaviour_metric_pb2, session_summary_pb2
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


# --- behaviour ---------------------------------------------------------------------------

DIMENSION_NAMES = {1: "all", 2: "event_type", 3: "page_path", 4: "device_category"}
FUNNEL_NAMES = {0: "unspecified", 1: "visit", 2: "product_view", 3: "cart", 4: "checkout", 5: "purchase"}
EVENT_TYPES = ("USER_EVENT_TYPE_PAGE_VIEW", "USER_EVENT_TYPE_PRODUCT_VIEW", "USER_EVENT_TYPE_ADD_TO_CART",
               "USER_EVENT_TYPE_PURCHASE")
PAGES = ("/", "/products/1", "/products/2", "/cart", "/checkout")
DEVICES = ("DEVICE_CATEGORY_DESKTOP", "DEVICE_CATEGORY_MOBILE")


def behaviour_metric(dimension: int, value: str, minute: int, version: int, kind: int = 1, seed: int = 0,
                     closed: bool = False) -> behaviour_metric_pb2.BehaviourMetric:
    """A window's `version`-th emission for one dimension value; counts depend on all the arguments."""
    rng = random.Random("m/%d/%s/%d/%d/%d/%d" % (dimension, value, minute, version, kind, seed))
    start = BASE_SECONDS + 60 * minute
    size = 60 if kind == 1 else 300
    events = rng.randint(1, 400)
    users = rng.randint(1, events)
    return behaviour_metric_pb2.BehaviourMetric(
        window_kind=kind, window_start_time=_ts(start), window_end_time=_ts(start + size),
        dimension=dimension, dimension_value=value, event_count=events, unique_user_count=users,
        unique_session_count=rng.randint(users, users + 5), late_event_count=rng.randint(0, 3), version=version,
        emit_time=_ts(start + size + version, rng.randint(0, 999) * 1_000_000), window_closed=closed,
    )


def behaviour_dimensions() -> list:
    """(dimension, value) of every metric row per window."""
    return ([(1, "")] + [(2, name) for name in EVENT_TYPES] + [(3, path) for path in PAGES]
            + [(4, name) for name in DEVICES])


def behaviour_stream(minutes: int = 5, versions: int = 3, seed: int = 0, kinds: Iterable[int] = (1,)) -> list:
    """Every (window, dimension value) emitted `versions` times (the last one closed), shuffled."""
    out = []
    for kind in kinds:
        for minute in range(minutes):
            for dimension, value in behaviour_dimensions():
                for version in range(1, versions + 1):
                    out.append(behaviour_metric(dimension, value, minute, version, kind, seed,
                                                closed=version == versions))
    random.Random(seed).shuffle(out)
    return out


def metric_identity(message) -> tuple:
    return (message.window_kind, message.window_start_time.seconds, message.window_end_time.seconds,
            message.dimension, message.dimension_value)


def expected_metric_row(message) -> dict:
    """The row the store holds for `message`, as the behaviour metrics API returns it."""
    return {
        "window_kind": KIND_NAMES[message.window_kind],
        "window_start": iso(message.window_start_time.seconds, message.window_start_time.nanos),
        "window_end": iso(message.window_end_time.seconds, message.window_end_time.nanos),
        "dimension": DIMENSION_NAMES[message.dimension],
        "dimension_value": message.dimension_value,
        "event_count": message.event_count,
        "unique_user_count": message.unique_user_count,
        "unique_session_count": message.unique_session_count,
        "late_event_count": message.late_event_count,
        "version": message.version,
        "emit_time": iso(message.emit_time.seconds, message.emit_time.nanos),
        "window_closed": message.window_closed,
    }


def session_summary(number: int, version: int, seed: int = 0, minutes: int = 10) -> session_summary_pb2.SessionSummary:
    """Session `number`'s `version`-th emission: later versions have more events and a stage at least as far."""
    rng = random.Random("s/%d/%d" % (number, seed))
    start_ms = (BASE_SECONDS + rng.randrange(0, 60 * minutes)) * 1000 + rng.randrange(0, 1000)
    user = "user-%03d" % number
    stage = min(5, rng.randint(1, 5) + (version - 1) // 2)
    events = rng.randint(1, 30) + 3 * version
    duration_ms = rng.randint(0, 1_500_000) + 60_000 * (version - 1)
    end_ms = start_ms + duration_ms
    return session_summary_pb2.SessionSummary(
        session_id="%s:%d" % (user, start_ms), user_id=user if number % 3 else "",
        anonymous_id="anon-%03d" % number,
        session_start_time=_ts(start_ms // 1000, start_ms % 1000 * 1_000_000),
        session_end_time=_ts(end_ms // 1000, end_ms % 1000 * 1_000_000),
        event_count=events, page_view_count=events // 2, unique_page_count=max(1, events // 4),
        landing_page_path=PAGES[number % len(PAGES)], exit_page_path=PAGES[(number + version) % len(PAGES)],
        funnel_stage=stage, converted=stage == 5, version=version,
        emit_time=_ts(end_ms // 1000 + 1800 + version),
    )


def session_stream(sessions: int = 20, versions: int = 2, seed: int = 0) -> list:
    """Every session emitted `versions` times, shuffled."""
    out = [session_summary(number, version, seed) for number in range(sessions)
           for version in range(1, versions + 1)]
    random.Random(seed).shuffle(out)
    return out


def session_identity(message) -> tuple:
    return (message.session_id, message.session_start_time.seconds, message.session_start_time.nanos // 1_000_000)


def expected_session_row(message) -> dict:
    return {
        "session_id": message.session_id,
        "user_id": message.user_id,
        "anonymous_id": message.anonymous_id,
        "session_start": iso(message.session_start_time.seconds, message.session_start_time.nanos),
        "session_end": iso(message.session_end_time.seconds, message.session_end_time.nanos),
        "event_count": message.event_count,
        "page_view_count": message.page_view_count,
        "unique_page_count": message.unique_page_count,
        "landing_page_path": message.landing_page_path,
        "exit_page_path": message.exit_page_path,
        "funnel_stage": FUNNEL_NAMES[message.funnel_stage],
        "converted": message.converted,
        "version": message.version,
        "emit_time": iso(message.emit_time.seconds, message.emit_time.nanos),
    }


def latest_by(messages: Iterable, identity) -> dict:
    """identity -> the message with the largest version."""
    out = {}
    for message in messages:
        key = identity(message)
        if key not in out or message.version > out[key].version:
            out[key] = message
    return out


def session_duration_ms(message) -> int:
    return ((message.session_end_time.seconds - message.session_start_time.seconds) * 1000
            + (message.session_end_time.nanos - message.session_start_time.nanos) // 1_000_000)
