"""Ingestion service throughput and ack latency, next to a raw producer writing the same events.

    bazel run //tests/bench:ingest -- --help

A real Kafka broker and the real `//services/ingest` binary (its own process) are started here.
1. Raw baseline: this process produces the very records the service would write (the same
   serialized UserEvents with server_time, keys and headers) with the project's producer
   settings (idempotent, acks=all) and waits for every delivery report.
2. Service: pre-serialized PublishStream requests (batches of --batch-size) go over
   --streams concurrent streams; a batch's ack latency runs from handing it to gRPC to its
   acknowledgement, which the service sends only after Kafka confirmed every event of it.
Rates are acknowledged events per wall-clock second. Both runs share the machine with the
broker (and the service run with the client), so the ratio is what the service keeps of what
one Python producer achieves here. Nothing is asserted: figures are printed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import threading
import time

import grpc
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition

from datapipelines import kafka, topics
from datapipelines.ingest.v1 import ingest_service_pb2 as pb
from deploy.common.process import free_ports
from deploy.common.service import ServiceProcess
from deploy.kafka.broker import BrokerConfig, KafkaBroker
from services.ingest import api_keys, auth, sample_events, validation

TENANT = "bench"


def percentile(sorted_values: list, p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * (len(sorted_values) - 1)))))
    return sorted_values[k]


def build_requests(count: int, batch_size: int, prefix: str) -> list:
    """(batch_id, serialized PublishStreamRequest, number of events) for `count` events."""
    out = []
    for batch in sample_events.batches(count, batch_size, TENANT, prefix=prefix):
        out.append((batch.batch_id, pb.PublishStreamRequest(batch=batch).SerializeToString(), len(batch.envelopes)))
    return out


def build_raw_records(count: int, prefix: str) -> list:
    """What the service writes for those events: (key, value with server_time, headers)."""
    contract = validation.contracts()[sample_events.SCHEMA_NAME]
    server_time = validation.ServerTime(time.time())
    out = []
    for n in range(count):
        event = sample_events.user_event(n, prefix)
        value = event.SerializeToString() + server_time.suffix(contract.server_time_field)
        headers = list(contract.headers) + [("dp.ingest.tenant", TENANT.encode()), ("dp.ingest.producer", b"bench"),
                                            ("dp.ingest.event-id", event.event_id.encode())]
        out.append((contract.topic.key_of(event), value, headers))
    return out


def raw_producer(bootstrap: str, rows: list) -> tuple[float, float]:
    """(events per wall second, events per CPU second) of one producer with the project's settings."""
    producer = Producer(kafka.producer_config(bootstrap, **{"client.id": "bench-raw",
                                                             "queue.buffering.max.messages": 1_000_000}))
    delivered = [0]
    errors = [0]

    def on_delivery(err, _msg):
        if err is not None:
            errors[0] += 1
        delivered[0] += 1

    topic = topics.BEHAVIOUR_EVENTS.name
    cpu = process_cpu_seconds(os.getpid())
    began = time.perf_counter()
    for key, value, headers in rows:
        while True:
            try:
                producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    seconds = time.perf_counter() - began
    cpu = process_cpu_seconds(os.getpid()) - cpu
    if errors[0] or delivered[0] != len(rows):
        raise RuntimeError("raw producer: %d delivered, %d errors" % (delivered[0], errors[0]))
    return len(rows) / seconds, len(rows) / cpu


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (librdkafka's and gRPC's included)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_streams(target: str, key: str, requests: list, streams: int, window: int) -> tuple[float, list]:
    """Sends the requests over `streams` concurrent PublishStream calls; (events/s, ack latencies).

    Each stream keeps at most `window` batches unacknowledged, as a real client would: without
    that, gRPC's sender buffers batches ahead and their wait in the buffer counts as latency.
    """
    latencies: list = []
    accepted = [0]
    failures: list = []
    lock = threading.Lock()
    shares = [requests[i::streams] for i in range(streams)]

    def one_stream(share):
        channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
        call = channel.stream_stream("/datapipelines.ingest.v1.IngestService/PublishStream",
                                     request_serializer=None,
                                     response_deserializer=pb.PublishStreamResponse.FromString)
        sent_at = {}
        room = threading.Semaphore(window)

        def generate():
            for batch_id, data, _ in share:
                room.acquire()
                sent_at[batch_id] = time.perf_counter()
                yield data

        local = []
        count = 0
        try:
            for response in call(generate(), metadata=(("x-api-key", key),)):
                local.append(time.perf_counter() - sent_at[response.ack.batch_id])
                room.release()
                count += response.ack.accepted_count
                if response.ack.rejections:
                    failures.append("rejections in %s: %s" % (response.ack.batch_id, response.ack.rejections[0]))
        except grpc.RpcError as error:
            failures.append("%s: %s" % (error.code().name, error.details()))
        finally:
            channel.close()
        with lock:
            latencies.extend(local)
            accepted[0] += count

    threads = [threading.Thread(target=one_stream, args=(share,)) for share in shares]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    if failures:
        raise RuntimeError("service run failed: %s" % failures[:3])
    expected = sum(n for _, _, n in requests)
    if accepted[0] != expected:
        raise RuntimeError("service acknowledged %d of %d events" % (accepted[0], expected))
    return accepted[0] / seconds, latencies


def one_at_a_time(target: str, key: str, requests: list) -> list:
    """Ack latencies of unary Publish calls made one after another (no queueing in the service)."""
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)])
    # A PublishStreamRequest and a PublishRequest both carry the batch as field 1: same bytes.
    call = channel.unary_unary("/datapipelines.ingest.v1.IngestService/Publish", request_serializer=None,
                               response_deserializer=pb.PublishResponse.FromString)
    latencies = []
    try:
        for _, data, n in requests:
            began = time.perf_counter()
            response = call(data, metadata=(("x-api-key", key),), timeout=60)
            latencies.append(time.perf_counter() - began)
            if response.ack.accepted_count != n:
                raise RuntimeError("unary run: %d of %d accepted" % (response.ack.accepted_count, n))
    finally:
        channel.close()
    return sorted(latencies)


def topic_records(bootstrap: str) -> int:
    consumer = Consumer(kafka.consumer_config(bootstrap, "bench-count"))
    try:
        topic = topics.BEHAVIOUR_EVENTS.name
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions)
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events per measured run")
    parser.add_argument("--batch-size", type=int, default=500, help="events per PublishStream batch")
    parser.add_argument("--streams", type=int, default=2, help="concurrent PublishStream calls")
    parser.add_argument("--window", type=int, default=4, help="unacknowledged batches a client stream keeps in flight")
    parser.add_argument("--batches-per-stream", type=int, default=16,
                        help="the service's --max-batches-per-stream (unacknowledged batches in progress per stream)")
    args = parser.parse_args()

    print("ingest bench: %d events, batches of %d, %d streams with %d batches in flight each; %d CPUs on this machine"
          % (args.events, args.batch_size, args.streams, args.window, os.cpu_count() or 0))
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        port, controller, grpc_port, metrics_port = free_ports(4)
        broker = KafkaBroker(BrokerConfig(state_dir=tmp / "broker", port=port, controller_port=controller, heap="1g"))
        broker.start()
        try:
            bootstrap = broker.bootstrap
            kafka.ensure_topics(bootstrap, [topics.BEHAVIOUR_EVENTS, kafka.dead_letter_topic(topics.BEHAVIOUR_EVENTS)])
            plaintext, record = auth.new_key(TENANT, [sample_events.SCHEMA_NAME])
            keys_file = tmp / "api_keys.jsonl"
            api_keys.append(keys_file, record)

            print("preparing events ...", flush=True)
            raw_rows = build_raw_records(args.events, "raw")
            warmup = build_requests(min(20_000, args.events), args.batch_size, "warm")
            measured = build_requests(args.events, args.batch_size, "svc")

            raw_producer(bootstrap, raw_rows[: min(20_000, len(raw_rows))])  # warm-up: connections, topic metadata
            raw_rate, raw_per_cpu = raw_producer(bootstrap, raw_rows)
            print("raw producer:   %9.0f events/s  (%.0f events per CPU second of the producing process)"
                  % (raw_rate, raw_per_cpu), flush=True)

            service = ServiceProcess(
                "ingest",
                ["services/ingest/ingest", "--bootstrap", bootstrap, "--port", str(grpc_port),
                 "--metrics-port", str(metrics_port), "--api-keys-file", str(keys_file),
                 "--max-batch-events", str(max(1000, args.batch_size)),
                 "--max-batches-per-stream", str(args.batches_per_stream), "--log-level", "WARNING"],
                tmp / "ingest.log", health_url="http://127.0.0.1:%d/metrics" % metrics_port)
            with service:
                target = "127.0.0.1:%d" % grpc_port
                run_streams(target, plaintext, warmup, args.streams, args.window)
                cpu = process_cpu_seconds(service.pid)
                rate, latencies = run_streams(target, plaintext, measured, args.streams, args.window)
                service_per_cpu = args.events / (process_cpu_seconds(service.pid) - cpu)
                unloaded = one_at_a_time(target, plaintext, build_requests(50 * args.batch_size, args.batch_size, "one"))
            latencies.sort()
            print("ingest service: %9.0f events/s  (%.0f events per CPU second of the service process); "
                  "acknowledged after Kafka confirmed" % (rate, service_per_cpu))
            print("ratio service/raw: %.2f wall-clock, %.2f per CPU second" % (rate / raw_rate, service_per_cpu / raw_per_cpu))
            print("ack latency under load, per batch of %d: p50 %.1f ms  p95 %.1f ms  p99 %.1f ms  max %.1f ms  (mean %.1f ms, %d batches)"
                  % (args.batch_size, 1000 * percentile(latencies, 50), 1000 * percentile(latencies, 95),
                     1000 * percentile(latencies, 99), 1000 * latencies[-1], 1000 * statistics.mean(latencies),
                     len(latencies)))
            print("ack latency, one batch of %d at a time (Publish): p50 %.1f ms  p95 %.1f ms  p99 %.1f ms  (%d calls)"
                  % (args.batch_size, 1000 * percentile(unloaded, 50), 1000 * percentile(unloaded, 95),
                     1000 * percentile(unloaded, 99), len(unloaded)))
            total = topic_records(bootstrap)
            expected = 2 * min(20_000, args.events) + 2 * args.events + 50 * args.batch_size
            print("records in %s: %d (expected %d: warm-ups + raw + service runs)" % (topics.BEHAVIOUR_EVENTS.name, total, expected))
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
