"""Throughput of the behaviour job: N user events through Kafka -> Flink SQL -> Kafka.

    bazel run //jobs/behaviour/metrics:bench -- --events 1000000 --parallelism 2

Starts its own Kafka broker (unless --bootstrap), produces N UserEvents with contract headers,
runs the job bounded (it stops at the offsets that were the latest when it started) on the
in-process mini-cluster and prints start-up time, processing time and events/s. The job is the
same binary as `bazel run //jobs/behaviour/metrics`, started as a child process.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from datapipelines import kafka, topics
from datapipelines.behaviour.v1 import user_event_pb2
from deploy.common import process

def _job_binary() -> pathlib.Path:
    """The job's py_binary, next to this file in the runfiles tree (it is in this target's data)."""
    job = pathlib.Path(__file__).parent / "metrics"
    if not job.exists():
        raise SystemExit(f"{job} is missing: run `bazel run //jobs/behaviour/metrics:bench`")
    return job


LATE_TOPIC = topics.BEHAVIOUR_LATE_EVENTS.name
BASE_MS = 1_767_225_600_000
TYPES = [1, 1, 1, 1, 2, 2, 3, 4, 6, 8, 9]


def sample_events(count: int, users: int, per_second: int, seed: int = 5):
    rng = random.Random(seed)
    template = user_event_pb2.UserEvent(user_agent="bench")
    template.device.category = 1
    template.attributes["ab.variant"] = "B"
    for n in range(count):
        event = user_event_pb2.UserEvent()
        event.CopyFrom(template)
        user = rng.randrange(users)
        event.event_id = f"bench-{n}"
        event.user_id = f"u{user}" if user % 4 else ""
        event.anonymous_id = f"anon-{user}"
        event.session_id = f"s-{user}-{n // (per_second * 1800)}"
        event.event_type = TYPES[n % len(TYPES)]
        event.page.path = f"/p/{rng.randrange(50)}"
        event.client_time.FromMilliseconds(BASE_MS + n * 1000 // per_second - rng.randrange(2000))
        yield event


def _end_offsets(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets"})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in metadata.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high
        return total
    finally:
        consumer.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--events-per-second", type=int, default=200, help="event-time density")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one (its topics must be empty)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="behaviour-bench-") as scratch:
        scratch_dir = pathlib.Path(scratch)
        broker = None
        bootstrap = args.bootstrap
        if not bootstrap:
            from tests.fixtures.kafka_broker import start_broker

            broker = start_broker(scratch_dir / "kafka")
            bootstrap = broker.bootstrap
        try:
            kafka.ensure_topics(bootstrap, [topics.BEHAVIOUR_EVENTS, topics.BEHAVIOUR_METRICS, topics.BEHAVIOUR_SESSIONS])
            admin = AdminClient({"bootstrap.servers": bootstrap})
            if LATE_TOPIC not in admin.list_topics(timeout=10).topics:
                admin.create_topics([NewTopic(LATE_TOPIC, 1, 1)])[LATE_TOPIC].result(30)

            producer = Producer(kafka.producer_config(bootstrap, **{"linger.ms": 20, "batch.num.messages": 10000}))
            started = time.monotonic()
            for event in sample_events(args.events, args.users, args.events_per_second):
                kafka.produce(producer, topics.BEHAVIOUR_EVENTS, event)
            producer.flush(120)
            produce_seconds = time.monotonic() - started
            in_topic = _end_offsets(bootstrap, topics.BEHAVIOUR_EVENTS.name)
            print(f"produced {args.events} events in {produce_seconds:.1f}s "
                  f"({args.events / produce_seconds:,.0f}/s); topic holds {in_topic}", flush=True)

            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the job's own set only
            command = [
                str(_job_binary().absolute()), "--bootstrap", bootstrap, "--bounded", "--startup-mode", "earliest-offset",
                "--state-dir", str(scratch_dir / "state"), "--parallelism", str(args.parallelism),
                "--checkpoint-interval-seconds", "5", "--group-id", "bench", "--transactional-id-prefix", "bench",
            ]
            started = time.monotonic()
            result = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=process.die_with_parent())
            total_seconds = time.monotonic() - started
            if result.returncode != 0:
                print(result.stdout[-3000:], result.stderr[-3000:], file=sys.stderr)
                return 1
            setup = re.search(r"setup_seconds=([0-9.]+)", result.stderr)
            finished = re.search(r"event=job_finished .* seconds=([0-9.]+)", result.stderr)
            setup_seconds = float(setup.group(1)) if setup else float("nan")
            job_seconds = float(finished.group(1)) if finished else total_seconds
            run_seconds = job_seconds - setup_seconds
            outputs = {t: _end_offsets(bootstrap, t) for t in
                       (topics.BEHAVIOUR_METRICS.name, topics.BEHAVIOUR_SESSIONS.name, LATE_TOPIC)}
            print(f"job: process {total_seconds:.1f}s = python+JVM start and planning {setup_seconds:.1f}s "
                  f"+ run {run_seconds:.1f}s (parallelism {args.parallelism})")
            print(f"throughput: {in_topic / run_seconds:,.0f} events/s while running; "
                  f"{in_topic / total_seconds:,.0f} events/s including start-up")
            print("output offsets (incl. transaction markers): " + ", ".join(f"{t}={n}" for t, n in outputs.items()))
        finally:
            if broker:
                broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
