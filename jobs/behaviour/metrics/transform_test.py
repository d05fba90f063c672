"""The job's SQL on bounded in-memory data: a local streaming TableEnvironment over a JSON file.

The file is read in order by one task, and the watermark is emitted after every event
(`pipeline.auto-watermark-interval: 0`), so which events are late is deterministic here: the same
rule as in production (behind the watermark on arrival), without Kafka's interleaving of
partitions. End of input moves the watermark to the end of time: every window and session fires.
"""

from __future__ import annotations

import json
import random

import pytest
from pyflink.table import EnvironmentSettings, TableEnvironment

from jobs.behaviour.metrics import reference, transform
from jobs.behaviour.metrics.reference import RefEvent

BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LATENESS_S = 5


def _row(event: RefEvent) -> dict:
    return {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "session_id": event.session_id,
        "anonymous_id": event.anonymous_id,
        "event_type": event.event_type,
        "page": {"path": event.path, "url": "https://shop.example" + event.path},
        "device": {"category": event.device_category},
        "client_time": {"seconds": event.ms // 1000, "nanos": (event.ms % 1000) * 1_000_000},
        "attributes": {"ab.variant": "B"},
    }


def ev(n, offset_ms, user="u1", event_type="USER_EVENT_TYPE_PAGE_VIEW", path="/home", session="s1",
       anonymous=None, device="DEVICE_CATEGORY_DESKTOP"):
    return RefEvent(f"e{n}", user, anonymous if anonymous is not None else "a-" + (user or "anon"), session,
                    event_type, path, device, BASE_MS + offset_ms)


class Pipeline:
    """The transform's views over one file of events."""

    def __init__(self, tmp_path, events, windows=transform.WindowSpec()):
        path = tmp_path / "events.json"
        path.write_text("".join(json.dumps(_row(e)) + "\n" for e in events), encoding="utf-8")
        self.t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
        config = self.t_env.get_config()
        config.set("parallelism.default", "1")
        config.set("pipeline.auto-watermark-interval", "0")
        self.t_env.execute_sql(f"""
CREATE TEMPORARY TABLE events (
  {transform.event_columns_sql()},
  {transform.event_time_columns_sql(LATENESS_S)}
) WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'json')""")
        transform.register(self.t_env, "events", windows)

    def rows(self, query: str) -> list[tuple]:
        with self.t_env.execute_sql(query).collect() as results:
            return [tuple(row) for row in results]

    def metrics(self) -> dict[tuple, tuple]:
        rows = self.rows(f"""
SELECT window_kind, window_start_time.seconds, window_end_time.seconds, dimension, dimension_value,
       event_count, unique_user_count, unique_session_count, late_event_count, version, window_closed,
       record_key, window_start_time.nanos
FROM {transform.BEHAVIOUR_METRICS}""")
        out = {}
        for row in rows:
            key = row[:5]
            assert key not in out, f"window emitted twice: {key}"
            out[key] = row[5:]
        return out

    def sessions(self) -> list[tuple]:
        return sorted(self.rows(f"""
SELECT session_id, user_id, anonymous_id,
       session_start_time.seconds * 1000 + session_start_time.nanos / 1000000,
       session_end_time.seconds * 1000 + session_end_time.nanos / 1000000,
       event_count, page_view_count, unique_page_count, landing_page_path, exit_page_path, funnel_stage,
       converted, version, record_key
FROM {transform.SESSION_SUMMARIES}"""))

    def late(self) -> list[tuple]:
        return sorted(self.rows(f"""
SELECT event_id, record_key, event_ms, watermark_ms, lateness_ms, `page`.`path`, `attributes`['ab.variant']
FROM {transform.LATE_EVENTS}"""))


def _counts(metrics: dict) -> dict:
    return {key: value[:3] for key, value in metrics.items()}


def _ref_sessions(events) -> list[tuple]:
    return sorted(
        (s.session_id, s.user_id, s.anonymous_id, s.start_ms, s.end_ms, s.event_count, s.page_view_count,
         s.unique_page_count, s.landing_page_path, s.exit_page_path, s.funnel_stage, s.converted, 1, s.session_id)
        for s in reference.sessions(events)
    )


# --- hand-checked cases -------------------------------------------------------------------

HAND_EVENTS = [
    ev(1, 0, path="/home"),
    ev(2, 10_000, event_type="USER_EVENT_TYPE_PRODUCT_VIEW", path="/p/1"),
    ev(3, 70_000, user="", anonymous="anon-9", session="s9"),  # anonymous visitor
    ev(4, 130_000, path="/home"),
    ev(5, 20_000, user="u3", session="s3"),  # 110 s behind the watermark (125 s): late
    ev(6, 128_000, event_type="USER_EVENT_TYPE_ADD_TO_CART", path="/cart"),  # 2 s behind the top: on time
    ev(7, 129_000, user="bot", device="DEVICE_CATEGORY_BOT"),  # bots are never counted
    ev(8, 3_000_000, event_type="USER_EVENT_TYPE_PURCHASE", path="/checkout/done"),  # 48 min later: new session
]


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    pipeline = Pipeline(tmp_path_factory.mktemp("hand"), HAND_EVENTS)
    return pipeline.metrics(), pipeline.sessions(), pipeline.late()


def test_tumbling_counts_per_minute_and_dimension(hand):
    metrics, _, _ = hand
    t = "WINDOW_KIND_TUMBLING"
    base = BASE_MS // 1000
    assert metrics[(t, base, base + 60, "METRIC_DIMENSION_ALL", "")][:3] == (2, 1, 1)
    assert metrics[(t, base + 60, base + 120, "METRIC_DIMENSION_ALL", "")][:3] == (1, 1, 1)
    assert metrics[(t, base + 120, base + 180, "METRIC_DIMENSION_ALL", "")][:3] == (2, 1, 1)
    assert metrics[(t, base, base + 60, "METRIC_DIMENSION_EVENT_TYPE", "USER_EVENT_TYPE_PRODUCT_VIEW")][:3] == (1, 1, 1)
    assert metrics[(t, base + 120, base + 180, "METRIC_DIMENSION_PAGE_PATH", "/cart")][:3] == (1, 1, 1)
    assert metrics[(t, base, base + 60, "METRIC_DIMENSION_DEVICE_CATEGORY", "DEVICE_CATEGORY_DESKTOP")][:3] == (2, 1, 1)
    # No window for the late event's minute beyond the on-time ones, and no bot category at all.
    assert not [k for k in metrics if k[4] == "DEVICE_CATEGORY_BOT"]


def test_hopping_windows_cover_five_minutes_every_minute(hand):
    metrics, _, _ = hand
    base = BASE_MS // 1000
    all_rows = {k[1]: v[:3] for k, v in metrics.items() if k[0] == "WINDOW_KIND_HOPPING" and k[3] == "METRIC_DIMENSION_ALL"}
    # Events at 0, 10, 70, 128, 130 s fall in the windows starting 4 min before to their own minute.
    assert all_rows[base - 240] == (2, 1, 1)
    assert all_rows[base] == (5, 2, 2)  # [0, 300): everything but the late, the bot and the purchase
    assert all_rows[base + 120] == (2, 1, 1)
    assert {k[2] - k[1] for k in metrics if k[0] == "WINDOW_KIND_HOPPING"} == {300}


def test_distinct_users_fall_back_to_the_anonymous_id(hand):
    metrics, _, _ = hand
    base = BASE_MS // 1000
    row = metrics[("WINDOW_KIND_HOPPING", base, base + 300, "METRIC_DIMENSION_PAGE_PATH", "/home")]
    assert row[:3] == (3, 2, 2)  # u1 twice and anon-9


def test_metric_rows_are_final_single_emissions(hand):
    metrics, _, _ = hand
    for key, (_, _, _, late_count, version, closed, record_key, nanos) in metrics.items():
        assert (late_count, version, closed, nanos) == (0, 1, True, 0), key
        number = {"METRIC_DIMENSION_ALL": 1, "METRIC_DIMENSION_EVENT_TYPE": 2, "METRIC_DIMENSION_PAGE_PATH": 3,
                  "METRIC_DIMENSION_DEVICE_CATEGORY": 4}[key[3]]
        assert record_key == f"{number}:{key[4]}"


def test_sessions_split_on_the_gap_with_funnel_and_conversion(hand):
    _, sessions, _ = hand
    by_id = {s[0]: s for s in sessions}
    first = by_id[f"u1:{BASE_MS}"]
    assert first[5:12] == (4, 2, 3, "/home", "/home", "FUNNEL_STAGE_CART", False)
    assert first[3:5] == (BASE_MS, BASE_MS + 130_000)
    purchase = by_id[f"u1:{BASE_MS + 3_000_000}"]
    assert purchase[5:12] == (1, 0, 1, "/checkout/done", "/checkout/done", "FUNNEL_STAGE_PURCHASE", True)
    anonymous = by_id[f"anon-9:{BASE_MS + 70_000}"]
    assert anonymous[1:3] == ("", "anon-9")
    assert "u3" not in {s[1] for s in sessions}  # only event was late
    assert len(sessions) == 3


def test_late_events_go_to_the_side_output_only(hand):
    _, _, late = hand
    assert late == [("e5", "s3", BASE_MS + 20_000, BASE_MS + 125_000, 105_000, "/home", "B")]


# --- a larger generated stream against the reference -------------------------------------

def _generated_events(count=400, seed=7):
    rng = random.Random(seed)
    types = ["USER_EVENT_TYPE_PAGE_VIEW"] * 5 + [
        "USER_EVENT_TYPE_PRODUCT_VIEW", "USER_EVENT_TYPE_PRODUCT_VIEW", "USER_EVENT_TYPE_CLICK",
        "USER_EVENT_TYPE_ADD_TO_CART", "USER_EVENT_TYPE_CHECKOUT", "USER_EVENT_TYPE_PURCHASE",
    ]
    events, clock = [], 0
    for n in range(count):
        clock += rng.randint(0, 9_000)
        offset = clock
        if rng.random() < 0.05:
            offset -= rng.randint(10_000, 200_000)  # delivered late
        elif rng.random() < 0.3:
            offset -= rng.randint(0, 4_000)  # out of order, within the allowed lateness
        user = rng.choice(["u1", "u2", "u3", "u4", "", ""])
        events.append(ev(
            n, offset, user=user, anonymous=f"anon-{rng.randint(1, 6)}", session=f"s{rng.randint(1, 8)}",
            event_type=rng.choice(types), path=rng.choice(["/home", "/p/1", "/p/2", "/cart", ""]),
            device=rng.choice(["DEVICE_CATEGORY_DESKTOP"] * 6 + ["DEVICE_CATEGORY_MOBILE"] * 3 + ["DEVICE_CATEGORY_BOT"]),
        ))
        if rng.random() < 0.01:
            clock += 40 * 60_000  # a pause longer than the session gap
    return events


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    events = _generated_events()
    pipeline = Pipeline(tmp_path_factory.mktemp("generated"), events)
    return events, pipeline.metrics(), pipeline.sessions(), pipeline.late()


def test_generated_stream_late_events_match_the_watermark_rule(generated):
    events, _, _, late = generated
    _, expected_late = reference.split_late(events, LATENESS_S * 1000)
    assert expected_late, "the generated stream should contain late events"
    assert [row[0] for row in late] == sorted(e.event_id for e in expected_late)


def test_generated_stream_metrics_match_the_reference(generated):
    events, metrics, _, _ = generated
    on_time, _ = reference.split_late(events, LATENESS_S * 1000)
    assert _counts(metrics) == reference.metrics(on_time)


def test_generated_stream_sessions_match_the_reference(generated):
    events, _, sessions, _ = generated
    on_time, _ = reference.split_late(events, LATENESS_S * 1000)
    assert sessions == _ref_sessions(on_time)


def test_a_second_copy_of_an_event_id_is_dropped_before_anything_else(tmp_path):
    # e1 and e2 arrive twice (a producer retried after a crash); the second e2 is also behind the
    # watermark (95 s after e3): a duplicate, so neither counted again nor reported late.
    events = [ev(1, 0), ev(2, 10_000), ev(1, 0), ev(3, 100_000), ev(2, 10_000)]
    pipeline = Pipeline(tmp_path, events)
    metrics = pipeline.metrics()
    base = BASE_MS // 1000
    assert metrics[("WINDOW_KIND_TUMBLING", base, base + 60, "METRIC_DIMENSION_ALL", "")][:3] == (2, 1, 1)
    assert _counts(metrics) == reference.metrics(reference.unique(events))
    assert pipeline.late() == []


def test_window_spec_rejects_a_slide_that_does_not_divide_the_size():
    with pytest.raises(ValueError, match="multiple of its slide"):
        transform.WindowSpec(hopping_size_seconds=300, hopping_slide_seconds=70)


def test_interval_literals_take_any_length():
    assert transform.interval_sql(300) == "INTERVAL '0 00:05:00.000' DAY TO SECOND(3)"
    assert transform.interval_sql(90_061.5) == "INTERVAL '1 01:01:01.500' DAY TO SECOND(3)"
