"""What the behaviour job must output, recomputed in plain Python (standard library only).

Written from the job's documented semantics, not from its SQL, so the tests compare two
independent computations. Used by transform_test (flink set) and kafka_integration_test (core set).

An event is a `RefEvent`; times are epoch milliseconds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

FUNNEL_RANK = {
    "USER_EVENT_TYPE_PRODUCT_VIEW": 2,
    "USER_EVENT_TYPE_ADD_TO_CART": 3,
    "USER_EVENT_TYPE_CHECKOUT": 4,
    "USER_EVENT_TYPE_PURCHASE": 5,
}
FUNNEL_STAGE = {
    1: "FUNNEL_STAGE_VISIT",
    2: "FUNNEL_STAGE_PRODUCT_VIEW",
    3: "FUNNEL_STAGE_CART",
    4: "FUNNEL_STAGE_CHECKOUT",
    5: "FUNNEL_STAGE_PURCHASE",
}


@dataclass(frozen=True)
class RefEvent:
    event_id: str
    user_id: str
    anonymous_id: str
    session_id: str
    event_type: str
    path: str
    device_category: str
    ms: int

    @property
    def user_key(self) -> str:
        return self.user_id or self.anonymous_id

    @property
    def is_bot(self) -> bool:
        return self.device_category == "DEVICE_CATEGORY_BOT"


def unique(events: Iterable[RefEvent]) -> list[RefEvent]:
    """The first copy of each event id, in arrival order (later copies are dropped before anything else)."""
    seen: set[str] = set()
    out = []
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            out.append(event)
    return out


def split_late(events: Sequence[RefEvent], allowed_lateness_ms: int) -> tuple[list[RefEvent], list[RefEvent]]:
    """(on time, late) for ONE ordered stream whose watermark advances after every event.

    The watermark is the largest event time seen so far minus the allowed lateness; an event
    behind the watermark as it arrives is late. Bots are dropped from both.
    """
    on_time, late = [], []
    watermark = None
    for event in events:
        if event.is_bot:
            continue
        if watermark is not None and event.ms < watermark:
            late.append(event)
        else:
            on_time.append(event)
        candidate = event.ms - allowed_lateness_ms
        watermark = candidate if watermark is None else max(watermark, candidate)
    return on_time, late


def _dimensions(event: RefEvent) -> list[tuple[str, str]]:
    return [
        ("METRIC_DIMENSION_ALL", ""),
        ("METRIC_DIMENSION_EVENT_TYPE", event.event_type),
        ("METRIC_DIMENSION_PAGE_PATH", event.path),
        ("METRIC_DIMENSION_DEVICE_CATEGORY", event.device_category),
    ]


def window_starts(ms: int, size_ms: int, slide_ms: int) -> list[int]:
    """Starts of the windows [start, start + size) aligned to the epoch that contain `ms`."""
    last = ms - ms % slide_ms
    return [start for start in range(last - size_ms + slide_ms, last + 1, slide_ms) if start <= ms < start + size_ms]


def metrics(
    events: Iterable[RefEvent],
    tumbling_ms: int = 60_000,
    hopping_size_ms: int = 300_000,
    hopping_slide_ms: int = 60_000,
) -> dict[tuple, tuple[int, int, int]]:
    """{(window kind, start s, end s, dimension, value): (events, distinct users, distinct sessions)}."""
    groups: dict[tuple, list[RefEvent]] = defaultdict(list)
    kinds = (
        ("WINDOW_KIND_TUMBLING", tumbling_ms, tumbling_ms),
        ("WINDOW_KIND_HOPPING", hopping_size_ms, hopping_slide_ms),
    )
    for event in events:
        if event.is_bot:
            continue
        for kind, size, slide in kinds:
            for start in window_starts(event.ms, size, slide):
                for dimension, value in _dimensions(event):
                    groups[(kind, start // 1000, (start + size) // 1000, dimension, value)].append(event)
    return {
        key: (len(members), len({e.user_key for e in members}), len({e.session_id for e in members}))
        for key, members in groups.items()
    }


@dataclass(frozen=True)
class RefSession:
    session_id: str
    user_id: str
    anonymous_id: str
    start_ms: int
    end_ms: int
    event_count: int
    page_view_count: int
    unique_page_count: int
    landing_page_path: str
    exit_page_path: str
    funnel_stage: str
    converted: bool


def sessions(events: Iterable[RefEvent], gap_ms: int = 30 * 60_000) -> list[RefSession]:
    """Session windows per user key: an event within `gap_ms` of the previous one extends it."""
    by_user: dict[str, list[RefEvent]] = defaultdict(list)
    for event in events:
        if not event.is_bot:
            by_user[event.user_key].append(event)
    out = []
    for user_key, user_events in by_user.items():
        user_events.sort(key=lambda e: e.ms)
        current: list[RefEvent] = []
        for event in user_events:
            if current and event.ms - current[-1].ms > gap_ms:
                out.append(_summary(user_key, current))
                current = []
            current.append(event)
        if current:
            out.append(_summary(user_key, current))
    return out


def _summary(user_key: str, members: list[RefEvent]) -> RefSession:
    paged = sorted((e.ms, e.path) for e in members if e.path)
    rank = max(FUNNEL_RANK.get(e.event_type, 1) for e in members)
    start = min(e.ms for e in members)
    return RefSession(
        session_id=f"{user_key}:{start}",
        user_id=max(e.user_id for e in members),
        anonymous_id=max(e.anonymous_id for e in members),
        start_ms=start,
        end_ms=max(e.ms for e in members),
        event_count=len(members),
        page_view_count=sum(1 for e in members if e.event_type == "USER_EVENT_TYPE_PAGE_VIEW"),
        unique_page_count=len({e.path for e in members if e.path}),
        landing_page_path=paged[0][1] if paged else "",
        exit_page_path=paged[-1][1] if paged else "",
        funnel_stage=FUNNEL_STAGE[rank],
        converted=rank == 5,
    )
