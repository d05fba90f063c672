"""The project's demo: all three pipelines end to end on real components, on this machine.

    bazel run //deploy:demo
    bazel run //deploy:demo -- --iot-seconds 60 --iot-rate 1000 --behaviour-seconds 90 --commerce-events 20000

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

from confluent_kafka import Consumer, Producer, TopicPartition

from datapipelines import catalog, kafka, records, samples, topics
from deploy import dashboards_check
from deploy.common.process import workspace_state_dir
from deploy.pipelines.behaviour import BehaviourPipeline, BehaviourPipelineConfig
from deploy.pipelines.commerce import DAG_ID, CommercePipeline, CommercePipelineConfig
from deploy.pipelines.iot import IotPipeline, IotPipelineConfig
from deploy.stack.footprint import PeakSampler, children_of_this_process, human
from services.iot_simulator.config import SimulatorConfig
from services.iot_simulator.model import Fleet, TickCounts
from services.iot_simulator.writer import ReadingsWriter

SAMPLES_PER_TOPIC = 5
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
    failures = []
    producer = quiet_producer(bootstrap)
    for topic in topics.SOURCES:
        # Topics the running IoT pipeline reads or writes carry only its real data.
        if topic.value_format != topics.PROTOBUF or topic in PIPELINE_TOPICS:
            continue
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


def simulate_devices(pipeline: IotPipeline, seconds: float, rate: float) -> TickCounts:
    config = SimulatorConfig(dsn=pipeline.app_dsn, sites=4, devices=24, rate=rate, duration=seconds,
                             late_fraction=0.03, update_fraction=0.03, delete_fraction=0.01)
    writer = ReadingsWriter(config.dsn)
    fleet = Fleet(config, next_reading_id=writer.next_reading_id())
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


def show_iot_results(pipeline: IotPipeline, totals: TickCounts, proof: list[str]) -> list[str]:
    # Wait until what the service serves stops changing: the pipeline has caught up.
    previous, rows, deadline = None, [], time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = pipeline.query("/api/v1/iot/sites/latest", window_kind="tumbling", closed_only="false")["rows"]
        snapshot = [(r["site_id"], r["window_start"], r["version"]) for r in rows]
        if rows and snapshot == previous:
            break
        previous = snapshot
        time.sleep(2)
    if not rows:
        print("  the analytics service serves no IoT aggregates")
        return ["iot"]
    print("  latest 1-minute window per site (ClickHouse, FINAL):")
    print(f"  {'site':<9} {'window start (UTC)':<25} {'readings':>8} {'temp min':>9} {'mean':>7} {'max':>7} "
          f"{'humidity':>9} {'late':>5} closed")
    for r in rows:
        print(f"  {r['site_id']:<9} {r['window_start']:<25} {r['reading_count']:>8} "
              f"{r['temperature_celsius_min']:>9.2f} {r['temperature_celsius_mean']:>7.2f} "
              f"{r['temperature_celsius_max']:>7.2f} {r['humidity_percent_mean']:>9.1f} "
              f"{r['late_reading_count']:>5} {r['window_closed']}")
    top = pipeline.query("/api/v1/iot/devices/top", metric="temperature", stat="max", window="1h", limit=5)["rows"]
    print("  hottest devices over the last hour:")
    for r in top:
        print("    " + "  ".join(f"{k}={v}" for k, v in r.items()))
    late = end_offsets(pipeline.bootstrap, topics.IOT_LATE_READINGS.name)
    dead = end_offsets(pipeline.bootstrap, topics.IOT_CDC_READINGS.name + ".dlq")
    print(f"  late readings routed to {topics.IOT_LATE_READINGS.name}: {late}; "
          f"dead letters of {topics.IOT_CDC_READINGS.name}: {dead}")
    windows = sum(r["reading_count"] for r in rows)
    proof.append(f"IoT        {totals.inserts} readings written ({totals.late} late, {totals.updates} corrections, "
                 f"{totals.deletes} deletions); served: the latest 1-min window of {len(rows)} sites ({windows} readings); "
                 f"{late} late routed, {dead} in the DLQ")
    return []


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
    by_minute: dict[str, dict[str, int]] = {}
    for r in rows:
        kind = r["dimension_value"].replace("USER_EVENT_TYPE_", "").lower()
        by_minute.setdefault(r["window_start"], {})[kind] = r["event_count"]
    kinds = ["page_view", "product_view", "click", "scroll", "search", "add_to_cart", "remove_from_cart",
             "checkout", "purchase"]
    print("  events per minute by type (1-minute tumbling windows, ClickHouse FINAL):")
    print("  " + f"{'minute (UTC)':<25}" + "".join(f"{k[:12]:>13}" for k in kinds))
    for minute, counts in sorted(by_minute.items()):
        print("  " + f"{minute:<25}" + "".join(f"{counts.get(k, 0):>13}" for k in kinds))
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
                        help="keep data and logs here (default: a temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="  log: %(name)s %(levelname)s %(message)s")

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

            step("topics (created from the topics module)")
            kafka.ensure_topics(bootstrap)
            for topic in topics.ALL:
                print(f"  {topic.name:<34} {topic.partitions} partitions  {topic.value_format}")

            step(f"publishing {SAMPLES_PER_TOPIC} sample events of each idle topic's contract and reading them back")
            failures += publish_every_topic(bootstrap)

            step("encoding and decoding the contracts that do not travel on a topic")
            failures += round_trip_other_contracts()

            step("sending a malformed event: it goes to the dead-letter topic with the reason")
            failures += dead_letter_demo(bootstrap)

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
            totals = simulate_devices(pipeline, args.iot_seconds, args.iot_rate)

            step("IoT: aggregates read back from ClickHouse through the analytics service")
            failures += show_iot_results(pipeline, totals, proof)

            if behaviour is not None:
                failures += run_behaviour(behaviour, args.behaviour_seconds, args.behaviour_users, proof)

            if args.dashboards_check:
                pages = ("iot", "behaviour") if behaviour is not None else ("iot",)
                step("dashboards: the live pages in headless Chromium while the stack runs")
                shots = args.screenshots or workspace_state_dir() / "demo" / "screenshots"
                lines, failed = dashboards_check.check(pipeline.analytics_url, shots,
                                                       say=lambda line: print("  " + line, flush=True), pages=pages)
                proof += lines
                failures += failed

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


if __name__ == "__main__":
    sys.exit(main())
