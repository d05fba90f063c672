"""Behaviour pipeline benchmark: Flink job events/s per core, gateway -> ClickHouse latency p95.

    bazel run //tests/bench:behaviour -- --help
    bazel run //tests/bench:behaviour -- --events 300000 --probe-seconds 120

Starts its own Kafka broker (unless --bootstrap), then:

1. Flink job throughput (--events; 0 skips). N UserEvents with contract headers are produced
   straight into behaviour.events.v1 (the generator of //jobs/behaviour/metrics:bench), then the
   job runs bounded on the in-process mini-cluster. CPU seconds of the job's process tree
   (Python driver + JVM) are sampled with psutil; events per CPU second = events/s per core.
   Baseline, same run, same records: one Python process with confluent-kafka reading the topic
   and parsing every UserEvent (no windows, no state, no output), events per CPU second.
2. Latency (--probe-seconds; 0 skips). The whole pipeline runs (deploy/pipelines/behaviour.py):
   the gateway emulates --users at --rate events/s while a real WebSocket client sends one probe
   event every --probe-interval-ms, each with its own page path. A probe is served when the
   analytics service returns its 1-minute tumbling PAGE_PATH row (polled every --poll-ms).
   Windows are only published once closed, so the figures are:
     send -> served            what a user of the dashboard sees (includes waiting for the window)
     close -> served           from the earliest moment the window may close (window end + allowed
                               lateness, wall clock) to served: Flink, its checkpoint-bound Kafka
                               transaction, the analytics sink and the query
   Baseline, same run: send -> acknowledged by the gateway (the event is in Kafka).

Nothing is asserted: figures are printed with the issue's targets where it has one.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from websockets.sync.client import connect

from datapipelines import kafka, topics
from datapipelines.behaviour.v1 import user_event_pb2
from deploy.common import process
from deploy.common.service import runfile
from deploy.pipelines.behaviour import FLINK_JOB_BINARY, BehaviourPipeline, BehaviourPipelineConfig
from jobs.behaviour.metrics.bench import sample_events
from tests.fixtures.kafka_broker import start_broker

FLINK_TARGET_PER_CORE = 50_000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class TreeCpu:
    """CPU seconds of a process and all its descendants, sampled (a descendant that exits keeps its last sample)."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for proc in procs:
            try:
                times = proc.cpu_times()
                self.seen[proc.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return sum(self.seen.values())

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.sample()

    def start(self) -> "TreeCpu":
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values())


def produce_events(bootstrap: str, count: int) -> float:
    producer = Producer(kafka.producer_config(bootstrap, **{"linger.ms": 20, "batch.num.messages": 10000}))
    began = time.monotonic()
    for event in sample_events(count, 2_000, 200):
        kafka.produce(producer, topics.BEHAVIOUR_EVENTS, event)
    producer.flush(300)
    return time.monotonic() - began


def python_consumer_baseline(bootstrap: str, count: int) -> tuple[float, float]:
    """(events per CPU second, wall seconds) of a Python consumer parsing every event."""
    consumer = Consumer(kafka.consumer_config(bootstrap, "bench-baseline-" + uuid.uuid4().hex))
    name = topics.BEHAVIOUR_EVENTS.name
    partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
    consumer.assign([TopicPartition(name, p, 0) for p in partitions])
    cpu0, began, parsed = time.process_time(), time.monotonic(), 0
    while parsed < count and time.monotonic() - began < 300:
        for record in consumer.consume(10_000, timeout=1.0):
            if record.error() is None:
                user_event_pb2.UserEvent.FromString(record.value())
                parsed += 1
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - began
    consumer.close()
    return parsed / cpu if cpu else float("nan"), wall


def flink_throughput(bootstrap: str, scratch: pathlib.Path, count: int, parallelism: int) -> None:
    print(f"\n== Flink job throughput: {count:,} events", flush=True)
    kafka.ensure_topics(bootstrap, [topics.BEHAVIOUR_EVENTS, topics.BEHAVIOUR_LATE_EVENTS, topics.BEHAVIOUR_METRICS,
                                    topics.BEHAVIOUR_SESSIONS])
    seconds = produce_events(bootstrap, count)
    print(f"  produced into {topics.BEHAVIOUR_EVENTS.name} in {seconds:.1f} s", flush=True)

    log_path = scratch / "flink-bench.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [str(runfile(FLINK_JOB_BINARY)), "--bootstrap", bootstrap, "--bounded", "--startup-mode",
               "earliest-offset", "--state-dir", str(scratch / "flink"), "--parallelism", str(parallelism),
               "--checkpoint-interval-seconds", "5", "--group-id", "bench", "--transactional-id-prefix", "bench"]
    began = time.monotonic()
    with open(log_path, "wb") as log:
        job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                               preexec_fn=process.die_with_parent())
    cpu = TreeCpu(job.pid).start()
    cpu_at_submit, submitted = None, None
    while job.poll() is None:
        if submitted is None and "event=job_submitted" in log_path.read_text(errors="replace"):
            submitted, cpu_at_submit = time.monotonic(), cpu.sample()
        time.sleep(0.25)
    total_cpu = cpu.stop()
    ended = time.monotonic()
    if job.returncode != 0 or submitted is None:
        print(f"  the job failed ({job.returncode}):\n{process.tail(log_path, 30)}")
        return
    text = log_path.read_text(errors="replace")
    finished = re.search(r"event=job_finished .* seconds=([0-9.]+)", text)
    run_cpu = total_cpu - cpu_at_submit
    run_seconds = ended - submitted
    per_core = count / run_cpu
    print(f"  job process: {ended - began:.1f} s wall (start-up and planning {submitted - began:.1f} s), "
          f"{total_cpu:.1f} CPU s (running {run_cpu:.1f} CPU s over {run_seconds:.1f} s)"
          + (f"; job reports {float(finished.group(1)):.1f} s" if finished else ""))
    print(f"  Flink job:            {count / run_seconds:>10,.0f} events/s while running, "
          f"{per_core:>10,.0f} events per CPU second (per core; target {FLINK_TARGET_PER_CORE:,}: "
          f"{'met' if per_core >= FLINK_TARGET_PER_CORE else 'missed'})")
    baseline, wall = python_consumer_baseline(bootstrap, count)
    print(f"  baseline (Python consumer, parse only): {count / wall:>10,.0f} events/s, {baseline:>10,.0f} events "
          f"per CPU second; Flink job / baseline per core = {per_core / baseline:.2f}")


def latency(bootstrap: str, scratch: pathlib.Path, args) -> None:
    print(f"\n== gateway -> ClickHouse latency: {args.users} emulated users at {args.rate:g} events/s, "
          f"a probe every {args.probe_interval_ms} ms for {args.probe_seconds:g} s", flush=True)
    config = BehaviourPipelineConfig(state_dir=scratch / "pipeline", bootstrap=bootstrap, users=args.users,
                                     rate=args.rate, allowed_lateness_seconds=args.allowed_lateness_seconds,
                                     max_lateness_seconds=min(2.0, args.allowed_lateness_seconds / 2),
                                     checkpoint_interval_seconds=args.checkpoint_interval_seconds,
                                     parallelism=args.parallelism)
    with BehaviourPipeline(config, say=lambda line: print("  " + line, flush=True)) as pipeline:
        prefix = "/probe/" + uuid.uuid4().hex[:6]
        sent, acked, served = {}, {}, {}
        path_of = {}

        def take(reply: dict) -> None:
            if reply.get("type") == "ack":
                acked[path_of[reply["event_id"]]] = time.time()

        stop_polling = threading.Event()
        since = int(time.time() * 1000) - 120_000

        def poll() -> None:
            # One query every --poll-ms from the first probe on: a probe is served at the first answer showing it.
            while not stop_polling.is_set():
                try:
                    body = pipeline.query("/api/v1/behaviour/metrics", dimension="page_path", window_kind="tumbling",
                                          limit=10000,
                                          **{"from": _iso(since), "to": _iso(int(time.time() * 1000) + 60_000)})
                except OSError as exc:  # a slow answer on a loaded machine: ask again
                    print(f"  query failed ({exc}); polling on", flush=True)
                    continue
                now = time.time()
                for row in body["rows"]:
                    path = row["dimension_value"]
                    if path.startswith(prefix) and path not in served:
                        served[path] = now
                stop_polling.wait(args.poll_ms / 1000)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        with connect(pipeline.websocket_url) as ws:
            ws.recv(timeout=10)  # hello
            began = time.monotonic()
            n = 0
            while time.monotonic() - began < args.probe_seconds:
                n += 1
                path = f"{prefix}/{n}"
                event_id = f"probe-{uuid.uuid4().hex}"
                path_of[event_id] = path
                ms = int(time.time() * 1000)
                ws.send(json.dumps({"event_id": event_id, "event_type": "page_view", "session_id": f"probe-{n}",
                                    "anonymous_id": "probe", "client_time": ms, "page": {"path": path},
                                    "device": {"category": "desktop"}}))
                sent[path] = (time.time(), ms)
                deadline = time.monotonic() + args.probe_interval_ms / 1000
                while time.monotonic() < deadline:
                    try:
                        take(json.loads(ws.recv(timeout=max(0.001, deadline - time.monotonic()))))
                    except TimeoutError:
                        break
            while len(acked) < len(sent):
                take(json.loads(ws.recv(timeout=30)))
        ack_latency = [acked[path] - sent[path][0] for path in sent]
        print(f"  {len(sent)} probes sent and acknowledged; waiting for their windows to be served", flush=True)
        wait_until = time.monotonic() + 60 + args.allowed_lateness_seconds + 60
        while len(served) < len(sent) and time.monotonic() < wait_until and poller.is_alive():
            time.sleep(0.5)
        stop_polling.set()
        poller.join()
        lateness = args.allowed_lateness_seconds
        send_to_served, close_to_served = [], []
        for path, at in served.items():
            sent_at, ms = sent[path]
            window_end = (ms // 60_000 + 1) * 60
            send_to_served.append(at - sent_at)
            close_to_served.append(at - (window_end + lateness))
        print(f"  served {len(served)}/{len(sent)} probes (allowed lateness {lateness:g} s, checkpoints every "
              f"{args.checkpoint_interval_seconds:g} s, analytics batches <= {config.analytics_batch_max_ms} ms)")
        for name, values in (("send -> served", send_to_served), ("close -> served", close_to_served),
                             ("baseline: send -> ack (in Kafka)", ack_latency)):
            print(f"  {name:<33} p50 {percentile(values, 50):7.2f} s   p95 {percentile(values, 95):7.2f} s   "
                  f"max {max(values) if values else float('nan'):7.2f} s")
        if close_to_served and ack_latency:
            print(f"  close -> served p95 / ack p95 = {percentile(close_to_served, 95) / percentile(ack_latency, 95):.1f}")


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + "Z"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events for the Flink throughput run (0 skips)")
    parser.add_argument("--parallelism", type=int, default=1, help="Flink parallelism (2 cores here)")
    parser.add_argument("--probe-seconds", type=float, default=120.0, help="latency probing time (0 skips)")
    parser.add_argument("--probe-interval-ms", type=int, default=2000)
    parser.add_argument("--poll-ms", type=int, default=250)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50.0, help="emulated events/s during the latency run")
    parser.add_argument("--allowed-lateness-seconds", type=float, default=5.0)
    parser.add_argument("--checkpoint-interval-seconds", type=float, default=2.0)
    parser.add_argument("--bootstrap", help="use this broker instead of starting one (its behaviour topics must be empty)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="behaviour-bench-") as scratch_name:
        scratch = pathlib.Path(scratch_name)
        broker = None
        bootstrap = args.bootstrap
        if not bootstrap:
            broker = start_broker(scratch / "kafka")
            bootstrap = broker.bootstrap
            print(f"kafka {broker.version} on {bootstrap}")
        try:
            if args.events:
                flink_throughput(bootstrap, scratch, args.events, args.parallelism)
            if args.probe_seconds:
                if broker and args.events:  # the latency run wants empty topics: a fresh broker
                    broker.stop()
                    broker = start_broker(scratch / "kafka-latency")
                    bootstrap = broker.bootstrap
                latency(bootstrap, scratch, args)
        finally:
            if broker:
                broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
