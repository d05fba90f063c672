"""IoT CDC pipeline on real components: change rate per stage and end to end, commit -> query latency.

    bazel run //tests/bench:iot_cdc -- --help

The whole pipeline (PostgreSQL, Kafka, Kafka Connect + Debezium, the aggregator, the analytics
service on chdb) runs as child processes through deploy/pipelines/iot.py. Changes are inserts of
readings made by the simulator's Fleet (one reading per device and second of event time by
default) and written with its ReadingsWriter (COPY, one transaction per --txn-rows readings).

1. Stages alone (--isolated-changes readings). The connector is paused and the aggregator and
   the analytics service are stopped; the readings are COPYed into PostgreSQL (insert rate);
   the connector is resumed and streams the WAL into iot.cdc.readings with nothing downstream
   (Debezium -> topic rate); the aggregator is started on the complete topic (aggregator rate,
   readings per CPU second of its process); the analytics service is started on all the
   aggregates (sink rate). A stage's clock starts when its input is complete and its process
   is ready; start-up and state restore are shown apart.
2. All stages together (--changes readings), the way the pipeline runs: COPY while every stage
   works. Stage completion times count from the first commit: topic end offsets (read_committed)
   cover every change, the aggregator's committed input count (its /metrics) reaches them, the
   sink's stored rows (its /metrics) reach the aggregates emitted, and the analytics API serves
   the final count of every site's last window. End to end = changes / that time.
3. Latency (--latency-probes): while a background load of --background-rate changes/s runs,
   probes spaced --probe-interval-ms apart each commit one reading for a dedicated probe site
   and device (so its minute window is fresh); one query of /api/v1/iot/sites/latest every
   --poll-ms finds the probes served with reading_count 1. Latency = commit returned ->
   response that shows it. Open windows are emitted on the aggregator's commit interval and
   stored on the sink's batch interval; both are printed next to the figures.

CPU seconds are per process tree (children included), read with psutil. Nothing is asserted:
figures are printed, with "target met/missed" against the issue's targets.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import json
import os
import pathlib
import shutil
import statistics
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from typing import Callable, Optional

import psutil
from confluent_kafka import Consumer, TopicPartition

from datapipelines import kafka, topics
from datapipelines.iot.v1 import reading_aggregate_pb2
from deploy.connect import connectors, register
from deploy.connect.worker import http_json
from deploy.pipelines.iot import IotPipeline, IotPipelineConfig
from deploy.stack.footprint import cpu_seconds
from services.iot_simulator.config import SimulatorConfig
from services.iot_simulator.model import Fleet, Insert
from services.iot_simulator.writer import ReadingsWriter

TARGET_CHANGES_PER_S = 20_000
TARGET_P95_S = 2.0
TARGET_AGGREGATOR_PER_CPU_S = 100_000
TARGET_SINK_ROWS_PER_S = 500_000

PROBE_READING_ID_BASE = 10**12  # far above any id the fleet hands out
PROBE_SITE_PREFIX = "probe-site-"


def probe_site(k: int) -> str:
    return f"{PROBE_SITE_PREFIX}{k + 1:03d}"


def probe_device(k: int) -> str:
    return f"probe-dev-{k + 1:03d}"

WATCHED = (topics.IOT_CDC_READINGS, topics.IOT_AGGREGATES)
COMPONENTS = ("postgres", "connect", "kafka", "aggregator", "analytics", "bench")


# --- measuring ------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds of every component; `snapshot()` now, `since(earlier)` the difference."""

    def __init__(self, pipeline: IotPipeline):
        self.pipeline = pipeline

    def snapshot(self) -> dict[str, float]:
        p = self.pipeline
        own = psutil.Process().cpu_times()  # this process only: its children are the pipeline
        return {
            "postgres": cpu_seconds(p.postgres.pid),
            "connect": cpu_seconds(p.connect.pid),
            "kafka": cpu_seconds(p.broker.pid),
            "aggregator": cpu_seconds(p.aggregator.pid if p.aggregator else None),
            "analytics": cpu_seconds(p.analytics.pid if p.analytics else None),
            "bench": own.user + own.system,
        }

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: max(0.0, after[name] - before[name]) for name in COMPONENTS}


class OffsetSampler:
    """Samples the read_committed end offsets of the CDC and aggregates topics every `interval` s."""

    def __init__(self, bootstrap: str, interval: float):
        self.interval = interval
        self.consumer = Consumer(kafka.consumer_config(bootstrap, f"bench-iot-cdc-watch-{os.getpid()}"))
        self.partitions = {t.name: t.partitions for t in WATCHED}
        self.samples: list[tuple[float, dict[str, tuple[int, ...]]]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="offset-sampler", daemon=True)

    def ends(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(self.consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
                            for p in range(count))
                for name, count in self.partitions.items()}

    def _run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            ends = self.ends()
            with self.lock:
                self.samples.append((time.monotonic(), ends))
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def start(self) -> "OffsetSampler":
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()

    def latest(self) -> tuple[float, dict[str, tuple[int, ...]]]:
        while True:
            with self.lock:
                if self.samples:
                    return self.samples[-1]
            time.sleep(self.interval)

    def first_time(self, topic: str, since: float, reached: Callable[[tuple[int, ...]], bool]) -> float:
        """Time of the first sample at or after `since` whose end offsets of `topic` satisfy `reached`
        (the latest sample's time if none does yet)."""
        with self.lock:
            samples = list(self.samples)
        for t, ends in samples:
            if t >= since and reached(ends[topic]):
                return t
        return samples[-1][0]


def covers(final: tuple[int, ...]) -> Callable[[tuple[int, ...]], bool]:
    return lambda ends: all(e >= f for e, f in zip(ends, final))


def beyond(base: tuple[int, ...]) -> Callable[[tuple[int, ...]], bool]:
    return lambda ends: any(e > b for e, b in zip(ends, base))


def scrape(service, names: tuple[str, ...]) -> dict[str, float]:
    """Sums of Prometheus samples (all label sets) of `names` from the service's /metrics."""
    url = urllib.parse.urljoin(service.health_url, "/metrics")
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


AGGREGATOR_METRICS = ("dp_iot_aggregator_records_in_total", "dp_iot_aggregator_aggregates_out_total")
SINK_METRICS = ("analytics_rows_inserted_total", "analytics_dead_letters_total")


def aggregator_counts(pipeline: IotPipeline) -> tuple[int, int]:
    """(input records committed, aggregates emitted) since the aggregator process started."""
    m = scrape(pipeline.aggregator, AGGREGATOR_METRICS)
    return int(m[AGGREGATOR_METRICS[0]]), int(m[AGGREGATOR_METRICS[1]])


def sink_stored(pipeline: IotPipeline) -> int:
    """Aggregates stored (or dead-lettered) since the analytics service process started."""
    return int(sum(scrape(pipeline.analytics, SINK_METRICS).values()))


def wait_for(what: str, done: Callable[[], bool], timeout: float, logs: pathlib.Path, poll: float = 0.05) -> float:
    """Polls `done` until true; returns the time it became true. Raises naming the logs to read."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return time.monotonic()
        time.sleep(poll)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; the components' logs are in {logs} "
                     f"(rerun with --keep to look at them, or raise --timeout)")


# --- the source --------------------------------------------------------------------------------


@dataclasses.dataclass
class Source:
    """The fleet, what it has written, and the expected count of every (site, minute) window."""

    fleet: Fleet
    writer: ReadingsWriter
    event_time: dt.datetime
    per_site_minute: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    written: int = 0

    def generate(self, count: int) -> list[Insert]:
        """`count` inserts, tick after tick of event time, continuing the event clock."""
        inserts: list[Insert] = []
        step = dt.timedelta(seconds=1 / self.fleet.config.ticks_per_second)
        while len(inserts) < count:
            changes, _ = self.fleet.tick(self.event_time)
            inserts.extend(changes[:count - len(inserts)])
            self.event_time += step
        for c in inserts:
            self.per_site_minute[(c.site_id, minute_of(c.reading_time))] += 1
        return inserts

    def write(self, inserts: list[Insert], txn_rows: int) -> tuple[float, float, float]:
        """COPY in transactions of `txn_rows`; returns (first start, first commit, last commit)."""
        first_start = time.monotonic()
        first_commit = None
        for start in range(0, len(inserts), txn_rows):
            self.writer.apply(inserts[start:start + txn_rows])
            self.written += len(inserts[start:start + txn_rows])
            first_commit = first_commit or time.monotonic()
        return first_start, first_commit, time.monotonic()

    def latest_windows(self) -> dict[str, tuple[int, int]]:
        """site -> (start of its last minute, readings in it)."""
        last: dict[str, int] = {}
        for site, minute in self.per_site_minute:
            last[site] = max(minute, last.get(site, minute))
        return {site: (minute, self.per_site_minute[(site, minute)]) for site, minute in last.items()}


def minute_of(when: dt.datetime) -> int:
    seconds = int(when.timestamp())
    return seconds - seconds % 60


def sites_latest(pipeline: IotPipeline) -> dict[str, tuple[int, int]]:
    body = pipeline.query("/api/v1/iot/sites/latest", window_kind="tumbling", closed_only="false", limit=1000)
    out = {}
    for row in body["rows"]:
        start = dt.datetime.fromisoformat(row["window_start"].replace("Z", "+00:00"))
        out[row["site_id"]] = (int(start.timestamp()), row["reading_count"])
    return out


def serves_final_state(pipeline: IotPipeline, source: Source) -> bool:
    served = sites_latest(pipeline)
    return all(served.get(site) == want for site, want in source.latest_windows().items())


def served_reading_total(pipeline: IotPipeline, source: Source, start: dt.datetime, end: dt.datetime) -> int:
    """Sum of reading_count over every site's tumbling windows in [start, end): the untimed full check."""
    total = 0
    for site in sorted({s for s, _ in source.per_site_minute}):
        body = pipeline.query("/api/v1/iot/aggregates", scope="site", key_id=site, window_kind="tumbling",
                              **{"from": start.isoformat(), "to": end.isoformat(), "limit": 10000})
        total += sum(row["reading_count"] for row in body["rows"])
    return total


# --- the phases -------------------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    name: str
    items: int
    unit: str
    seconds: float
    cpu: dict[str, float]
    own: str  # the component whose CPU the stage is

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("inf")

    @property
    def per_cpu_second(self) -> float:
        cpu = self.cpu.get(self.own, 0.0)
        return self.items / cpu if cpu > 0 else float("inf")


def connector_state(pipeline: IotPipeline, action: str, wanted: str, timeout: float) -> None:
    name = connectors.IOT_READINGS_CDC
    url = f"{pipeline.connect.rest_url.rstrip('/')}/connectors/{urllib.parse.quote(name)}/{action}"
    code, body = http_json("PUT", url, {})
    if code not in (200, 202, 204):
        raise SystemExit(f"PUT {url} answered {code}: {body}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = register.status(pipeline.connect.rest_url, name)
        if status and status.connector_state == wanted and all(s == wanted for s in status.task_states):
            return
        time.sleep(0.1)
    raise SystemExit(f"connector {name} not {wanted} after {timeout:.0f} s (logs in {pipeline.logs_dir})")


def stages_alone(pipeline: IotPipeline, source: Source, sampler: OffsetSampler, cpu: CpuMeter,
                 args) -> tuple[list[Stage], dict[str, float]]:
    n = args.isolated_changes
    timeout = args.timeout
    connector_state(pipeline, "pause", "PAUSED", timeout)
    pipeline.aggregator.terminate()
    pipeline.analytics.terminate()
    inserts = source.generate(n)
    _, cdc_base = sampler.latest()
    cdc_base = cdc_base[topics.IOT_CDC_READINGS.name]
    stages = []

    before = cpu.snapshot()
    started, _, finished = source.write(inserts, args.txn_rows)
    stages.append(Stage("PostgreSQL COPY + commit", n, "changes", finished - started,
                        CpuMeter.since(before, cpu.snapshot()), "postgres"))

    # Debezium alone: resume, then wait until the end offsets hold every change and stay put
    # (transaction markers take offsets too, so "stable at >= base + n" is the live signal; the
    # exact time is taken afterwards, once the aggregator has read exactly n records).
    before = cpu.snapshot()
    resumed = time.monotonic()
    connector_state(pipeline, "resume", "RUNNING", timeout)
    settled: dict = {"ends": None, "since": 0.0}

    def debezium_settled() -> bool:
        t, ends = sampler.latest()
        ends = ends[topics.IOT_CDC_READINGS.name]
        if sum(ends) - sum(cdc_base) < n:
            return False
        if ends != settled["ends"]:
            settled.update(ends=ends, since=t)
        return t - settled["since"] >= 1.0

    wait_for("Debezium to write every change into the CDC topic", debezium_settled, timeout, pipeline.logs_dir)
    debezium_cpu = CpuMeter.since(before, cpu.snapshot())
    cdc_final = settled["ends"]

    aggregator_start_s = pipeline.start_aggregator().start_seconds
    ready, before = time.monotonic(), cpu.snapshot()
    done = wait_for("the aggregator to commit every change", lambda: aggregator_counts(pipeline)[0] >= n,
                    timeout, pipeline.logs_dir)
    aggregator_cpu = CpuMeter.since(before, cpu.snapshot())
    emitted = aggregator_counts(pipeline)[1]
    cdc = topics.IOT_CDC_READINGS.name
    debezium_first = sampler.first_time(cdc, resumed, beyond(cdc_base))
    debezium_done = sampler.first_time(cdc, resumed, covers(sampler.ends()[cdc]))
    if sampler.ends()[cdc] != cdc_final:
        print("note: the CDC topic grew after it looked complete; the Debezium time is taken from the final offsets")
    stages.append(Stage("Debezium -> iot.cdc.readings", n, "changes", debezium_done - debezium_first, debezium_cpu,
                        "connect"))
    stages.append(Stage("aggregator (exactly once)", n, "readings", done - ready, aggregator_cpu, "aggregator"))

    analytics_start_s = pipeline.start_analytics().start_seconds
    ready, before = time.monotonic(), cpu.snapshot()
    done = wait_for("the analytics service to store every aggregate", lambda: sink_stored(pipeline) >= emitted,
                    timeout, pipeline.logs_dir)
    stages.append(Stage("analytics sink (chdb)", emitted, "rows", done - ready,
                        CpuMeter.since(before, cpu.snapshot()), "analytics"))
    wait_for("the analytics service to serve every site's last window",
             lambda: serves_final_state(pipeline, source), timeout, pipeline.logs_dir, poll=0.1)
    return stages, {"connector resume -> first change in the topic": debezium_first - resumed,
                    "aggregator start + restore": aggregator_start_s, "analytics start": analytics_start_s}


@dataclasses.dataclass
class Together:
    stages: list[tuple[Stage, float]]  # stage, done at (s after the first commit)
    end_to_end: Stage
    cpu: dict[str, float]
    aggregates: int


def all_together(pipeline: IotPipeline, source: Source, sampler: OffsetSampler, cpu: CpuMeter, args) -> Together:
    n, timeout = args.changes, args.timeout
    inserts = source.generate(n)
    _, base = sampler.latest()
    records0, emitted0 = aggregator_counts(pipeline)
    stored0 = sink_stored(pipeline)
    cpu0 = cpu.snapshot()

    started, first_commit, finished = source.write(inserts, args.txn_rows)
    cpu_insert = CpuMeter.since(cpu0, cpu.snapshot())

    aggregator_done = wait_for("the aggregator to commit every change",
                               lambda: aggregator_counts(pipeline)[0] - records0 >= n, timeout, pipeline.logs_dir)
    cpu_aggregator = CpuMeter.since(cpu0, cpu.snapshot())
    emitted = aggregator_counts(pipeline)[1] - emitted0
    sink_done = wait_for("the analytics service to store every aggregate",
                         lambda: sink_stored(pipeline) - stored0 >= emitted, timeout, pipeline.logs_dir)
    cpu_sink = CpuMeter.since(cpu0, cpu.snapshot())
    served = wait_for("the analytics service to serve every site's last window",
                      lambda: serves_final_state(pipeline, source), timeout, pipeline.logs_dir, poll=0.02)
    cpu_all = CpuMeter.since(cpu0, cpu.snapshot())

    cdc, aggregates = topics.IOT_CDC_READINGS.name, topics.IOT_AGGREGATES.name
    final = sampler.ends()
    debezium_done = sampler.first_time(cdc, first_commit, covers(final[cdc]))
    aggregator_start = sampler.first_time(cdc, started, beyond(base[cdc]))
    sink_start = sampler.first_time(aggregates, started, beyond(base[aggregates]))

    def stage(name, items, unit, start, done, cpu_seconds, own):
        return Stage(name, items, unit, done - start, cpu_seconds, own), done - first_commit

    return Together(
        stages=[
            stage("PostgreSQL COPY + commit", n, "changes", started, finished, cpu_insert, "postgres"),
            stage("Debezium -> iot.cdc.readings", n, "changes", first_commit, debezium_done, cpu_aggregator,
                  "connect"),
            stage("aggregator (exactly once)", n, "readings", aggregator_start, aggregator_done, cpu_aggregator,
                  "aggregator"),
            stage("analytics sink (chdb)", emitted, "rows", sink_start, sink_done, cpu_sink, "analytics"),
        ],
        end_to_end=Stage("end to end (first commit -> served)", n, "changes", served - first_commit, cpu_all,
                         "aggregator"),
        cpu=cpu_all,
        aggregates=emitted,
    )


@dataclasses.dataclass
class Latency:
    seconds: list[float]  # commit -> served by the analytics API
    hops: dict[str, list[float]]  # commit -> first seen in that topic
    lost: int
    background_written: int
    background_seconds: float


class TopicWatch:
    """First time each probe site shows up in the CDC topic and in the aggregates topic (read_committed)."""

    def __init__(self, bootstrap: str):
        self.consumer = Consumer(kafka.consumer_config(bootstrap, f"bench-iot-cdc-probes-{os.getpid()}"))
        parts = []
        for topic in WATCHED:
            for p in range(topic.partitions):
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic.name, p), timeout=10)
                parts.append(TopicPartition(topic.name, p, high))
        self.consumer.assign(parts)
        self.seen: dict[str, dict[str, float]] = {t.name: {} for t in WATCHED}

    def run(self, stop: threading.Event) -> None:
        cdc = topics.IOT_CDC_READINGS.name
        # The aggregates topic's key of a site window, derived from the registry, not spelled here.
        site_key = topics.IOT_AGGREGATES.key_of(reading_aggregate_pb2.ReadingAggregate(
            scope=reading_aggregate_pb2.AGGREGATE_SCOPE_SITE, key_id="")).decode()
        while not stop.is_set():
            for message in self.consumer.consume(num_messages=1000, timeout=0.01):
                key = message.key()
                if message.error() is not None or not key or PROBE_SITE_PREFIX.encode() not in key:
                    continue
                now = time.monotonic()
                topic = message.topic()
                if topic == cdc:
                    site = json.loads(key)["site_id"]
                elif key.decode().startswith(site_key):
                    site = key.decode()[len(site_key):]
                else:
                    continue
                self.seen[topic].setdefault(site, now)
        self.consumer.close()


def latency(pipeline: IotPipeline, source: Source, args) -> Latency:
    probes = args.latency_probes
    probe_sites = [probe_site(k) for k in range(probes)]
    committed: dict[str, float] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    clock_origin, event_origin = time.monotonic(), source.event_time

    def event_now() -> dt.datetime:
        return event_origin + dt.timedelta(seconds=time.monotonic() - clock_origin)

    background = {"written": 0, "seconds": 0.0}

    def load() -> None:
        if args.background_rate <= 0:
            return
        fleet = Fleet(dataclasses.replace(source.fleet.config, rate=args.background_rate))
        fleet.next_reading_id = source.fleet.next_reading_id
        writer = ReadingsWriter(pipeline.app_dsn)
        period = 1 / fleet.config.ticks_per_second
        began = next_tick = time.monotonic()
        try:
            while not stop.is_set():
                changes, _ = fleet.tick(event_now())
                writer.apply(changes)
                background["written"] += len(changes)
                next_tick += period
                stop.wait(max(0.0, next_tick - time.monotonic()))
        finally:
            background["seconds"] = time.monotonic() - began
            writer.close()

    poll_errors = []

    def poll() -> None:
        while not stop.is_set():
            began = time.monotonic()
            try:
                served = sites_latest(pipeline)
            except (OSError, ValueError) as error:  # a slow or failed answer: count it, ask again
                poll_errors.append(error)
                stop.wait(args.poll_ms / 1000)
                continue
            answered = time.monotonic()
            with lock:
                for site, t in committed.items():
                    if site not in seen and served.get(site, (0, 0))[1] >= 1:
                        seen[site] = answered
            stop.wait(max(0.0, args.poll_ms / 1000 - (time.monotonic() - began)))

    watch = TopicWatch(pipeline.bootstrap)
    threads = [threading.Thread(target=load, name="background-load", daemon=True),
               threading.Thread(target=poll, name="latency-poller", daemon=True),
               threading.Thread(target=watch.run, args=(stop,), name="topic-watch", daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the load is flowing before the first probe
    conn = source.writer.conn
    try:
        for k, site in enumerate(probe_sites):
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO readings (reading_id, device_id, site_id, reading_time, temperature_celsius,"
                    " humidity_percent, pressure_hpa, battery_percent, firmware_version)"
                    " VALUES (%s, %s, %s, %s, 21.5, 45.0, 1013.0, 90.0, '1.0.0')",
                    (PROBE_READING_ID_BASE + k, probe_device(k), site, event_now()))
            conn.commit()
            with lock:
                committed[site] = time.monotonic()
            time.sleep(args.probe_interval_ms / 1000)
        deadline = time.monotonic() + args.probe_timeout
        while time.monotonic() < deadline:
            with lock:
                if len(seen) == probes:
                    break
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    with lock:
        seconds = [seen[s] - committed[s] for s in probe_sites if s in seen]
        hops = {topic: [first[s] - committed[s] for s in probe_sites if s in first and s in committed]
                for topic, first in watch.seen.items()}
    if poll_errors:
        print(f"note: {len(poll_errors)} polls of the analytics API failed, e.g. {poll_errors[0]!r}")
    return Latency(seconds, hops, probes - len(seconds), background["written"], background["seconds"])


def register_probes(source: Source, probes: int) -> None:
    with source.writer.conn.cursor() as cur:
        for k in range(probes):
            cur.execute("INSERT INTO sites (site_id, display_name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (probe_site(k), f"Latency probe {k + 1}"))
            cur.execute("INSERT INTO devices (device_id, site_id, model, firmware_version) "
                        "VALUES (%s, %s, 'probe', '1.0.0') ON CONFLICT DO NOTHING",
                        (probe_device(k), probe_site(k)))
    source.writer.conn.commit()


# --- printing ----------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "target met" if met else "target MISSED"


def cpu_columns(cpu: dict[str, float]) -> str:
    return " ".join(f"{cpu[name]:>10.1f}" for name in COMPONENTS)


CPU_HEADER = " ".join(f"{name:>10}" for name in COMPONENTS)


def print_alone(stages: list[Stage], starts: dict[str, float]) -> None:
    fastest = max(s.rate for s in stages)
    print("\n1. stages alone (each with its whole input ready; CPU seconds of each component during the stage)")
    print(f"  {'stage':<30} {'items':>9} {'seconds':>8} {'rate/s':>10} {'vs fastest':>10} {'per own CPU s':>13}   "
          f"{CPU_HEADER}")
    for s in stages:
        print(f"  {s.name:<30} {s.items:>9,} {s.seconds:>8.2f} {s.rate:>10,.0f} {s.rate / fastest:>10.3f} "
              f"{s.per_cpu_second:>13,.0f}   {cpu_columns(s.cpu)}")
    print("  not in the times above: " + ", ".join(f"{k} {v:.1f} s" for k, v in starts.items()))
    slowest = min(stages, key=lambda s: s.rate)
    print(f"  slowest stage alone: {slowest.name} ({slowest.rate:,.0f} {slowest.unit}/s)")


def print_together(together: Together) -> None:
    stages = [s for s, _ in together.stages]
    fastest = max(s.rate for s in stages)
    print("\n2. all stages together (busy = from the stage's first input to its last item; "
          "done = after the first commit)")
    print(f"  {'stage':<36} {'items':>9} {'busy s':>7} {'done s':>7} {'rate/s':>10} {'vs fastest':>10} "
          f"{'per own CPU s':>13}")
    for s, done in together.stages:
        print(f"  {s.name:<36} {s.items:>9,} {s.seconds:>7.2f} {done:>7.2f} {s.rate:>10,.0f} "
              f"{s.rate / fastest:>10.3f} {s.per_cpu_second:>13,.0f}")
    e = together.end_to_end
    print(f"  {e.name:<36} {e.items:>9,} {e.seconds:>7.2f} {e.seconds:>7.2f} {e.rate:>10,.0f} "
          f"{e.rate / fastest:>10.3f}")
    print(f"  CPU seconds over the whole run: {CPU_HEADER}")
    print(f"  {'':<32}{cpu_columns(together.cpu)}   (total {sum(together.cpu.values()):.1f} s "
          f"in {e.seconds:.1f} s wall = {sum(together.cpu.values()) / e.seconds:.2f} cores busy)")
    print(f"  aggregates emitted per reading: {together.aggregates / e.items:.2f}")
    # The stage that finishes furthest behind the one feeding it holds the pipeline back.
    gaps = []
    previous_done = 0.0
    for s, done in together.stages:
        gaps.append((done - previous_done, s.name))
        previous_done = done
    print("  finishes behind its input: " + ", ".join(f"{name} +{gap:.2f} s" for gap, name in gaps))


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    defaults = IotPipelineConfig(state_dir=pathlib.Path("."))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--changes", type=int, default=200_000,
                   help="readings through the pipeline with all stages running")
    p.add_argument("--isolated-changes", type=int, default=100_000,
                   help="readings for the stages-alone phase (0 skips it)")
    p.add_argument("--devices", type=int, default=1000, help="devices of the fleet")
    p.add_argument("--sites", type=int, default=20, help="sites of the fleet")
    p.add_argument("--event-rate", type=float, default=None,
                   help="readings per second of event time (None: one per device and second)")
    p.add_argument("--txn-rows", type=int, default=5000, help="readings per PostgreSQL transaction (COPY)")
    p.add_argument("--latency-probes", type=int, default=50, help="probe transactions (0 skips the latency phase)")
    p.add_argument("--probe-interval-ms", type=float, default=150, help="time between probes")
    p.add_argument("--poll-ms", type=float, default=20, help="how often the analytics API is asked for the probes")
    p.add_argument("--probe-timeout", type=float, default=60, help="seconds to wait for the last probe")
    p.add_argument("--background-rate", type=float, default=2000,
                   help="changes/s written while the probes run (0: none)")
    p.add_argument("--commit-interval", type=float, default=defaults.aggregator_commit_interval_seconds,
                   help="aggregator --commit-interval-seconds (longest wait for a batch)")
    p.add_argument("--aggregator-batch", type=int, default=defaults.aggregator_batch_size,
                   help="aggregator --batch-size (records per transaction)")
    p.add_argument("--sink-batch-max-ms", type=int, default=defaults.analytics_batch_max_ms,
                   help="analytics --batch-max-ms")
    p.add_argument("--sample-ms", type=float, default=20, help="how often topic end offsets are sampled")
    p.add_argument("--timeout", type=float, default=600, help="longest wait for any one stage, seconds")
    p.add_argument("--state-dir", type=pathlib.Path, default=None,
                   help="new or empty directory for every component's data (None: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the state directory (logs, data) afterwards")
    p.add_argument("--seed", type=int, default=7, help="fleet seed")
    args = p.parse_args(argv)
    problems = []
    if args.changes < 1 or args.isolated_changes < 0 or args.latency_probes < 0:
        problems.append("--changes must be >= 1, --isolated-changes and --latency-probes >= 0")
    if not 1 <= args.sites <= args.devices:
        problems.append(f"need 1 <= --sites <= --devices (got {args.sites} sites, {args.devices} devices)")
    if args.sites + args.latency_probes > 1000:
        problems.append("--sites + --latency-probes must not exceed 1000 (one sites/latest page)")
    if args.state_dir and args.state_dir.exists() and any(args.state_dir.iterdir()):
        problems.append(f"--state-dir {args.state_dir} is not empty: give a new or empty directory")
    if problems:
        p.error("; ".join(problems))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    temporary = args.state_dir is None
    state_dir = pathlib.Path(tempfile.mkdtemp(prefix="iot-cdc-bench-")) if temporary else args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if temporary:
        # mkdtemp makes it private; PostgreSQL's OS user must be able to enter it (else userns).
        state_dir.chmod(0o755)
    config = IotPipelineConfig(state_dir=state_dir,
                               aggregator_batch_size=args.aggregator_batch,
                               aggregator_commit_interval_seconds=args.commit_interval,
                               analytics_batch_max_ms=args.sink_batch_max_ms)
    cores = len(os.sched_getaffinity(0))
    print(f"machine: nproc {cores} (cpu_count {os.cpu_count()}), load average "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f", {psutil.virtual_memory().total / 2**30:.0f} GiB")
    event_rate = args.event_rate or float(args.devices)
    print(f"config: changes {args.changes:,} together + {args.isolated_changes:,} alone, {args.devices} devices, "
          f"{args.sites} sites, {event_rate:,.0f} readings per event-time second, {args.txn_rows} rows per "
          f"PostgreSQL transaction; aggregator batch {config.aggregator_batch_size}, commit interval "
          f"{config.aggregator_commit_interval_seconds} s, grace {config.grace_seconds} s; sink batch max "
          f"{config.analytics_batch_max_ms} ms; exactly-once source {config.exactly_once_source}")
    pipeline = IotPipeline(config, say=lambda line: print("  " + line))
    sampler = None
    try:
        print("starting the pipeline ...")
        pipeline.start()
        print("  started: " + ", ".join(f"{k} {v:.1f} s" for k, v in pipeline.timings.items()))
        sampler = OffsetSampler(pipeline.bootstrap, args.sample_ms / 1000).start()
        cpu = CpuMeter(pipeline)
        fleet_config = SimulatorConfig(dsn=pipeline.app_dsn, sites=args.sites, devices=args.devices, rate=event_rate,
                                       ticks_per_second=10, late_fraction=0, update_fraction=0, delete_fraction=0,
                                       outage_probability=0, seed=args.seed)
        writer = ReadingsWriter(pipeline.app_dsn)
        fleet = Fleet(fleet_config)
        writer.register_fleet(fleet)
        fleet.next_reading_id = writer.next_reading_id()
        # Event time starts two hours back on a minute boundary: windows aligned, nothing "future".
        origin = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0) - dt.timedelta(hours=2)
        source = Source(fleet, writer, origin)
        register_probes(source, args.latency_probes)

        alone = None
        if args.isolated_changes:
            print(f"stages alone: {args.isolated_changes:,} readings ...")
            alone = stages_alone(pipeline, source, sampler, cpu, args)
        print(f"all stages together: {args.changes:,} readings ...")
        together = all_together(pipeline, source, sampler, cpu, args)
        total = served_reading_total(pipeline, source, origin - dt.timedelta(minutes=1),
                                     source.event_time + dt.timedelta(minutes=2))
        check = "equal" if total == source.written else "NOT EQUAL"
        lat = None
        if args.latency_probes:
            print(f"latency: {args.latency_probes} probes every {args.probe_interval_ms:.0f} ms, background "
                  f"{args.background_rate:,.0f} changes/s ...")
            lat = latency(pipeline, source, args)

        print("\n=== IoT CDC pipeline: PostgreSQL -> Debezium -> Kafka -> aggregator -> analytics (chdb) ===")
        print(f"machine: nproc {cores}, load average now " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        print(f"check: the analytics service serves {total:,} readings in the site tumbling windows; "
              f"{source.written:,} were written: {check}")
        if alone:
            print_alone(*alone)
        print_together(together)
        if lat:
            print(f"\n3. latency, commit returned -> analytics API shows the reading ({len(lat.seconds)} probes, "
                  f"{lat.lost} not seen within {args.probe_timeout:.0f} s; background "
                  f"{lat.background_written / max(lat.background_seconds, 1e-9):,.0f} changes/s achieved)")
            print(f"  {'commit returned ->':<40} {'probes':>6} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'min s':>7} "
                  f"{'max s':>7}")
            for label, values in ((f"in {topics.IOT_CDC_READINGS.name} (Debezium)",
                                   lat.hops[topics.IOT_CDC_READINGS.name]),
                                  (f"in {topics.IOT_AGGREGATES.name} (aggregator)",
                                   lat.hops[topics.IOT_AGGREGATES.name]),
                                  ("served by the analytics API (sink)", lat.seconds)):
                if len(values) >= 2:
                    q = statistics.quantiles(values, n=100, method="inclusive")
                    print(f"  {label:<40} {len(values):>6} {q[49]:>7.3f} {q[94]:>7.3f} {q[98]:>7.3f} "
                          f"{min(values):>7.3f} {max(values):>7.3f}")
            print(f"  includes: aggregator commit interval {config.aggregator_commit_interval_seconds} s (open windows "
                  f"are emitted per batch), sink batch max {config.analytics_batch_max_ms} ms, poll every "
                  f"{args.poll_ms:.0f} ms")

        print("\ntargets (issue figures for this 2-core machine)")
        e2e = together.end_to_end.rate
        print(f"  end to end >= {TARGET_CHANGES_PER_S:,} changes/s: {e2e:,.0f}  {verdict(e2e >= TARGET_CHANGES_PER_S)}")
        if lat and len(lat.seconds) >= 2:
            p95 = statistics.quantiles(lat.seconds, n=100, method="inclusive")[94]
            print(f"  latency p95 < {TARGET_P95_S:.0f} s: {p95:.3f} s  {verdict(p95 < TARGET_P95_S and not lat.lost)}")
        stages = {s.name: s for s in (alone[0] if alone else [s for s, _ in together.stages])}
        aggregator = stages["aggregator (exactly once)"]
        sink = stages["analytics sink (chdb)"]
        where = "alone" if alone else "together"
        print(f"  aggregator >= {TARGET_AGGREGATOR_PER_CPU_S:,} readings/s per core: "
              f"{aggregator.per_cpu_second:,.0f} per CPU second ({where})  "
              f"{verdict(aggregator.per_cpu_second >= TARGET_AGGREGATOR_PER_CPU_S)}")
        print(f"  sink >= {TARGET_SINK_ROWS_PER_S:,} rows/s: {sink.rate:,.0f} ({where})  "
              f"{verdict(sink.rate >= TARGET_SINK_ROWS_PER_S)}")
    finally:
        if sampler is not None:
            sampler.close()
        pipeline.stop()
        if args.keep:
            print(f"state and logs kept in {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)
            if state_dir.exists():
                print(f"could not remove all of {state_dir} (files of another user?): remove it by hand")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
