"""Integration-test helpers: a scenario of change events, the real binary, outputs read back, brute force.

The scenario is built so that an independent brute-force computation can say exactly what the
aggregates must be: every site gets a reading per device at every tick, so each partition's
stream time is the largest tick time produced so far, whatever site lands in which partition.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import socket
import subprocess
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from datapipelines import kafka, records, topics
from jobs.iot.aggregator import testdata

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SECOND = 1_000_000
MINUTE = 60 * SECOND
TUMBLING, HOPPING = 1, 2
WINDOWS = ((TUMBLING, MINUTE, MINUTE), (HOPPING, 5 * MINUTE, MINUTE))
DEVICE, SITE = 1, 2


@dataclasses.dataclass
class Scenario:
    """Input records and what the aggregator must make of them."""

    grace_us: int
    records: list = dataclasses.field(default_factory=list)  # (key, value) in produce order
    rows: dict = dataclasses.field(default_factory=dict)  # reading id -> counted row (device, site, t, metrics)
    late_within_grace: dict = dataclasses.field(default_factory=dict)  # reading id -> stream time on arrival
    late_ids: set = dataclasses.field(default_factory=set)  # reading ids sent to the late topic
    future_ids: set = dataclasses.field(default_factory=set)
    dead_letter_reasons: list = dataclasses.field(default_factory=list)
    stream_time: int = 0
    lsn: int = 10_000

    def next_lsn(self) -> int:
        self.lsn += 7
        return self.lsn

    def emit(self, op, rid, device, site, t, metrics, before=None, capture_ms=None):
        row = testdata.row(rid, device, site, t, *metrics)
        value = testdata.envelope(op, self.next_lsn(), after=None if op == "d" else row,
                                  before=before if op != "d" else row, capture_ms=capture_ms)
        self.records.append((testdata.key(site), testdata.encode(value)))
        return value


def build_scenario(sites=6, devices_per_site=4, ticks=150, tick_us=5 * SECOND, grace_us=30 * SECOND, seed=1):
    """In-order ticks with updates, deletes, replays, late, within-grace, future and malformed records.

    Ticks start on multiples of `tick_us` (a divisor of a minute) and readings of a tick fall in
    its first half, so no tick straddles a window boundary.
    """
    import random

    from jobs.iot.aggregator import envelope

    rng = random.Random(seed)
    s = Scenario(grace_us=grace_us)
    rid = 0
    replayable = []  # indexes of valid change records
    for tick in range(ticks):
        t = T0 + tick * tick_us
        this_tick = []
        for site_index in range(sites):
            site = f"site-{site_index:02d}"
            for d in range(devices_per_site):
                rid += 1
                device = f"dev-{site_index:02d}-{d}"
                metrics = (round(rng.uniform(-5, 35), 3), None if d == 3 else round(rng.uniform(20, 80), 2),
                           round(rng.uniform(990, 1030), 1), None if rid % 11 == 0 else round(rng.uniform(5, 100), 1))
                value = s.emit("c", rid, device, site, t + rng.randrange(tick_us // 2), metrics)
                replayable.append(len(s.records) - 1)
                reading_time = envelope.parse_time_us(value["after"]["reading_time"])
                s.rows[rid] = (device, site, reading_time, metrics)
                s.stream_time = max(s.stream_time, reading_time)
                this_tick.append((rid, value))
        # Updates and deletes of this tick's readings: all their windows are open. An update
        # keeps the reading in its minute, so no window it joins has ended yet.
        if tick % 3 == 1:
            target, old = rng.choice(this_tick)
            device, site, t_old, _ = s.rows[target]
            new_t = t_old - SECOND if (t_old - SECOND) // MINUTE == t_old // MINUTE else t_old
            metrics = (round(rng.uniform(-5, 35), 3), 50.0, 1000.0, 50.0)
            s.emit("u", target, device, site, new_t, metrics, before=old["after"])
            replayable.append(len(s.records) - 1)
            s.rows[target] = (device, site, new_t, metrics)
        if tick % 7 == 2:
            target, _ = rng.choice(this_tick)
            if target in s.rows:
                device, site, t_old, metrics = s.rows.pop(target)
                s.emit("d", target, device, site, t_old, metrics)
                replayable.append(len(s.records) - 1)
        if tick % 5 == 3:  # at-least-once replay of an earlier change (same LSN): not counted twice
            s.records.append(s.records[rng.choice(replayable[-200:])])
        if tick % 20 == 10 and tick > 40:
            # Very late: every window of it closed long ago.
            rid += 1
            s.emit("c", rid, "dev-00-0", "site-00", s.stream_time - 20 * MINUTE, (1.0, None, None, None))
            s.late_ids.add(rid)
        if tick % 24 == 13:
            # Within grace: its minute ended before the current stream time, less than the grace
            # period ago; counted, and counted as late in the windows that ended.
            boundary = s.stream_time - s.stream_time % MINUTE
            if boundary < s.stream_time < boundary + grace_us - SECOND:
                rid += 1
                late_t = boundary - SECOND
                s.emit("c", rid, "dev-01-1", "site-01", late_t, (2.0, 3.0, 4.0, 5.0))
                s.rows[rid] = ("dev-01-1", "site-01", late_t, (2.0, 3.0, 4.0, 5.0))
                s.late_within_grace[rid] = s.stream_time
        if tick == 60:
            rid += 1
            s.emit("c", rid, "dev-02-0", "site-02", s.stream_time + 3 * 3600 * SECOND, (9.0, None, None, None),
                   capture_ms=s.stream_time // 1000)
            s.future_ids.add(rid)
        if tick == 30:
            for raw, reason in ((b"\x00\x01 not json", "undecodable-payload"), (b"[1,2,3]", "invalid-envelope"),
                                (_without(testdata.envelope("c", 1, after=testdata.row(0, "d", "site-03", T0)),
                                          "reading_id"), "missing-field"),
                                (_with(testdata.envelope("c", 1, after=testdata.row(0, "d", "site-03", T0)),
                                       temperature_celsius="warm"), "invalid-field")):
                s.records.append((testdata.key("site-03"), raw))
                s.dead_letter_reasons.append(reason)
            s.records.append((testdata.key("site-03"), None))  # a tombstone: skipped
    # A last tick far ahead closes every window before it.
    final_t = s.stream_time + 10 * MINUTE
    for site_index in range(sites):
        rid += 1
        site = f"site-{site_index:02d}"
        s.emit("c", rid, f"dev-{site_index:02d}-0", site, final_t, (0.0, None, None, None))
        s.rows[rid] = (f"dev-{site_index:02d}-0", site, final_t, (0.0, None, None, None))
    s.stream_time = final_t
    return s


def _without(value: dict, field: str) -> bytes:
    value["after"].pop(field)
    return testdata.encode(value)


def _with(value: dict, **fields) -> bytes:
    value["after"].update(fields)
    return testdata.encode(value)


def expected_aggregates(s: Scenario) -> dict:
    """Brute force: for every window, the counted rows in it (device and site), final values."""
    buckets = collections.defaultdict(list)
    for rid, (device, site, t, metrics) in s.rows.items():
        for kind, size, advance in WINDOWS:
            start = t - t % advance
            while start > t - size:
                for scope, key in ((DEVICE, device), (SITE, site)):
                    buckets[(scope, key, kind, start)].append((rid, metrics))
                start -= advance
    out = {}
    for (scope, key, kind, start), members in buckets.items():
        size = MINUTE if kind == TUMBLING else 5 * MINUTE
        end = start + size
        metrics = []
        for m in range(4):
            values = [values_[m] for _, values_ in members if values_[m] is not None]
            metrics.append((len(values), min(values), max(values), sum(values)) if values else (0, 0.0, 0.0, 0.0))
        late = sum(1 for rid, _ in members if rid in s.late_within_grace and s.late_within_grace[rid] >= end)
        out[(scope, key, kind, start)] = {
            "count": len(members), "metrics": metrics, "late": late,
            "closed": end + s.grace_us <= s.stream_time,
        }
    return out


# --- Kafka ------------------------------------------------------------------------------------

def produce(bootstrap: str, items) -> None:
    producer = Producer(kafka.producer_config(bootstrap, partitioner="murmur2_random"))
    failures = []
    for key, value in items:
        while True:
            try:
                producer.produce(topics.IOT_CDC_READINGS.name, key=key, value=value,
                                 on_delivery=lambda err, _m: err and failures.append(err))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0 and not failures, failures


def input_end(bootstrap: str) -> dict:
    consumer = Consumer(kafka.consumer_config(bootstrap, "harness-ends"))
    try:
        ends = {}
        for p in range(topics.IOT_CDC_READINGS.partitions):
            ends[p] = consumer.get_watermark_offsets(TopicPartition(topics.IOT_CDC_READINGS.name, p), timeout=10)[1]
        return ends
    finally:
        consumer.close()


def committed(bootstrap: str, group: str) -> dict:
    consumer = Consumer(kafka.consumer_config(bootstrap, group))
    try:
        for attempt in range(50):
            try:
                tps = consumer.committed([TopicPartition(topics.IOT_CDC_READINGS.name, p)
                                          for p in range(topics.IOT_CDC_READINGS.partitions)], timeout=10)
                return {tp.partition: max(tp.offset, 0) for tp in tps}
            except KafkaException as error:  # coordinator loading or busy (a member was just killed)
                if not error.args[0].retriable() and error.args[0].code() not in (
                        KafkaError.NOT_COORDINATOR, KafkaError._TIMED_OUT, KafkaError.COORDINATOR_LOAD_IN_PROGRESS):
                    raise
                time.sleep(0.2)
        raise AssertionError(f"no committed offsets for {group}")
    finally:
        consumer.close()


def wait_until_consumed(bootstrap: str, group: str, process=None, timeout: float = 240.0) -> None:
    ends = input_end(bootstrap)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"aggregator exited with {process.returncode}")
        done = committed(bootstrap, group)
        if all(done.get(p, 0) >= end for p, end in ends.items()):
            return
        time.sleep(0.3)
    raise AssertionError(f"aggregator did not consume to {ends} in {timeout:.0f} s: committed {done}")


def read_all(bootstrap: str, topic: topics.Topic, group: str, quiet: float = 3.0):
    """Every committed record of `topic` (read_committed), until nothing new arrives for `quiet` s."""
    consumer = Consumer(kafka.consumer_config(bootstrap, group))
    consumer.assign([TopicPartition(topic.name, p, 0) for p in range(topic.partitions)])
    out = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < quiet:
            batch = consumer.consume(num_messages=5000, timeout=0.5)
            for message in batch:
                assert message.error() is None, message.error()
                out.append(message)
            if batch:
                last = time.monotonic()
    finally:
        consumer.close()
    return out


def latest_aggregates(messages) -> tuple[dict, int]:
    """Latest version per window, and how many (window, version) pairs were written more than once."""
    latest, seen, repeated = {}, set(), 0
    for message in messages:
        a = records.decode(topics.IOT_AGGREGATES, message.value(), message.headers())
        window = (a.scope, a.key_id, a.window_kind, a.window_start_time.seconds * SECOND)
        if (window, a.version) in seen:
            repeated += 1
        seen.add((window, a.version))
        if window not in latest or latest[window].version < a.version:
            latest[window] = a
    return latest, repeated


def compare(latest: dict, expected: dict) -> list[str]:
    """Differences between the aggregator's latest aggregates and the brute force (empty when equal)."""
    problems = []
    nonempty = {w: a for w, a in latest.items() if a.reading_count > 0}
    for window in sorted(set(expected) - set(nonempty)):
        problems.append(f"missing window {window}: expected {expected[window]}")
    for window in sorted(set(nonempty) - set(expected)):
        problems.append(f"unexpected window {window}: count {nonempty[window].reading_count}")
    for window in sorted(set(expected) & set(nonempty)):
        a, e = nonempty[window], expected[window]
        got_metrics = [a.temperature_celsius, a.humidity_percent, a.pressure_hpa, a.battery_percent]
        if a.reading_count != e["count"] or a.late_reading_count != e["late"] or a.window_closed != e["closed"]:
            problems.append(f"window {window}: count/late/closed {a.reading_count}/{a.late_reading_count}/"
                            f"{a.window_closed}, expected {e['count']}/{e['late']}/{e['closed']}")
        for got, (count, low, high, total) in zip(got_metrics, e["metrics"]):
            if (got.count, got.min, got.max) != (count, low, high) or abs(got.sum - total) > 1e-6 * max(1, abs(total)):
                problems.append(f"window {window}: metric {got} expected {(count, low, high, total)}")
            elif count and abs(got.mean - total / count) > 1e-9 * max(1, abs(total)):
                problems.append(f"window {window}: mean {got.mean} expected {total / count}")
    return problems


# --- the binary -------------------------------------------------------------------------------

def binary() -> str:
    root = os.environ["TEST_SRCDIR"]
    workspace = os.environ.get("TEST_WORKSPACE", "data_pipelines")
    return os.path.join(root, workspace, "jobs", "iot", "aggregator", "aggregator")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Aggregator:
    """The real `aggregator` binary in a subprocess."""

    def __init__(self, bootstrap: str, group: str, log_path, *args: str):
        self.port = free_port()
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [binary(), "--bootstrap", bootstrap, "--group-id", group, "--http-port", str(self.port),
             "--grace-seconds", "30", "--session-timeout-ms", "6000", *args],
            stdout=self.log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.log.close()

    def stop(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.log.close()

    def http(self, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)
