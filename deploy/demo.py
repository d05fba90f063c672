"""The project's demo: what runs today, end to end, on this machine.

    bazel run //deploy:demo
    bazel run //deploy:demo -- --iot-seconds 60 --iot-rate 1000

Steps (each printed as it happens):
  1. start the IoT pipeline on free loopback ports: Kafka (KRaft), PostgreSQL, Kafka Connect
     with Debezium (connector registered), the analytics service (ClickHouse engine, chdb) and
     the windowed aggregator, each waited on through its health check;
  2. create every topic of the topics module;
  3. publish sample events of the contracts that travel on topics no running component reads,
     read them back and check they are identical, carry their contract headers and keys;
  4. encode and decode every other contract message;
  5. send a malformed record and show it in the dead-letter topic with its reason;
  6. IoT: simulated devices write readings (with late ones, corrections and deletions) into
     PostgreSQL; Debezium streams the changes, the aggregator windows them, the analytics
     service stores them; the demo prints aggregate rows read back from ClickHouse.
Exits non-zero when any check fails. It grows as the pipelines land.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import pathlib
import sys
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from datapipelines import catalog, kafka, records, samples, topics
from deploy.pipelines.iot import IotPipeline, IotPipelineConfig
from services.iot_simulator.config import SimulatorConfig
from services.iot_simulator.model import Fleet, TickCounts
from services.iot_simulator.writer import ReadingsWriter

SAMPLES_PER_TOPIC = 5
PIPELINE_TOPICS = (
    topics.IOT_CDC_READINGS,
    topics.IOT_AGGREGATES,
    topics.IOT_LATE_READINGS,
    # The analytics service also consumes these.
    topics.BEHAVIOUR_METRICS,
    topics.BEHAVIOUR_SESSIONS,
)


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


def show_iot_results(pipeline: IotPipeline) -> list[str]:
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
    return []


def end_offsets(bootstrap: str, topic: str) -> int:
    consumer = Consumer(kafka.consumer_config(bootstrap, "demo-offsets"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions)
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iot-seconds", type=float, default=float(os.environ.get("DP_DEMO_IOT_SECONDS", 20)),
                        help="how long the simulated devices write (env DP_DEMO_IOT_SECONDS)")
    parser.add_argument("--iot-rate", type=float, default=float(os.environ.get("DP_DEMO_IOT_RATE", 300)),
                        help="changes per second the devices write (env DP_DEMO_IOT_RATE)")
    parser.add_argument("--state-dir", type=pathlib.Path, default=None,
                        help="keep data and logs here (default: a temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="  log: %(name)s %(levelname)s %(message)s")

    started = time.monotonic()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dp-demo-") as temporary:
        state = args.state_dir or pathlib.Path(temporary)
        step("starting the IoT pipeline: Kafka, PostgreSQL, Kafka Connect + Debezium, analytics service, aggregator")
        pipeline = IotPipeline(IotPipelineConfig(state_dir=state), say=lambda line: print("  " + line, flush=True))
        try:
            pipeline.start()
            print("  started in " + ", ".join(f"{k} {v:.1f} s" for k, v in pipeline.timings.items()))
            bootstrap = pipeline.bootstrap

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

            step(f"IoT: simulated devices write into PostgreSQL for {args.iot_seconds:.0f} s at {args.iot_rate:.0f} changes/s")
            simulate_devices(pipeline, args.iot_seconds, args.iot_rate)

            step("IoT: aggregates read back from ClickHouse through the analytics service")
            failures += show_iot_results(pipeline)
            print(f"  logs: {pipeline.logs_dir}" + ("" if args.state_dir else " (removed at exit; keep with --state-dir)"))
        finally:
            step("stopping")
            pipeline.stop()

    elapsed = time.monotonic() - started
    if failures:
        print(f"\ndemo FAILED in {elapsed:.1f} s: {', '.join(failures)}")
        return 1
    print(f"\ndemo finished in {elapsed:.1f} s: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
