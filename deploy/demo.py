"""The project's demo: all three pipelines end to end on real components, on this machine.

    bazel run //deploy:demo
    bazel run //deploy:demo -- --iot-seconds 60 --iot-rate 1000 --behaviour-seconds 90 --commerce-events 20000
    bazel run //deploy:up && bazel run //deploy:demo -- --stack attach   # against the running local stack

Steps (each printed as it happens):
  1. start the stack on free loopback ports and time it: the IoT pipeline (Kafka (KRaft),
     PostgreSQL, Kafka Connect with Debezium (connector registered), the analytics service
     (ClickHouse engine, chdb), the windowed aggregator), the behaviour pipeline (ingestion service,
     Flink job on a mini-cluster, WebSocket gateway) and, beside them in another thread, the
     commerce pipeline's HDFS and Spark Connect server; each is waited on through its health check;
  2. create every topic of the topics module; publish sample events of the contracts that travel
     on topics no running component reads and read them back; encode and decode every other
     contract; send a malformed record and show it in the dead-letter topic with its reason;
  3. commerce, in the background: the shop simulator writes one day of logs into HDFS, then
     `airflow dags test commerce_daily DAY` runs the sensor, the Spark job (through Spark Connect),
     the data-quality checks and the publish step; task states are printed as they change;
  4. IoT: simulated devices write readings (with late ones, corrections and deletions) into
     PostgreSQL; Debezium streams the changes, the aggregator windows them, the analytics
     service stores them; the demo prints aggregate rows read back from ClickHouse;
  5. behaviour: emulated users browse the shop, a real WebSocket client adds a few visits, then
     "closing" events a few minutes ahead close every window and session; the demo prints events
     per minute by type, sessions and the funnel read back from ClickHouse;
  6. dashboards: the live IoT and behaviour pages open in headless Chromium while everything runs;
     each must hold data points, keep redrawing in place with no script error and no request
     leaving the service; screenshots go to .state/demo/screenshots (--screenshots);
  7. a summary: the numbers that prove each pipeline worked (rows in, aggregates out, DLQ counts;
     raw lines, valid, rejected, mart rows, revenue and task states of the commerce day), the
     stack's start-up time and peak RSS (every child process tree sampled each second) against
     the aims (< 60 s, < 8 GiB), and what to open with the local stack.
Exits non-zero when any check fails.

Attached to the local stack (--stack auto, the default, when `bazel run //deploy:up` runs healthy
services in --stack-state-dir; --stack attach requires it; --stack own never attaches). Nothing of
the stack is started or stopped: addresses, DSNs and logins come from its state; the pipelines
whose services are all healthy run (IoT, behaviour; commerce only with HDFS, Spark and Airflow:
`up --profile all`). The demo's own processes are then only the behaviour Flink job (the stack
runs none), the commerce day's `airflow dags test` (private metadata, the stack's HDFS, Spark and
PostgreSQL) and Chromium; footprint is the stack's process trees. Data of the run is told apart:
the IoT sites and devices carry the run's tag (site-01-TAG), late and dead-letter figures are the
growth during the run. Behaviour, decided for a live shared stack: no event is sent ahead of the
clock (that would move the job's watermark past the stack's real users, whose next events would
be late) and the session gap stays the job's real 30 min, so sessions are not shown. The job
starts at the topic's current end (its consumer group's offsets committed there first); a real
WebSocket client sends page views on /demo/TAG/... paths through the stack's gateway, then keeps
sending at the current time until the one-minute windows holding them close by themselves; the
proof is that every event sent is counted exactly once in the closed page_path windows served
from ClickHouse (it fails on a lost, duplicated or late event, or when no window closes in time).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import pathlib
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter

from confluent_kafka import Consumer, Producer, TopicPartition

from datapipelines import catalog, kafka, records, samples, topics
from deploy import dashboards_check
from deploy.common.process import workspace_state_dir
from deploy.pipelines.behaviour import BehaviourPipeline, BehaviourPipelineConfig, prometheus_sum
from deploy.pipelines.commerce import DAG_ID, CommercePipeline, CommercePipelineConfig
from deploy.pipelines.iot import IotPipeline, IotPipelineConfig
from deploy.pipelines.base import query as analytics_query
from deploy.stack import attach, supervisor
from deploy.stack.footprint import PeakSampler, children_of_this_process, human
from services.iot_simulator.config import SimulatorConfig
from services.iot_simulator.model import Fleet, TickCounts
from services.iot_simulator.writer import ReadingsWriter

SAMPLES_PER_TOPIC = 5
STACK_MODES = ("auto", "attach", "own")
DEMO_SITES = 4
# What each pipeline needs of an attached stack (deploy/stack/catalog.py names).
IOT_SERVICES = ("kafka", "postgres", "connect", "register", "analytics", "aggregator")
BEHAVIOUR_SERVICES = ("kafka", "analytics", "ingest", "ws_gateway")
COMMERCE_SERVICES = ("postgres", "hdfs", "spark", "airflow")
# Attached, the run's WebSocket client sends one event per BEHAVIOUR_CLIENT_INTERVAL_S and waits at
# most this long after its last counted event for the windows holding them to close.
BEHAVIOUR_CLIENT_INTERVAL_S = 1.0
BEHAVIOUR_CLOSE_WAIT_S = 240
PIPELINE_TOPICS = (
    topics.IOT_CDC_READINGS,
    topics.IOT_AGGREGATES,
    topics.IOT_LATE_READINGS,
    # The behaviour pipeline's topics (the analytics service consumes metrics and sessions).
    topics.BEHAVIOUR_EVENTS,
    topics.BEHAVIOUR_LATE_EVENTS,
    topics.BEHAVIOUR_METRICS,
    topics.BEHAVIOUR_SESSIONS,
)
# Behaviour windows: 1-min tumbling and 5-min hopping; sessions end after BEHAVIOUR_SESSION_GAP_S
# of silence (shortened from 30 min so the demo's sessions close); closing events this far ahead
# move the watermark past every window and session of the run.
BEHAVIOUR_SESSION_GAP_S = 60
BEHAVIOUR_LATENESS_S = 10
BEHAVIOUR_CLOSING_AHEAD_S = 400


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def read_back(bootstrap: str, topic: str, timeout: float = 30.0):
    """Every record of `topic` from the beginning up to its current end."""
    consumer = Consumer(kafka.consumer_config(bootstrap, f"demo-{topic}-{time.time_ns()}"))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p] > 0])
    remaining = {p for p, end in ends.items() if end > 0}
    out = []
    deadline = time.monotonic() + timeout
    while remaining and time.monotonic() < deadline:
        for record in consumer.consume(num_messages=500, timeout=0.5):
            if record.error() is None:
                out.append(record)
                if record.offset() + 1 >= ends[record.partition()]:
                    remaining.discard(record.partition())
    consumer.close()
    return out


def quiet_producer(bootstrap: str) -> Producer:
    # librdkafka's own log goes through Python logging; its start-up notices
    # ("coordinator load in progress: retrying") are not worth showing in the demo.
    rdkafka = logging.getLogger("librdkafka")
    rdkafka.setLevel(logging.ERROR)
    return Producer(kafka.producer_config(bootstrap, logger=rdkafka))


def publish_every_topic(bootstrap: str) -> list[str]:
    failures, published = [], 0
    producer = quiet_producer(bootstrap)
    for topic in topics.SOURCES:
        # Topics the running IoT pipeline reads or writes carry only its real data.
        if topic.value_format != topics.PROTOBUF or topic in PIPELINE_TOPICS:
            continue
        published += 1
        cls = topic.message_class()
        sent = [samples.example(cls, n) for n in range(1, SAMPLES_PER_TOPIC + 1)]
        marker = f"demo-{time.time_ns()}"
        for message in sent:
            # Mark this run's samples so earlier runs on a shared broker do not count.
            _mark(message, marker)
            kafka.produce(producer, topic, message)
        producer.flush(30)
        got = [r for r in read_back(bootstrap, topic.name)
               if marker in str(records.decode(topic, r.value(), r.headers()))]
        decoded = [records.decode(topic, r.value(), r.headers()) for r in got]
        ok = sorted(m.SerializeToString() for m in decoded) == sorted(m.SerializeToString() for m in sent)
        keys_ok = all(r.key() == topic.key_of(m) for r, m in zip(got, decoded))
        fingerprint = records.header(got[0].headers(), records.FINGERPRINT_HEADER) if got else "-"
        size = sum(len(r.value()) for r in got) // max(len(got), 1)
        status = "ok" if ok and keys_ok else "MISMATCH"
        print(f"  {topic.name:<24} {len(got)}/{len(sent)} x {topic.message_type:<42} "
              f"~{size} B  key={got[0].key().decode() if got else '-'!s:<22} {fingerprint}  {status}")
        if status != "ok":
            failures.append(topic.name)
    if not published:
        print("  none: every contract topic carries a running pipeline's data (checked in the steps below)")
    return failures


def _mark(message, marker: str) -> None:
    """Put `marker` into the first string field found (depth-first)."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING and not samples.repeated(field):
            setattr(message, field.name, f"{value}-{marker}")
            return
        if field.message_type is not None and not samples.repeated(field) and field.message_type.fields:
            if field.message_type.full_name.startswith("datapipelines."):
                _mark(value, marker)
                return


def round_trip_other_contracts() -> list[str]:
    on_topics = {t.message_type for t in topics.ALL if t.message_type}
    failures = []
    others = [cls for cls in catalog.messages() if cls.DESCRIPTOR.full_name not in on_topics]
    for cls in others:
        message = samples.example(cls)
        data = message.SerializeToString()
        ok = cls.FromString(data) == message
        if not ok:
            failures.append(cls.DESCRIPTOR.full_name)
    print(f"  {len(others)} messages encoded and decoded: "
          f"{'all identical' if not failures else 'MISMATCH in ' + ', '.join(failures)}")
    print("  " + ", ".join(cls.DESCRIPTOR.full_name.split(".", 1)[1] for cls in others))
    return failures


def dead_letter_demo(bootstrap: str) -> list[str]:
    topic = topics.BEHAVIOUR_EVENTS
    producer = quiet_producer(bootstrap)
    marker = f"demo-bad-{time.time_ns()}".encode()
    producer.produce(topic.name, key=marker, value=b"\x0a\xff{not protobuf}",
                     headers=[(records.SCHEMA_HEADER, topic.message_type.encode())])
    producer.flush(10)
    consumer = Consumer(kafka.consumer_config(bootstrap, f"demo-dlq-{time.time_ns()}"))
    consumer.subscribe([topic.name])
    deadline = time.monotonic() + 30
    routed = False
    while not routed and time.monotonic() < deadline:
        for record in consumer.consume(num_messages=100, timeout=0.5):
            if record.error() is None and record.key() == marker:
                kafka.decode_or_dead_letter(producer, topic, record, stage="demo")
                routed = True
    consumer.close()
    producer.flush(10)
    dead = [r for r in read_back(bootstrap, topic.name + ".dlq") if r.key() == marker]
    if not dead:
        print("  the malformed record did not reach the dead-letter topic")
        return ["dead-letter"]
    headers = dead[0].headers()
    print(f"  {topic.name}.dlq <- offset {records.header(headers, records.DLQ_OFFSET)} of {topic.name}: "
          f"reason={records.header(headers, records.DLQ_REASON)}")
    print(f"  detail: {records.header(headers, records.DLQ_DETAIL)}")
    return []


def simulate_devices(dsn: str, seconds: float, rate: float, tag: str = "") -> TickCounts:
    """Writes readings into PostgreSQL at `dsn`; with `tag`, the sites and devices carry it in their
    ids (site-01-TAG, dev-0001-TAG) so a shared stack's earlier data is told apart."""
    config = SimulatorConfig(dsn=dsn, sites=DEMO_SITES, devices=24, rate=rate, duration=seconds,
                             late_fraction=0.03, update_fraction=0.03, delete_fraction=0.01)
    writer = ReadingsWriter(config.dsn)
    fleet = Fleet(config, next_reading_id=writer.next_reading_id())
    if tag:
        _tag_fleet(fleet, tag)
    writer.register_fleet(fleet)
    totals = TickCounts()
    began = time.monotonic()
    next_tick, last_report = began, began
    try:
        while time.monotonic() - began < seconds:
            changes, counts = fleet.tick(dt.datetime.now(dt.timezone.utc))
            writer.apply(changes)
            for name in ("inserts", "late", "updates", "deletes"):
                setattr(totals, name, getattr(totals, name) + getattr(counts, name))
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                print(f"  {last_report - began:4.0f} s: {totals.inserts} inserts ({totals.late} late), "
                      f"{totals.updates} corrections, {totals.deletes} deletions", flush=True)
            next_tick += 1 / config.ticks_per_second
            time.sleep(max(0.0, next_tick - time.monotonic()))
    finally:
        writer.close()
    print(f"  done: {totals.inserts} inserts ({totals.late} late), {totals.updates} corrections, "
          f"{totals.deletes} deletions in {time.monotonic() - began:.0f} s")
    return totals


def _tag_fleet(fleet: Fleet, tag: str) -> None:
    # The model finds a device's site by the number after the first "-": it stays in place.
    renamed = {site.site_id: f"{site.site_id}-{tag}" for site in fleet.sites}
    fleet.sites = [dataclasses.replace(site, site_id=renamed[site.site_id]) for site in fleet.sites]
    for device in fleet.devices:
        device.device_id = f"{device.device_id}-{tag}"
        device.site_id = renamed[device.site_id]


def iot_site_ids(tag: str) -> list[str]:
    """The site ids `simulate_devices(..., tag)` writes."""
    return [f"site-{i + 1:02d}-{tag}" for i in range(DEMO_SITES)]


def show_iot_results(pipeline, totals: TickCounts, proof: list[str], sites: list[str] | None = None,
                     side_before: tuple[int, int] | None = None) -> list[str]:
    """Aggregates read back through the analytics service. `pipeline` has `query` and `bootstrap`;
    with `sites`, only those sites count and all of them must be served (a shared stack), and the
    late / dead-letter figures are the growth since `side_before`."""
    def latest() -> list[dict]:
        if sites is None:
            return pipeline.query("/api/v1/iot/sites/latest", window_kind="tumbling", closed_only="false")["rows"]
        return [row for site in sites for row in pipeline.query(
            "/api/v1/iot/sites/latest", window_kind="tumbling", closed_only="false", site_id=site)["rows"]]

    # Wait until what the service serves stops changing: the pipeline has caught up.
    previous, rows, deadline = None, [], time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = latest()
        snapshot = [(r["site_id"], r["window_start"], r["version"]) for r in rows]
        if rows and snapshot == previous:
            break
        previous = snapshot
        time.sleep(2)
    if not rows or (sites is not None and len(rows) != len(sites)):
        print(f"  the analytics service serves IoT aggregates of {len(rows)} of "
              f"{len(sites) if sites is not None else 'the'} sites")
        return ["iot"]
    print("  latest 1-minute window per site (ClickHouse, FINAL):")
    width = max([9] + [len(r["site_id"]) + 1 for r in rows])
    print(f"  {'site':<{width}} {'window start (UTC)':<25} {'readings':>8} {'temp min':>9} {'mean':>7} {'max':>7} "
          f"{'humidity':>9} {'late':>5} closed")
    for r in rows:
        print(f"  {r['site_id']:<{width}} {r['window_start']:<25} {r['reading_count']:>8} "
              f"{r['temperature_celsius_min']:>9.2f} {r['temperature_celsius_mean']:>7.2f} "
              f"{r['temperature_celsius_max']:>7.2f} {r['humidity_percent_mean']:>9.1f} "
              f"{r['late_reading_count']:>5} {r['window_closed']}")
    top = pipeline.query("/api/v1/iot/devices/top", metric="temperature", stat="max", window="1h", limit=5,
                         **({"site_id": sites[0]} if sites else {}))["rows"]
    print("  hottest devices over the last hour:")
    for r in top:
        print("    " + "  ".join(f"{k}={v}" for k, v in r.items()))
    late, dead = iot_side_counts(pipeline.bootstrap)
    if side_before is not None:
        late, dead = late - side_before[0], dead - side_before[1]
    print(f"  late readings routed to {topics.IOT_LATE_READINGS.name}: {late}; "
          f"dead letters of {topics.IOT_CDC_READINGS.name}: {dead}" + (" (this run)" if side_before else ""))
    windows = sum(r["reading_count"] for r in rows)
    proof.append(f"IoT        {totals.inserts} readings written ({totals.late} late, {totals.updates} corrections, "
                 f"{totals.deletes} deletions); served: the latest 1-min window of {len(rows)} sites ({windows} readings); "
                 f"{late} late routed, {dead} in the DLQ")
    return []


def iot_side_counts(bootstrap: str) -> tuple[int, int]:
    """Records in the IoT late-reading topic and the CDC dead-letter topic."""
    return (end_offsets(bootstrap, topics.IOT_LATE_READINGS.name),
            end_offsets(bootstrap, topics.IOT_CDC_READINGS.name + ".dlq"))


def start_behaviour(pipeline: IotPipeline, state: pathlib.Path, rate: float) -> BehaviourPipeline:
    """The behaviour pipeline on the IoT pipeline's broker and analytics service; the gateway starts
    without emulated users (they come in `run_behaviour`)."""
    behaviour = BehaviourPipeline(BehaviourPipelineConfig(
        state_dir=state / "behaviour", bootstrap=pipeline.bootstrap, analytics_url=pipeline.analytics_url,
        users=0, rate=rate, allowed_lateness_seconds=BEHAVIOUR_LATENESS_S, max_lateness_seconds=4,
        session_gap_seconds=BEHAVIOUR_SESSION_GAP_S, max_clock_skew_seconds=BEHAVIOUR_CLOSING_AHEAD_S + 300,
        checkpoint_interval_seconds=2, parallelism=1), say=lambda line: print("  " + line, flush=True))
    behaviour.start()
    print("  started in " + ", ".join(f"{k} {v:.1f} s" for k, v in behaviour.timings.items()))
    return behaviour


def run_behaviour(behaviour: BehaviourPipeline, seconds: float, users: int, proof: list[str]) -> list[str]:
    """Emulated users and a real WebSocket client; prints what ClickHouse serves."""
    from websockets.sync.client import connect

    started_ms = int(time.time() * 1000)
    try:
        step(f"behaviour: {users} emulated users browse for {seconds:.0f} s; a real WebSocket client adds visits")
        behaviour.stop_gateway()
        behaviour.start_gateway(users=users)
        client_ms = int(time.time() * 1000)
        visit = [("page_view", None, "/"), ("product_view", {"product_id": "sku-007"}, "/p/sku-007"),
                 ("add_to_cart", {"product_id": "sku-007", "quantity": 1}, "/p/sku-007"),
                 ("checkout", {"checkout_id": "co-demo"}, "/checkout"),
                 ("purchase", {"order_id": "o-demo", "item_count": 1,
                               "order_total": {"currency_code": "EUR", "amount_minor": 4999}}, "/order/o-demo")]
        acked = _send_events(behaviour.websocket_url, [
            _client_event(f"demo-{client_ms}-{i}", "demo-visitor", client_ms + i * 500, kind, props, path)
            for i, (kind, props, path) in enumerate(visit)], connect)
        print(f"  real client: {acked}/{len(visit)} events acknowledged (in Kafka)")
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            time.sleep(min(10.0, seconds - (time.monotonic() - began)))
            emulated = behaviour.gateway_metric("dp_ws_emulated_events_total")
            print(f"  {time.monotonic() - began:4.0f} s: {emulated:.0f} emulated events", flush=True)
        emulation = behaviour.stop_gateway()
        print("  emulation: " + ", ".join(f"{k} {v}" for k, v in emulation.items() if k != "seconds"))

        step("behaviour: 3 events three minutes old (late: to the side output), then closing events move "
             "event time ahead, so every window and session closes")
        behaviour.start_gateway(users=0)
        old = int(time.time() * 1000) - 180_000
        _send_events(behaviour.websocket_url, [
            _client_event(f"demo-late-{old}-{i}", "demo-late-visitor", old + i, "page_view", None, "/")
            for i in range(3)], connect)
        ahead = int(time.time() * 1000) + BEHAVIOUR_CLOSING_AHEAD_S * 1000
        _send_events(behaviour.websocket_url, [
            _client_event(f"demo-closing-{ahead}-{i}", f"closing-{i}", ahead + i, "page_view", None, "/")
            for i in range(6)], connect)
        return show_behaviour_results(behaviour, started_ms, proof)
    except Exception as exc:  # reported as a failed check; the IoT part stays valid
        print(f"  the behaviour pipeline failed: {exc}")
        return ["behaviour"]


def _client_event(event_id: str, visitor: str, ms: int, kind: str, properties, path: str) -> dict:
    event = {"type": "event", "event_id": event_id, "event_type": kind, "session_id": f"{visitor}-session",
             "anonymous_id": visitor, "client_time": ms, "page": {"path": path}, "device": {"category": "desktop"}}
    if properties is not None:
        event["properties"] = properties
    return event


def _send_events(url: str, events: list[dict], connect) -> int:
    with connect(url) as ws:
        ws.recv(timeout=10)  # hello
        return _send_batch(ws, events)


def _send_batch(ws, events: list[dict]) -> int:
    """Sends on an open gateway connection; returns how many the gateway acknowledged (in Kafka)."""
    for event in events:
        ws.send(json.dumps(event))
    acked = 0
    for _ in events:
        acked += json.loads(ws.recv(timeout=60)).get("type") == "ack"
    return acked


def show_behaviour_results(behaviour: BehaviourPipeline, started_ms: int, proof: list[str]) -> list[str]:
    since = dt.datetime.fromtimestamp(started_ms / 1000 - 600, dt.timezone.utc).isoformat()
    until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    # Wait until the sessions are served and the served rows stop changing.
    previous, rows, deadline = None, [], time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = behaviour.query("/api/v1/behaviour/metrics", dimension="event_type", window_kind="tumbling",
                               limit=10000, **{"from": since, "to": until})["rows"]
        sessions = behaviour.query("/api/v1/behaviour/sessions/summary", **{"from": since, "to": until})["rows"]
        snapshot = (len(rows), sessions[0]["sessions"] if sessions else 0)
        if rows and snapshot[1] and snapshot == previous:
            break
        previous = snapshot
        time.sleep(3)
    if not rows:
        print("  the analytics service serves no behaviour metrics")
        return ["behaviour"]
    print("  events per minute by type (1-minute tumbling windows, ClickHouse FINAL):")
    by_minute = print_minutes(rows)
    summary = behaviour.query("/api/v1/behaviour/sessions/summary", **{"from": since, "to": until})["rows"][0]
    print("  sessions: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    funnel = behaviour.query("/api/v1/behaviour/funnel", **{"from": since, "to": until})["rows"]
    print("  funnel (sessions reaching each stage):")
    for r in funnel:
        rate = r["rate_from_visit"]
        print(f"    {r['stage']:<13} {r['sessions']:>6}   {'' if rate is None else f'{rate:6.1%} of visits'}")
    late = committed_records(behaviour.bootstrap, topics.BEHAVIOUR_LATE_EVENTS.name)
    accepted = end_offsets(behaviour.bootstrap, topics.BEHAVIOUR_EVENTS.name)
    print(f"  {topics.BEHAVIOUR_EVENTS.name}: {accepted} records; late events routed to "
          f"{topics.BEHAVIOUR_LATE_EVENTS.name}: {late}")
    dead = end_offsets(behaviour.bootstrap, topics.BEHAVIOUR_EVENTS.name + ".dlq")
    purchases = next((r["sessions"] for r in funnel if r["stage"] == "purchase"), 0)
    proof.append(f"behaviour  {accepted} events accepted, {late} late routed, {dead} in the DLQ; {len(by_minute)} "
                 f"one-minute windows; {summary['sessions']} sessions; {purchases} reached purchase")
    return [] if summary["sessions"] else ["behaviour-sessions"]


def committed_records(bootstrap: str, topic: str, timeout: float = 30.0) -> int:
    """Records of a transactionally written topic (end offsets also count the commit markers)."""
    consumer = Consumer(kafka.consumer_config(bootstrap, f"demo-count-{time.time_ns()}"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        count, deadline = 0, time.monotonic() + timeout
        while time.monotonic() < deadline:
            count += sum(1 for r in consumer.consume(500, timeout=0.5) if r.error() is None)
            positions = consumer.position([TopicPartition(topic, p) for p in partitions])
            if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in positions):
                break
        return count
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = Consumer(kafka.consumer_config(bootstrap, "demo-offsets"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def run_commerce(commerce: CommercePipeline, day: dt.date, proof: list[str]) -> list[str]:
    """One day of shop logs into HDFS, then the commerce DAG for that day; prints what PostgreSQL holds."""
    try:
        lines = commerce.generate_day(day)
        commerce.say(f"{lines} lines of {day} in HDFS; running airflow dags test {DAG_ID} {day}")
        result = commerce.run_dag(day)
    except Exception as exc:
        commerce.say(f"the commerce pipeline failed: {exc}")
        return ["commerce"]
    tasks = ", ".join(f"{task} {state}" for task, state in result.task_states.items())
    revenue = "; ".join(f"{currency} gross {v['gross_minor'] / 100:.2f} net {v['net_minor'] / 100:.2f}"
                        for currency, v in result.revenue.items()) or "none"
    proof.append(f"commerce   day {day}: {result.raw_lines} raw lines -> {result.valid_events} valid, "
                 f"{result.rejected_lines} rejected; {sum(result.mart_rows.values())} mart rows; revenue {revenue}; "
                 f"DAG {result.dag_state} in {result.dag_seconds:.0f} s ({tasks})")
    if result.quality_report:
        proof.append("           " + result.quality_report.splitlines()[0])
    commerce.say("mart rows: " + ", ".join(f"{t} {n}" for t, n in result.mart_rows.items()))
    return [] if result.ok else ["commerce"]


def contract_steps(bootstrap: str, title: str) -> list[str]:
    """Topics created; samples of idle topics' contracts published and read back; the other
    contracts encoded and decoded; a malformed event dead-lettered. Returns the failures."""
    step(title)
    kafka.ensure_topics(bootstrap)
    for topic in topics.ALL:
        print(f"  {topic.name:<34} {topic.partitions} partitions  {topic.value_format}")

    step(f"publishing {SAMPLES_PER_TOPIC} sample events of each idle topic's contract and reading them back")
    failures = publish_every_topic(bootstrap)

    step("encoding and decoding the contracts that do not travel on a topic")
    failures += round_trip_other_contracts()

    step("sending a malformed event: it goes to the dead-letter topic with the reason")
    return failures + dead_letter_demo(bootstrap)


def check_dashboards(args, analytics_url: str, pages: tuple[str, ...], proof: list[str], title: str) -> list[str]:
    """The live dashboard `pages` in headless Chromium; proof lines appended; returns the failures."""
    step(title)
    shots = args.screenshots or workspace_state_dir() / "demo" / "screenshots"
    lines, failed = dashboards_check.check(analytics_url, shots, say=lambda line: print("  " + line, flush=True),
                                           pages=pages)
    proof += lines
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iot-seconds", type=float, default=float(os.environ.get("DP_DEMO_IOT_SECONDS", 20)),
                        help="how long the simulated devices write (env DP_DEMO_IOT_SECONDS)")
    parser.add_argument("--iot-rate", type=float, default=float(os.environ.get("DP_DEMO_IOT_RATE", 300)),
                        help="changes per second the devices write (env DP_DEMO_IOT_RATE)")
    parser.add_argument("--behaviour-seconds", type=float,
                        default=float(os.environ.get("DP_DEMO_BEHAVIOUR_SECONDS", 70)),
                        help="how long the emulated users browse; 0 skips the behaviour pipeline "
                             "(env DP_DEMO_BEHAVIOUR_SECONDS)")
    parser.add_argument("--behaviour-users", type=int, default=20, help="emulated shop visitors")
    parser.add_argument("--behaviour-rate", type=float, default=40.0, help="emulated events per second")
    parser.add_argument("--commerce-events", type=int, default=int(os.environ.get("DP_DEMO_COMMERCE_EVENTS", 3000)),
                        help="shop events of the simulated day; 0 skips the commerce pipeline "
                             "(env DP_DEMO_COMMERCE_EVENTS)")
    parser.add_argument("--commerce-day", type=dt.date.fromisoformat,
                        default=dt.date.fromisoformat(os.environ.get("DP_DEMO_COMMERCE_DAY", "2026-01-01")),
                        help="the simulated shop day, YYYY-MM-DD (env DP_DEMO_COMMERCE_DAY)")
    parser.add_argument("--dashboards-check", action=argparse.BooleanOptionalAction,
                        default=os.environ.get("DP_DEMO_DASHBOARDS_CHECK", "1") != "0",
                        help="open the live dashboards in headless Chromium while the stack runs: data points, "
                             "live refreshes, screenshots (env DP_DEMO_DASHBOARDS_CHECK=0 turns it off)")
    parser.add_argument("--screenshots", type=pathlib.Path, default=None,
                        help="where the dashboards' screenshots go (default: .state/demo/screenshots in the workspace)")
    parser.add_argument("--state-dir", type=pathlib.Path, default=None,
                        help="keep the demo's own data and logs here (default: a temporary directory, removed "
                             "at the end)")
    parser.add_argument("--stack", choices=STACK_MODES, default=os.environ.get("DP_DEMO_STACK", "auto"),
                        help="auto: attach to the local stack `bazel run //deploy:up` runs when its services are "
                             "healthy, else start the demo's own processes; attach: require that stack; own: always "
                             "the demo's own processes (env DP_DEMO_STACK, default auto)")
    parser.add_argument("--stack-state-dir", type=pathlib.Path, default=None,
                        help="the state directory of that stack (env DP_STATE_DIR, default <workspace>/.state: "
                             "the same as up, status and down)")
    args = parser.parse_args(argv)
    if args.stack not in STACK_MODES:
        parser.error(f"--stack / DP_DEMO_STACK: one of {', '.join(STACK_MODES)}, got {args.stack!r}")
    logging.basicConfig(level=logging.WARNING, format="  log: %(name)s %(levelname)s %(message)s")

    if args.stack != "own":
        began = time.monotonic()
        state_dir = _stack_state_dir(args.stack_state_dir)
        running, why = attach.find(state_dir)
        if running is not None:
            why = attach_problem(running)
        if not why:
            return run_attached(args, running, began)
        if args.stack == "attach":
            print(f"demo: --stack attach: {why}; start the stack with `{attach.UP_COMMAND}` "
                  f"(state {state_dir}), or run the demo with --stack own", file=sys.stderr)
            return 2
        print(f"no local stack to attach to ({why}): the demo starts its own processes", flush=True)
    return run_own(args)


def run_own(args) -> int:
    """Every component started by the demo on free ports under its own state directory, stopped at the end."""
    started = time.monotonic()
    failures: list[str] = []
    proof: list[str] = []
    # Every component is a child of this process (JVMs, postmaster, services): their trees are the stack.
    sampler = PeakSampler(children_of_this_process, interval=1.0).start()
    with tempfile.TemporaryDirectory(prefix="dp-demo-") as temporary:
        state = args.state_dir or pathlib.Path(temporary)
        pipeline = IotPipeline(IotPipelineConfig(state_dir=state), say=lambda line: print("  " + line, flush=True))
        behaviour: BehaviourPipeline | None = None
        commerce: CommercePipeline | None = None
        try:
            step("starting the stack: IoT (Kafka, PostgreSQL, Kafka Connect + Debezium, analytics, aggregator), "
                 "behaviour (ingest, Flink job, WebSocket gateway)"
                 + (", commerce (Spark Connect launched first, HDFS)" if args.commerce_events > 0 else ""))
            if args.commerce_events > 0:
                commerce = CommercePipeline(
                    CommercePipelineConfig(state_dir=state / "commerce", postgres_dsn="",
                                           events_per_day=args.commerce_events),
                    say=lambda line: print("  [commerce] " + line, flush=True))
                commerce.launch_spark()  # its JVM comes up while the others start
            pipeline.start()
            print("  IoT started in " + ", ".join(f"{k} {v:.1f} s" for k, v in pipeline.timings.items()))
            if args.behaviour_seconds > 0:
                behaviour = start_behaviour(pipeline, state, args.behaviour_rate)
            if commerce is not None:
                commerce.config = dataclasses.replace(commerce.config, postgres_dsn=pipeline.app_dsn)
                try:
                    commerce.start()
                    print("  [commerce] started in " + ", ".join(f"{k} {v:.1f} s" for k, v in commerce.timings.items())
                          + " (spark launched first)")
                except Exception as exc:
                    print(f"  [commerce] did not start: {exc}")
                    failures.append("commerce")
                    commerce = None
            startup_seconds = time.monotonic() - started
            startup_rss = sampler.sample()
            print(f"  stack up in {startup_seconds:.1f} s (aim < 60 s), RSS {human(startup_rss)} over "
                  f"{len(children_of_this_process())} component processes")
            bootstrap = pipeline.bootstrap
            if commerce is not None:
                commerce.prepare_airflow()  # Airflow's metadata database, while the next steps run

            failures += contract_steps(bootstrap, "topics (created from the topics module)")

            commerce_run: threading.Thread | None = None
            commerce_failures: list[str] = []
            if commerce is not None:
                step(f"commerce (in the background, lines marked [commerce]): one day ({args.commerce_day}) of shop "
                     f"logs into HDFS, then the Airflow DAG {DAG_ID} for it")
                commerce_run = threading.Thread(
                    target=lambda: commerce_failures.extend(run_commerce(commerce, args.commerce_day, proof)),
                    name="commerce-run", daemon=True)
                commerce_run.start()

            step(f"IoT: simulated devices write into PostgreSQL for {args.iot_seconds:.0f} s at {args.iot_rate:.0f} changes/s")
            totals = simulate_devices(pipeline.app_dsn, args.iot_seconds, args.iot_rate)

            step("IoT: aggregates read back from ClickHouse through the analytics service")
            failures += show_iot_results(pipeline, totals, proof)

            if behaviour is not None:
                failures += run_behaviour(behaviour, args.behaviour_seconds, args.behaviour_users, proof)

            if args.dashboards_check:
                pages = ("iot", "behaviour") if behaviour is not None else ("iot",)
                failures += check_dashboards(args, pipeline.analytics_url, pages, proof,
                                             "dashboards: the live pages in headless Chromium while the stack runs")

            if commerce_run is not None:
                step("commerce: waiting for the DAG run to finish")
                commerce_run.join()
                failures += commerce_failures
            print(f"  logs: {state}/**/logs" + ("" if args.state_dir else " (removed at exit; keep with --state-dir)"))
        finally:
            step("stopping")
            for component in (behaviour, commerce, pipeline):
                if component is not None:
                    component.stop()
        peak = sampler.stop()

    elapsed = time.monotonic() - started
    step("summary: what proves each pipeline worked")
    for line in proof:
        print("  " + line)
    if "startup_seconds" in locals():
        print(f"  footprint  whole stack up in {startup_seconds:.1f} s (aim < 60 s); peak RSS {human(peak)} summed over "
              f"{sampler.peak_processes} processes (aim < 8 GiB; shared pages counted per process)")
    print("  open (the demo's own services stopped with it; the local stack keeps them running):")
    print("    bazel run //deploy:up                       -> http://127.0.0.1:8400/dashboards/iot, "
          "http://127.0.0.1:8400/dashboards/behaviour, http://127.0.0.1:8765/ (click around)")
    print("    bazel run //deploy:up -- --profile all      -> Superset http://127.0.0.1:8088/ (commerce dashboards), "
          "Airflow http://127.0.0.1:8080/ (logins in the up table)")
    if failures:
        print(f"\ndemo FAILED in {elapsed:.1f} s: {', '.join(failures)}")
        return 1
    print(f"\ndemo finished in {elapsed:.1f} s: every check passed")
    return 0


# --- attached to the local stack ----------------------------------------------------------


def _stack_state_dir(path: pathlib.Path | None) -> pathlib.Path:
    """--stack-state-dir (relative to where `bazel run` was called), else up's default."""
    if path is None:
        return supervisor.default_state_dir()
    if not path.is_absolute() and os.environ.get("BUILD_WORKING_DIRECTORY"):
        path = pathlib.Path(os.environ["BUILD_WORKING_DIRECTORY"]) / path
    return path.absolute()


def attach_problem(stack: attach.RunningStack) -> str:
    """Why the demo cannot drive this running stack, or "" when it can (Kafka and the analytics
    service healthy, and every service of the IoT or of the behaviour pipeline)."""
    if not stack.has(("kafka", "analytics")):
        bad = stack.missing(("kafka", "analytics"))
        return "the stack in %s runs, but not healthy: %s" % (
            stack.state_dir, ", ".join(f"{n} ({stack.unhealthy.get(n, 'not enabled')})" for n in bad))
    if not stack.has(IOT_SERVICES) and not stack.has(BEHAVIOUR_SERVICES):
        return "the stack in %s lacks the IoT services (%s) and the behaviour services (%s)" % (
            stack.state_dir, ", ".join(stack.missing(IOT_SERVICES)), ", ".join(stack.missing(BEHAVIOUR_SERVICES)))
    return ""


class StackEndpoints:
    """The attached stack's Kafka and analytics service, shaped like a pipeline for the shared steps."""

    def __init__(self, stack: attach.RunningStack):
        self.bootstrap = stack.bootstrap
        self.analytics_url = stack.analytics_url

    def query(self, path: str, **params) -> dict:
        return analytics_query(self.analytics_url, path, **params)


def _missing_line(what: str, stack: attach.RunningStack, names: tuple[str, ...], command: str) -> None:
    print(f"  {what}: skipped, the stack does not run {', '.join(stack.missing(names))} healthy; "
          f"`{command}` adds it")


def run_attached(args, stack: attach.RunningStack, began: float) -> int:
    """The demo against the running local stack: nothing of it is started or stopped.

    The demo's own processes are the behaviour Flink job (the stack has no job of its own), the
    commerce DAG's `airflow dags test` and Chromium; data is marked with this run's tag."""
    tag = uuid.uuid4().hex[:6]
    failures: list[str] = []
    proof: list[str] = []
    step(f"attached to the local stack in {stack.state_dir} (run {tag}): its services are driven, "
         "none is started or stopped")
    for name, detail in stack.healthy.items():
        print(f"  {name:<10} pid {stack.pids.get(name, '-')!s:<8} {detail}")
    for name, why in stack.unhealthy.items():
        print(f"  {name:<10} NOT HEALTHY: {why}")
    attach_seconds = time.monotonic() - began
    stack_sampler = PeakSampler(stack.processes, interval=1.0).start()
    own_sampler = PeakSampler(children_of_this_process, interval=1.0).start()
    endpoints = StackEndpoints(stack)
    do_iot = args.iot_seconds > 0 and stack.has(IOT_SERVICES)
    do_behaviour = args.behaviour_seconds > 0 and stack.has(BEHAVIOUR_SERVICES)
    do_commerce = args.commerce_events > 0 and stack.has(COMMERCE_SERVICES)
    if args.iot_seconds > 0 and not do_iot:
        _missing_line("IoT", stack, IOT_SERVICES, f"{attach.UP_COMMAND}")
    if args.behaviour_seconds > 0 and not do_behaviour:
        _missing_line("behaviour", stack, BEHAVIOUR_SERVICES, f"{attach.UP_COMMAND}")
    if args.commerce_events > 0 and not do_commerce:
        _missing_line("commerce", stack, COMMERCE_SERVICES, f"{attach.UP_COMMAND} -- --profile all")
    print(f"  attached in {attach_seconds:.1f} s")

    with tempfile.TemporaryDirectory(prefix="dp-demo-") as temporary:
        state = args.state_dir or pathlib.Path(temporary)
        behaviour: BehaviourPipeline | None = None
        commerce: CommercePipeline | None = None
        try:
            if do_behaviour:
                step("behaviour: the Flink job (the stack runs none), reading behaviour.events.v1 from now on")
                try:
                    behaviour = start_attached_behaviour(stack, state)
                except Exception as exc:  # a failed check; the other pipelines still run
                    print(f"  the behaviour job did not start: {exc}")
                    failures.append("behaviour")

            failures += contract_steps(stack.bootstrap,
                                       "topics (created from the topics module; existing ones are left alone)")

            commerce_run: threading.Thread | None = None
            commerce_failures: list[str] = []
            if do_commerce:
                commerce = CommercePipeline(
                    CommercePipelineConfig(state_dir=state / "commerce", postgres_dsn=stack.app_dsn,
                                           events_per_day=args.commerce_events,
                                           extra_airflow_env=_superset_env(stack)),
                    say=lambda line: print("  [commerce] " + line, flush=True))
                commerce.attach(stack.webhdfs_url, stack.hdfs_url, stack.spark_remote)
                commerce.prepare_airflow()  # started from this thread: it outlives the step
                step(f"commerce (in the background, lines marked [commerce]): one day ({args.commerce_day}) of shop "
                     f"logs into the stack's HDFS, then the DAG {DAG_ID} for it on the stack's Spark and PostgreSQL")
                commerce_run = threading.Thread(target=_checked, args=(
                    "commerce", lambda: run_commerce(commerce, args.commerce_day, proof), commerce_failures),
                    name="commerce-run", daemon=True)
                commerce_run.start()

            if do_iot:
                sites = iot_site_ids(tag)
                side_before = iot_side_counts(stack.bootstrap)
                step(f"IoT: simulated devices of this run (sites {sites[0]} .. {sites[-1]}) write into the stack's "
                     f"PostgreSQL for {args.iot_seconds:.0f} s at {args.iot_rate:.0f} changes/s")
                totals = simulate_devices(stack.app_dsn, args.iot_seconds, args.iot_rate, tag)
                step("IoT: this run's aggregates read back from ClickHouse through the stack's analytics service")
                failures += show_iot_results(endpoints, totals, proof, sites=sites, side_before=side_before)

            if behaviour is not None:
                failures += run_attached_behaviour(stack, behaviour, args.behaviour_seconds, tag, proof)

            if args.dashboards_check:
                pages = ("iot",) if do_iot else ()
                pages += ("behaviour",) if do_behaviour else ()
                failures += check_dashboards(args, stack.analytics_url, pages, proof,
                                             "dashboards: the stack's live pages in headless Chromium")

            if commerce_run is not None:
                step("commerce: waiting for the DAG run to finish")
                commerce_run.join()
                failures += commerce_failures
        finally:
            step("stopping the demo's own processes (the stack keeps running)")
            for component in (behaviour, commerce):
                if component is not None:
                    component.stop()
        stack_peak, own_peak = stack_sampler.stop(), own_sampler.stop()

    elapsed = time.monotonic() - began
    step("summary: what proves each pipeline worked")
    for line in proof:
        print("  " + line)
    print(f"  footprint  attached in {attach_seconds:.1f} s to {len(stack.pids)} running services; the stack's peak RSS "
          f"{human(stack_peak)} over {stack_sampler.peak_processes} processes (aim < 8 GiB), the demo's own "
          f"processes {human(own_peak)} over {own_sampler.peak_processes}")
    print("  open (the stack keeps running; `bazel run //deploy:status`, `bazel run //deploy:down`):")
    for line in live_urls(stack):
        print("    " + line)
    if failures:
        print(f"\ndemo FAILED in {elapsed:.1f} s: {', '.join(failures)}")
        return 1
    print(f"\ndemo finished in {elapsed:.1f} s attached to the stack in {stack.state_dir}: every check passed")
    return 0


def _checked(name: str, check, failures: list[str]) -> None:
    """Runs `check` (returning failures), for a thread: an exception is a failure of `name`, reported."""
    try:
        failures.extend(check())
    except Exception as exc:
        print(f"  [{name}] failed: {exc!r}", flush=True)
        failures.append(name)


def live_urls(stack: attach.RunningStack) -> list[str]:
    out = [f"dashboards {stack.url('analytics', '/dashboards/iot')}, {stack.url('analytics', '/dashboards/behaviour')}"]
    if "ws_gateway" in stack.healthy:
        out.append(f"shop page  {stack.url('ws_gateway', '/')} (click around: events reach the behaviour pipeline)")
    if "superset" in stack.healthy:
        out.append(f"Superset   {stack.url('superset', '/')} (commerce dashboards; login {' / '.join(stack.superset_login())})")
    if "airflow" in stack.healthy:
        out.append(f"Airflow    {stack.url('airflow', '/')} (login {' / '.join(stack.airflow_login())})")
    if "superset" not in stack.healthy and "airflow" not in stack.healthy:
        out.append(f"{attach.UP_COMMAND} -- --profile all   adds HDFS, Spark, Superset and Airflow (commerce)")
    return out


def _superset_env(stack: attach.RunningStack) -> dict[str, str]:
    user, password = stack.superset_login()
    if "superset" not in stack.healthy or not password:
        return {}
    return {"DP_SUPERSET_URL": stack.url("superset"), "DP_SUPERSET_USER": user, "DP_SUPERSET_PASSWORD": password}


def start_attached_behaviour(stack: attach.RunningStack, state: pathlib.Path) -> BehaviourPipeline:
    """The behaviour job against the stack's broker, starting at the topic's current end: its
    consumer group's offsets are committed there first, so no event sent later is missed."""
    behaviour = BehaviourPipeline(BehaviourPipelineConfig(
        state_dir=state / "behaviour", bootstrap=stack.bootstrap, analytics_url=stack.analytics_url,
        allowed_lateness_seconds=BEHAVIOUR_LATENESS_S, checkpoint_interval_seconds=2, parallelism=1,
        startup_mode="group-offsets"), say=lambda line: print("  " + line, flush=True))
    group = f"behaviour-{behaviour.run_id}"
    start = commit_end_offsets(stack.bootstrap, group, topics.BEHAVIOUR_EVENTS.name)
    print(f"  consumer group {group} starts at offsets {start} of {topics.BEHAVIOUR_EVENTS.name}")
    behaviour.start_flink_job()
    print(f"  flink job (mini-cluster, session gap {behaviour.config.session_gap_seconds // 60} min, allowed "
          f"lateness {BEHAVIOUR_LATENESS_S} s) submitted in {behaviour.flink_job.start_seconds:.0f} s")
    return behaviour


def commit_end_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Commits the current end offset of every partition of `topic` for `group`; returns them."""
    consumer = Consumer(kafka.consumer_config(bootstrap, group))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.commit(offsets=[TopicPartition(topic, p, end) for p, end in ends.items()], asynchronous=False)
        return ends
    finally:
        consumer.close()


def run_attached_behaviour(stack: attach.RunningStack, behaviour: BehaviourPipeline, seconds: float, tag: str,
                           proof: list[str]) -> list[str]:
    """A real WebSocket client browses pages of this run for `seconds` beside the stack's emulated
    users; then, still sending at the current time, waits for the windows holding its counted
    events to close by themselves and checks every one of them is counted once in ClickHouse."""
    from websockets.sync.client import connect

    step(f"behaviour: a real WebSocket client browses /demo/{tag}/... through the stack's gateway for "
         f"{seconds:.0f} s; the windows then close in real time (no event ahead of the clock)")
    visitor = f"demo-{tag}"
    serial = 0

    def event(kind: str, path: str, properties=None) -> dict:
        nonlocal serial
        serial += 1
        return _client_event(f"{visitor}-{serial}", visitor, int(time.time() * 1000), kind, properties, path)

    sent: Counter = Counter()
    first_ms = int(time.time() * 1000)
    emulated_before = _gateway_metric(stack, "dp_ws_emulated_events_total")
    try:
        with connect(stack.websocket_url) as ws:
            ws.recv(timeout=10)  # hello
            visit = [event("page_view", f"/demo/{tag}/"),
                     event("product_view", f"/demo/{tag}/p/sku-007", {"product_id": "sku-007"}),
                     event("add_to_cart", f"/demo/{tag}/p/sku-007", {"product_id": "sku-007", "quantity": 1}),
                     event("checkout", f"/demo/{tag}/checkout", {"checkout_id": f"co-{tag}"})]
            if _send_batch(ws, visit) != len(visit):
                print("  the gateway did not acknowledge every event of the visit")
                return ["behaviour"]
            sent.update(e["page"]["path"] for e in visit)
            began = time.monotonic()
            last_report = began
            while time.monotonic() - began < seconds:
                browse = event("page_view", f"/demo/{tag}/browse")
                sent[browse["page"]["path"]] += _send_batch(ws, [browse])
                if time.monotonic() - last_report >= 10:
                    last_report = time.monotonic()
                    print(f"  {last_report - began:4.0f} s: {sum(sent.values())} events of this run acknowledged",
                          flush=True)
                time.sleep(BEHAVIOUR_CLIENT_INTERVAL_S)
            last_ms = int(time.time() * 1000)
            print(f"  {sum(sent.values())} events of this run acknowledged (in Kafka) on {len(sent)} pages; the "
                  f"client keeps sending /demo/{tag}/tick (not counted) while the windows close")
            served, closed_windows = _wait_run_windows(stack, ws, event, tag, sent, first_ms, last_ms)
    except Exception as exc:  # reported as a failed check; the other parts stay valid
        print(f"  the behaviour pipeline failed: {exc}")
        return ["behaviour"]
    emulated = _gateway_metric(stack, "dp_ws_emulated_events_total") - emulated_before
    print(f"  {'page (this run)':<28} {'sent':>6} {'served':>7}   (closed 1-minute windows, ClickHouse FINAL)")
    for path in sorted(sent):
        print(f"  {path:<28} {sent[path]:>6} {served.get(path, 0):>7}")
    show_minutes(behaviour, first_ms)
    ok = dict(served) == dict(sent)
    print(f"  sessions end after {behaviour.config.session_gap_seconds // 60} min of silence (the job's real gap): "
          "not waited for here, and no event is sent ahead of the clock to close them (the stack's users "
          "would be late)")
    proof.append(f"behaviour  {sum(sent.values())} events of this run's client counted once each in "
                 f"{closed_windows} closed one-minute windows (page_path, ClickHouse): "
                 f"{'all served' if ok else 'MISMATCH'}; the stack's emulated users sent {emulated:.0f} meanwhile")
    return [] if ok else ["behaviour"]


def _wait_run_windows(stack, ws, event, tag: str, sent: Counter, first_ms: int, last_ms: int):
    """Sends a tick a second until the closed windows count every event in `sent` (or time is up)."""
    since = dt.datetime.fromtimestamp(first_ms / 1000 - 120, dt.timezone.utc).isoformat()
    window_end_ms = (last_ms // 60_000 + 1) * 60_000
    deadline = time.monotonic() + BEHAVIOUR_CLOSE_WAIT_S
    served: Counter = Counter()
    windows: set = set()
    last_report = time.monotonic()
    while time.monotonic() < deadline:
        _send_batch(ws, [event("page_view", f"/demo/{tag}/tick")])
        until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
        rows = analytics_query(stack.analytics_url, "/api/v1/behaviour/metrics", dimension="page_path",
                               window_kind="tumbling", closed_only="true", limit=10000,
                               **{"from": since, "to": until})["rows"]
        mine = [r for r in rows if r["dimension_value"] in sent]
        served = Counter()
        for r in mine:
            served[r["dimension_value"]] += r["event_count"]
        windows = {r["window_start"] for r in mine}
        if served == sent:
            break
        if time.monotonic() - last_report >= 15:
            last_report = time.monotonic()
            print(f"  waiting for the windows up to {dt.datetime.fromtimestamp(window_end_ms / 1000, dt.timezone.utc):%H:%M} "
                  f"UTC to close: {sum(served.values())} of {sum(sent.values())} events served so far", flush=True)
        time.sleep(BEHAVIOUR_CLIENT_INTERVAL_S)
    return served, len(windows)


def show_minutes(behaviour: BehaviourPipeline, first_ms: int) -> None:
    """Events per closed minute by type since the run began (everyone's events: the stack's users too)."""
    since = dt.datetime.fromtimestamp(first_ms / 1000 - 60, dt.timezone.utc).isoformat()
    until = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    rows = behaviour.query("/api/v1/behaviour/metrics", dimension="event_type", window_kind="tumbling",
                           closed_only="true", limit=10000, **{"from": since, "to": until})["rows"]
    print("  all events per closed minute by type (the stack's users and this run):")
    print_minutes(rows)


def print_minutes(rows: list[dict]) -> dict[str, dict[str, int]]:
    """The table of events per minute by type of metric rows (dimension event_type); returns it."""
    by_minute: dict[str, dict[str, int]] = {}
    for r in rows:
        kind = r["dimension_value"].replace("USER_EVENT_TYPE_", "").lower()
        by_minute.setdefault(r["window_start"], {})[kind] = r["event_count"]
    kinds = ["page_view", "product_view", "click", "scroll", "search", "add_to_cart", "remove_from_cart",
             "checkout", "purchase"]
    print("  " + f"{'minute (UTC)':<25}" + "".join(f"{k[:12]:>13}" for k in kinds))
    for minute, counts in sorted(by_minute.items()):
        print("  " + f"{minute:<25}" + "".join(f"{counts.get(k, 0):>13}" for k in kinds))
    return by_minute


def _gateway_metric(stack: attach.RunningStack, name: str) -> float:
    """Sum of one Prometheus series family of the stack's gateway (0 when it cannot be read)."""
    try:
        return prometheus_sum(stack.url("ws_gateway", "/metrics"), name)
    except OSError:
        return 0.0


if __name__ == "__main__":
    sys.exit(main())
