"""Event-time windows over CDC readings with Kafka Streams semantics (pure: no Kafka, no protobuf).

One `PartitionState` per input partition holds everything of that partition: the connector
keys change events by site, so a site and all its devices live in one partition and every
window is computed from one ordered stream.

Time. Event time is `reading_time`. Stream time is the largest event time seen in the
partition (records with a future timestamp excluded). A window [start, end) is closed once
stream time >= end + grace; the watermark reported with late readings is stream time - grace
(windows ending at or before it are final).

Panes. Both window kinds are unions of panes of gcd(sizes, advances) = 1 minute: the tumbling
1-minute window is one pane, a hopping 5-minute window is five. A reading updates the two panes
it falls in (its device's and its site's), not the 12 windows it belongs to; a window's
statistics are merged from its panes when it is emitted. A pane lives until the last window
containing it closes.

Changes. Every change of a reading replaces the previous one (keyed by reading_id): the old
values leave their panes, the new ones join theirs (an update may move a reading to other
windows; a delete only leaves). A change whose `source.lsn` is not newer than the one applied
is a replay and is skipped, so at-least-once delivery from the connector counts once. Entries
are kept until the last pane of any version of the reading expired, so a replay that arrives
while any window it touches is open is still recognised.

Determinism. A pane's sums are the left fold of its members in the order they last joined;
a removal re-folds the remaining members. The changelog (state.py) stores the latest version
of every entry in the same order, so a state restored from it holds bit-identical sums. A
window's `version` is the input offset + 1 of the last record that changed (or closed) it:
a replay after a crash emits the same content under the same version.

Outputs (plain tuples, encoded by io.py):
    aggregate  (scope, key_id, site_id, kind, start_us, end_us, reading_count,
                temperature, humidity, pressure, battery,   # each (count, min, max, sum)
                late_reading_count, version, closed)
    late       (change, reason, missed [(kind, start_us, end_us)], watermark_us)
    changelog  {reading_id: Entry or None (tombstone)}, in the order of the last write
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Iterable

from jobs.iot.aggregator.envelope import C_DEVICE, C_ID, C_LSN, C_SITE, C_TIME, C_CAPTURE_MS, C_BEFORE_TIME

# The numbers are the contract's enum values (reading_aggregate.proto, window.proto, late_reading.proto).
SCOPE_DEVICE = 1
SCOPE_SITE = 2
KIND_TUMBLING = 1
KIND_HOPPING = 2
LATE_WINDOW_CLOSED = 1
LATE_FUTURE_TIMESTAMP = 3

MINUTE_US = 60_000_000
NEVER = -(1 << 62)  # stream time before the first record
_INF = math.inf
_NO_VALUES = (0, 0.0, 0.0, 0.0)  # statistics of a metric no reading had


@dataclass(frozen=True)
class WindowSpec:
    """Windows of one kind: [start, start + size) for every start that is a multiple of `advance`."""

    kind: int
    size_us: int
    advance_us: int


@dataclass(frozen=True)
class Settings:
    windows: tuple[WindowSpec, ...] = (
        WindowSpec(KIND_TUMBLING, MINUTE_US, MINUTE_US),
        WindowSpec(KIND_HOPPING, 5 * MINUTE_US, MINUTE_US),
    )
    grace_us: int = 30_000_000
    # A reading this far ahead of its capture time (the envelope's ts_ms) is not counted.
    max_future_us: int = 3_600_000_000

    @property
    def pane_us(self) -> int:
        return math.gcd(*(n for w in self.windows for n in (w.size_us, w.advance_us)))

    def __post_init__(self):
        if not self.windows:
            raise ValueError("at least one window kind is needed")
        for w in self.windows:
            if w.size_us <= 0 or w.advance_us <= 0 or w.size_us % w.advance_us:
                raise ValueError(f"window size {w.size_us} us must be a positive multiple of its advance {w.advance_us} us")
        if self.grace_us < 0 or self.max_future_us < 0:
            raise ValueError("grace and max future must not be negative")


class Pane:
    """Readings of one device or site in one pane: members in join order and their statistics."""

    __slots__ = ("scope", "key", "site", "start", "members", "n", "stats", "late", "stale")

    def __init__(self, scope: int, key: str, site: str, start: int):
        self.scope = scope
        self.key = key
        self.site = site
        self.start = start
        self.members: dict = {}  # reading_id -> (change, applied stream time)
        self.n = 0
        # count, sum, min, max for temperature, humidity, pressure, battery
        self.stats = [0, 0.0, _INF, -_INF, 0, 0.0, _INF, -_INF, 0, 0.0, _INF, -_INF, 0, 0.0, _INF, -_INF]
        self.late: dict | None = None  # (window index, window start) -> members that arrived late for it
        self.stale = False  # a member left: stats are re-folded before they are read

    def refold(self) -> None:
        self.stats = [0, 0.0, _INF, -_INF, 0, 0.0, _INF, -_INF, 0, 0.0, _INF, -_INF, 0, 0.0, _INF, -_INF]
        self.stale = False
        for change, _ in self.members.values():
            _fold(self.stats, change)


def _fold(s: list, change: tuple) -> None:
    v = change[5]
    if v is not None:
        s[0] += 1
        s[1] += v
        if v < s[2]:
            s[2] = v
        if v > s[3]:
            s[3] = v
    v = change[6]
    if v is not None:
        s[4] += 1
        s[5] += v
        if v < s[6]:
            s[6] = v
        if v > s[7]:
            s[7] = v
    v = change[7]
    if v is not None:
        s[8] += 1
        s[9] += v
        if v < s[10]:
            s[10] = v
        if v > s[11]:
            s[11] = v
    v = change[8]
    if v is not None:
        s[12] += 1
        s[13] += v
        if v < s[14]:
            s[14] = v
        if v > s[15]:
            s[15] = v


class Slot:
    """Everything keyed by one pane start: the device and site panes, and entries retained until it expires."""

    __slots__ = ("devices", "sites", "retained")

    def __init__(self):
        self.devices: dict[str, Pane] = {}
        self.sites: dict[str, Pane] = {}
        self.retained: list = []


# Entry of one reading: (change, counted, applied stream time, retain pane start).
# `counted`: the change's values are in its panes. The entry lives until the pane `retain`
# expires (the latest pane of any version of the reading).
Entry = tuple


class PartitionState:
    """Windows and readings of one input partition."""

    def __init__(self, settings: Settings, partition: int = 0):
        self.settings = settings
        self.partition = partition
        self.pane_us = settings.pane_us
        self.grace_us = settings.grace_us
        self.max_future_us = settings.max_future_us
        self.windows = settings.windows
        self.stream_time = NEVER
        self.close_boundary = NEVER  # windows ending at or before this are closed
        self.next_close = NEVER  # the stream time - grace at which the next windows close
        self.readings: dict[int, Entry] = {}
        self.slots: dict[int, Slot] = {}
        self.starts: list[int] = []  # live pane starts, ascending
        self.dirty: dict[Pane, int] = {}  # changed panes -> version (offset + 1 of the last change)
        self.closed_out: list[tuple] = []
        self.late_out: list[tuple] = []
        self.changelog: dict[int, Entry | None] = {}
        self.duplicates = 0
        self._windows_cache: dict[int, tuple] = {}

    # --- windows ------------------------------------------------------------------------

    def windows_of(self, t: int) -> tuple:
        """(window index, start, end) of every window containing event time `t` (or pane start `t`)."""
        p = t - t % self.pane_us
        cached = self._windows_cache.get(p)
        if cached is None:
            found = []
            for index, w in enumerate(self.windows):
                start = p - p % w.advance_us
                while start > p - w.size_us:
                    found.append((index, start, start + w.size_us))
                    start -= w.advance_us
            cached = tuple(found)
            if len(self._windows_cache) > 10_000:
                self._windows_cache.clear()
            self._windows_cache[p] = cached
        return cached

    def _last_end(self, p: int) -> int:
        return max(end for _, _, end in self.windows_of(p))

    def _alive(self, p: int) -> bool:
        """Whether any window containing pane `p` is still open."""
        return self._last_end(p) + self.grace_us > self.stream_time

    def _closed(self, t: int) -> list:
        limit = self.stream_time - self.grace_us
        return [(self.windows[i].kind, start, end) for i, start, end in self.windows_of(t) if end <= limit]

    def _slot(self, p: int) -> Slot:
        slot = self.slots.get(p)
        if slot is None:
            slot = self.slots[p] = Slot()
            starts = self.starts
            if not starts or starts[-1] < p:
                starts.append(p)
            else:
                bisect.insort(starts, p)
        return slot

    # --- applying changes ---------------------------------------------------------------

    def apply(self, offset: int, change: tuple) -> None:
        """Applies one decoded change read at `offset` of this partition."""
        rid = change[C_ID]
        old = self.readings.get(rid)
        if old is not None and change[C_LSN] <= old[0][C_LSN]:
            self.duplicates += 1
            return
        st = self.stream_time
        t = change[C_TIME]
        p = t - t % self.pane_us
        op = change[0]
        capture = change[C_CAPTURE_MS]
        future = capture is not None and t > capture * 1000 + self.max_future_us
        if old is None and op != "d" and not future and st < p + self.pane_us:
            # The common case: a new reading, in order. All its windows are open and it is not
            # late for any of them (stream time has not reached the end of its pane).
            slot = self.slots.get(p) or self._slot(p)
            applied = t if t > st else st
            version = offset + 1
            member = (change, applied)
            pane = slot.devices.get(change[C_DEVICE])
            if pane is None:
                pane = slot.devices[change[C_DEVICE]] = Pane(SCOPE_DEVICE, change[C_DEVICE], change[C_SITE], p)
            pane.members[rid] = member
            pane.n += 1
            if not pane.stale:
                _fold(pane.stats, change)
            self.dirty[pane] = version
            pane = slot.sites.get(change[C_SITE])
            if pane is None:
                pane = slot.sites[change[C_SITE]] = Pane(SCOPE_SITE, change[C_SITE], change[C_SITE], p)
            pane.members[rid] = member
            pane.n += 1
            if not pane.stale:
                _fold(pane.stats, change)
            self.dirty[pane] = version
            entry = (change, True, applied, p)
            self.readings[rid] = entry
            slot.retained.append(rid)
            changelog = self.changelog
            if rid in changelog:
                del changelog[rid]
            changelog[rid] = entry
            if t > st:
                self.stream_time = t
                if t - self.grace_us >= self.next_close:
                    self._close(offset + 1)
            return
        self._apply_slow(offset, change, old, future, p)

    def _apply_slow(self, offset: int, change: tuple, old: Entry | None, future: bool, p: int) -> None:
        rid = change[C_ID]
        op = change[0]
        t = change[C_TIME]
        st = self.stream_time
        version = offset + 1
        missed: list = []
        retain = None
        # 1. The previous version leaves its panes (the closed windows keep it: they are final).
        if old is not None:
            old_change, old_counted, old_applied, retain = old
            if old_counted:
                old_p = old_change[C_TIME] - old_change[C_TIME] % self.pane_us
                slot = self.slots.get(old_p)
                if slot is not None:
                    for pane in (slot.devices.get(old_change[C_DEVICE]), slot.sites.get(old_change[C_SITE])):
                        if pane is not None and pane.members.pop(rid, None) is not None:
                            pane.n -= 1
                            pane.stale = True
                            if old_applied >= old_p + self.pane_us:
                                self._count_late(pane, old_applied, -1)
                            self.dirty[pane] = version
                missed.extend(self._closed(old_change[C_TIME]))
        elif op == "u" and change[C_BEFORE_TIME] is not None:
            missed.extend(self._closed(change[C_BEFORE_TIME]))
        elif op == "d" and not future:
            missed.extend(self._closed(t))
        # 2. The new version joins its panes if any of its windows is open.
        counted = False
        applied = st if st > t else t
        if op != "d" and not future:
            missed.extend(self._closed(t))
            if self._alive(p):
                slot = self._slot(p)
                member = (change, applied)
                for panes, scope, key in ((slot.devices, SCOPE_DEVICE, change[C_DEVICE]),
                                          (slot.sites, SCOPE_SITE, change[C_SITE])):
                    pane = panes.get(key)
                    if pane is None:
                        pane = panes[key] = Pane(scope, key, change[C_SITE], p)
                    pane.members[rid] = member
                    pane.n += 1
                    if not pane.stale:
                        _fold(pane.stats, change)
                    if applied >= p + self.pane_us:
                        self._count_late(pane, applied, 1)
                    self.dirty[pane] = version
                counted = True
                if retain is None or p > retain:
                    retain = p
        elif op == "d" and old is None and not future and self._alive(p):
            # A delete of a reading we never counted: remember it, so that a replayed insert
            # of the same row is not counted while its windows are open.
            retain = p
        # 3. The entry and its changelog record.
        if retain is not None:
            entry = (change, counted, applied, retain)
            self.readings[rid] = entry
            if old is None or old[3] != retain:
                self._slot(retain).retained.append(rid)
            changelog = self.changelog
            if rid in changelog:
                del changelog[rid]
            changelog[rid] = entry
        # 4. What could not be counted goes to the late-readings topic.
        if future:
            self.late_out.append((change, LATE_FUTURE_TIMESTAMP, [], st - self.grace_us))
        elif missed:
            unique = sorted(set(missed))
            self.late_out.append((change, LATE_WINDOW_CLOSED, unique, st - self.grace_us))
        # 5. Stream time.
        if not future and t > st:
            self.stream_time = t
            if t - self.grace_us >= self.next_close:
                self._close(version)

    def _count_late(self, pane: Pane, applied: int, delta: int) -> None:
        """Counts a member in the windows whose end stream time had passed when it arrived."""
        late = pane.late
        if late is None:
            late = pane.late = {}
        for index, start, end in self.windows_of(pane.start):
            if applied >= end:
                late[(index, start)] = late.get((index, start), 0) + delta

    # --- closing and emitting -----------------------------------------------------------

    def _close(self, version: int) -> None:
        """Closes the windows that stream time has passed (end + grace) and expires dead panes."""
        boundary = self.stream_time - self.grace_us
        previous = self.close_boundary
        closing: dict = {}
        for p in self.starts:
            if p >= boundary:
                break
            slot = self.slots[p]
            for index, start, end in self.windows_of(p):
                if previous < end <= boundary:
                    keys = closing.setdefault((index, start), set())
                    keys.update((SCOPE_DEVICE, key) for key in slot.devices)
                    keys.update((SCOPE_SITE, key) for key in slot.sites)
        for (index, start), keys in sorted(closing.items()):
            for scope, key in sorted(keys):
                aggregate = self.aggregate(scope, key, index, start, version, True)
                if aggregate is not None and aggregate[6] > 0:
                    self.closed_out.append(aggregate)
        self.close_boundary = boundary
        self.next_close = boundary - boundary % self.pane_us + self.pane_us
        # Expire panes whose windows are all closed; their readings leave the state.
        while self.starts and self._last_end(self.starts[0]) <= boundary:
            p = self.starts.pop(0)
            slot = self.slots.pop(p)
            for pane in list(slot.devices.values()) + list(slot.sites.values()):
                self.dirty.pop(pane, None)
            for rid in slot.retained:
                entry = self.readings.get(rid)
                if entry is not None and entry[3] == p:
                    del self.readings[rid]
                    changelog = self.changelog
                    if rid in changelog:
                        del changelog[rid]
                    changelog[rid] = None
            self._windows_cache.pop(p, None)

    def aggregate(self, scope: int, key: str, index: int, start: int, version: int, closed: bool):
        """The statistics of one window merged from its panes (None if it has no pane)."""
        spec = self.windows[index]
        slots = self.slots
        panes = []
        for p in range(start, start + spec.size_us, self.pane_us):
            slot = slots.get(p)
            if slot is not None:
                pane = (slot.devices if scope == SCOPE_DEVICE else slot.sites).get(key)
                if pane is not None:
                    if pane.stale:
                        pane.refold()
                    panes.append(pane)
        if not panes:
            return None
        late = 0
        for pane in panes:
            if pane.late:
                late += pane.late.get((index, start), 0)
        if len(panes) == 1:
            pane = panes[0]
            n = pane.n
            s = pane.stats
        else:
            n = 0
            s = [0, 0.0, _INF, -_INF, 0, 0.0, _INF, -_INF, 0, 0.0, _INF, -_INF, 0, 0.0, _INF, -_INF]
            for pane in panes:  # in pane order: the sums are a fixed fold
                n += pane.n
                ps = pane.stats
                for m in (0, 4, 8, 12):
                    if ps[m]:
                        s[m] += ps[m]
                        s[m + 1] += ps[m + 1]
                        if ps[m + 2] < s[m + 2]:
                            s[m + 2] = ps[m + 2]
                        if ps[m + 3] > s[m + 3]:
                            s[m + 3] = ps[m + 3]
        return (scope, key, panes[0].site, spec.kind, start, start + spec.size_us, n,
                (s[0], s[2], s[3], s[1]) if s[0] else _NO_VALUES,
                (s[4], s[6], s[7], s[5]) if s[4] else _NO_VALUES,
                (s[8], s[10], s[11], s[9]) if s[8] else _NO_VALUES,
                (s[12], s[14], s[15], s[13]) if s[12] else _NO_VALUES,
                late, version, closed)

    def flush(self) -> tuple[list, list, dict]:
        """Aggregates of every window changed or closed since the last flush, late readings, changelog."""
        limit = self.stream_time - self.grace_us
        versions: dict = {}
        for pane, version in self.dirty.items():
            for index, start, end in self.windows_of(pane.start):
                if end > limit:
                    key = (pane.scope, pane.key, index, start)
                    if versions.get(key, 0) < version:
                        versions[key] = version
        aggregates = self.closed_out
        for (scope, key, index, start), version in sorted(versions.items()):
            aggregate = self.aggregate(scope, key, index, start, version, False)
            if aggregate is not None:
                aggregates.append(aggregate)
        late, changelog = self.late_out, self.changelog
        self.dirty = {}
        self.closed_out = []
        self.late_out = []
        self.changelog = {}
        return aggregates, late, changelog

    # --- restore ------------------------------------------------------------------------

    def restore(self, entries: Iterable[tuple[int, Entry]], stream_time: int | None) -> int:
        """Rebuilds the state from changelog entries (in log order of their last write).

        Returns the number of entries kept. `stream_time` is the one committed with the input
        offsets; without it (offsets reset by hand) the latest arrival time of any entry is used.
        """
        entries = list(entries)
        if stream_time is None:
            stream_time = max((entry[2] for _, entry in entries), default=NEVER)
        self.stream_time = stream_time
        boundary = stream_time - self.grace_us
        self.close_boundary = boundary
        self.next_close = boundary - boundary % self.pane_us + self.pane_us if stream_time != NEVER else NEVER
        kept = 0
        for rid, entry in entries:
            change, counted, applied, retain = entry
            if not self._alive(retain):
                continue  # its tombstone was not written yet; it would expire now
            kept += 1
            self.readings[rid] = entry
            self._slot(retain).retained.append(rid)
            if not counted:
                continue
            t = change[C_TIME]
            p = t - t % self.pane_us
            if not self._alive(p):
                continue
            slot = self._slot(p)
            member = (change, applied)
            for panes, scope, key in ((slot.devices, SCOPE_DEVICE, change[C_DEVICE]),
                                      (slot.sites, SCOPE_SITE, change[C_SITE])):
                pane = panes.get(key)
                if pane is None:
                    pane = panes[key] = Pane(scope, key, change[C_SITE], p)
                pane.members[rid] = member
                pane.n += 1
                _fold(pane.stats, change)
                if applied >= p + self.pane_us:
                    self._count_late(pane, applied, 1)
        return kept

    # --- introspection ------------------------------------------------------------------

    def open_panes(self) -> int:
        return sum(len(slot.devices) + len(slot.sites) for slot in self.slots.values())
