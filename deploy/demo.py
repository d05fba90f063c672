"""The project's demo: what runs today, end to end, on this machine.

    bazel run //deploy:demo                 # starts its own Kafka broker on free ports
    bazel run //deploy:demo -- --bootstrap 127.0.0.1:9092   # use a running broker instead

Steps (each printed as it happens):
  1. start a real Apache Kafka broker (KRaft, single node) unless --bootstrap is given;
  2. create every topic of the topics module;
  3. publish sample events of every contract that travels on a topic, read them back and
     check they are identical, carry their contract headers and keep their keys;
  4. encode and decode every other contract message (rows, requests, marts);
  5. send a malformed record and show it in the dead-letter topic with its reason.
Exits non-zero when any check fails. It grows as the pipelines land.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from datapipelines import catalog, kafka, records, samples, topics
from deploy.common.process import free_ports
from deploy.kafka.broker import BrokerConfig, KafkaBroker

SAMPLES_PER_TOPIC = 5


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
    for topic in topics.ALL:
        if topic.value_format != topics.PROTOBUF:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("DP_KAFKA_BOOTSTRAP"),
                        help="use this running broker (env DP_KAFKA_BOOTSTRAP) instead of starting one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="  log: %(name)s %(levelname)s %(message)s")

    started = time.monotonic()
    broker = None
    with tempfile.TemporaryDirectory(prefix="dp-demo-") as state:
        try:
            if args.bootstrap:
                bootstrap = args.bootstrap
                step(f"using the Kafka broker at {bootstrap}")
            else:
                step("starting a real Apache Kafka broker (KRaft, single node) on free loopback ports")
                port, controller_port = free_ports(2)
                broker = KafkaBroker(BrokerConfig(state_dir=pathlib.Path(state),
                                                  port=port, controller_port=controller_port))
                broker.start()
                bootstrap = broker.bootstrap
                print(f"  Kafka {broker.version} listening on {bootstrap} (pid {broker.pid}, "
                      f"started in {broker.start_seconds:.1f} s)")

            step("creating topics from the topics module")
            created = kafka.ensure_topics(bootstrap)
            for topic in topics.ALL:
                flag = "created" if topic.name in created else "exists"
                print(f"  {topic.name:<28} {topic.partitions} partitions  {topic.value_format:<13} {flag}")

            step(f"publishing {SAMPLES_PER_TOPIC} sample events of each topic's contract and reading them back")
            failures = publish_every_topic(bootstrap)

            step("encoding and decoding the contracts that do not travel on a topic")
            failures += round_trip_other_contracts()

            step("sending a malformed event: it goes to the dead-letter topic with the reason")
            failures += dead_letter_demo(bootstrap)
        finally:
            if broker is not None:
                code = broker.stop()
                print(f"\n  Kafka broker stopped (exit {code})")

    elapsed = time.monotonic() - started
    if failures:
        print(f"\ndemo FAILED in {elapsed:.1f} s: {', '.join(failures)}")
        return 1
    print(f"\ndemo finished in {elapsed:.1f} s: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
