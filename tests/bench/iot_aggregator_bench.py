"""IoT aggregator throughput: the pure transform, and the exactly-once Kafka round trip.

    bazel run //tests/bench:iot_aggregator -- --help

1. Pure transform, one thread, no Kafka: Debezium envelopes (generated, ~700 bytes each, like
   the connector writes them) are decoded and applied, and every batch is flushed into
   aggregate tuples. Rates are per CPU second of this process (`time.process_time`), so
   they are per core whatever else the machine runs; wall-clock rates are printed too.
2. Kafka round trip through a real broker started here: the same envelopes in
   iot.cdc.readings, first read by a bare read_committed consumer (the baseline: what reading
   alone costs in this process), then processed by the aggregator's exactly-once loop
   (decode, windows, aggregates + changelog + offsets in one transaction per batch) until its
   committed offsets reach the end. The ratio says what share of the raw read rate the whole
   job keeps.

Nothing is asserted: figures are printed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from datapipelines import kafka, topics
from deploy.kafka.broker import BrokerConfig, KafkaBroker
from jobs.iot.aggregator import config as aggregator_config
from jobs.iot.aggregator import envelope, io, ops, testdata, transform

T0 = testdata.T0
SECOND = testdata.SECOND


def envelopes(count: int, devices: int, devices_per_site: int, rate_per_second: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of `count` inserts, `rate_per_second` readings per second of event time."""
    out = []
    step = SECOND // rate_per_second
    for i in range(count):
        device = i % devices
        site = f"site-{device // devices_per_site:04d}"
        row = testdata.row(i + 1, f"dev-{device:06d}", site, T0 + i * step, 15 + (i % 200) / 10, 40 + (i % 50) / 2,
                           990 + (i % 40), None if i % 9 == 0 else 50 + (i % 50))
        out.append((testdata.key(site), testdata.encode(testdata.envelope("c", 1000 + i, after=row))))
    return out


def pure_transform(values: list[bytes], batch: int) -> dict:
    # Warm up (imports, caches) outside the measurement.
    envelope.decode_batch(values[:batch])
    figures = {}
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(values), 20_000):
        for v in values[start:start + 20_000]:
            json.loads(v)
    figures["json_loads_only"] = (len(values) / (time.process_time() - cpu), len(values) / (time.perf_counter() - wall))

    cpu, wall = time.process_time(), time.perf_counter()
    decoded = []
    for start in range(0, len(values), batch):
        decoded.extend(envelope.decode_batch(values[start:start + batch]))
    figures["decode"] = (len(values) / (time.process_time() - cpu), len(values) / (time.perf_counter() - wall))

    state = transform.PartitionState(transform.Settings())
    emitted = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(decoded), batch):
        for offset in range(start, min(start + batch, len(decoded))):
            state.apply(offset, decoded[offset])
        aggregates, _, changelog = state.flush()
        emitted += len(aggregates)
    figures["windows"] = (len(values) / (time.process_time() - cpu), len(values) / (time.perf_counter() - wall))

    state = transform.PartitionState(transform.Settings())
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, len(values), batch):
        chunk = envelope.decode_batch(values[start:start + batch])
        for i, change in enumerate(chunk):
            state.apply(start + i, change)
        state.flush()
    figures["transform"] = (len(values) / (time.process_time() - cpu), len(values) / (time.perf_counter() - wall))
    figures["aggregates_per_reading"] = emitted / len(values)
    return figures


def consume_baseline(bootstrap: str, expected: int) -> tuple[float, float]:
    consumer = Consumer(kafka.consumer_config(bootstrap, "bench-baseline"))
    consumer.assign([TopicPartition(topics.IOT_CDC_READINGS.name, p, 0)
                     for p in range(topics.IOT_CDC_READINGS.partitions)])
    seen = 0
    cpu, wall = time.process_time(), time.perf_counter()
    while seen < expected:
        for message in consumer.consume(num_messages=5000, timeout=1.0):
            if message.error() is None:
                message.value()
                seen += 1
    result = (seen / (time.process_time() - cpu), seen / (time.perf_counter() - wall))
    consumer.close()
    return result


def aggregator_round_trip(bootstrap: str, expected: int, batch: int) -> tuple[float, float, int]:
    config = aggregator_config.load(["--bootstrap", bootstrap, "--group-id", "bench-aggregator", "--http-port", "0",
                                     "--batch-size", str(batch), "--log-level", "WARNING"], environ={})
    metrics, health = ops.Metrics(), ops.Health()
    job = io.AggregatorJob(config, metrics, health)
    runner = threading.Thread(target=job.run, daemon=True)
    watcher = Consumer(kafka.consumer_config(bootstrap, "bench-aggregator"))
    parts = [TopicPartition(topics.IOT_CDC_READINGS.name, p) for p in range(topics.IOT_CDC_READINGS.partitions)]
    cpu, wall = time.process_time(), time.perf_counter()
    runner.start()
    while True:
        done = sum(max(tp.offset, 0) for tp in watcher.committed(parts, timeout=10))
        if done >= expected or not runner.is_alive():
            break
        time.sleep(0.05)
    cpu_used, wall_used = time.process_time() - cpu, time.perf_counter() - wall
    job.stop.set()
    runner.join(60)
    watcher.close()
    transactions = int(metrics.transactions.labels("commit")._value.get())
    del job  # its producer and consumers go before the broker does
    return expected / cpu_used, expected / wall_used, transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=200_000, help="envelopes for the pure transform [200000]")
    parser.add_argument("--kafka-readings", type=int, default=100_000, help="envelopes through Kafka [100000]")
    parser.add_argument("--devices", type=int, default=1000, help="distinct devices [1000]")
    parser.add_argument("--devices-per-site", type=int, default=10, help="devices per site [10]")
    parser.add_argument("--rate", type=int, default=1000, help="readings per second of event time [1000]")
    parser.add_argument("--batch", type=int, default=5000, help="records per batch / transaction [5000]")
    parser.add_argument("--no-kafka", action="store_true", help="only the pure transform")
    args = parser.parse_args()

    data = envelopes(max(args.readings, args.kafka_readings), args.devices, args.devices_per_site, args.rate)
    values = [value for _, value in data[:args.readings]]
    print(f"envelopes: {args.readings} x ~{sum(map(len, values[:1000])) // 1000} bytes, {args.devices} devices, "
          f"{args.devices // args.devices_per_site} sites, {args.rate}/s event time, batch {args.batch}")
    figures = pure_transform(values, args.batch)
    print("pure transform (one thread)             per CPU second   per wall second")
    for name, label in (("json_loads_only", "json.loads of the envelope only"),
                        ("decode", "decode (Arrow batch + validation)"),
                        ("windows", "windows + flush (decoded input)"),
                        ("transform", "decode + windows + flush")):
        cpu_rate, wall_rate = figures[name]
        print(f"  {label:<38} {cpu_rate:>12,.0f}/s   {wall_rate:>12,.0f}/s")
    print(f"  aggregates emitted per reading: {figures['aggregates_per_reading']:.2f}")
    if args.no_kafka:
        return

    with tempfile.TemporaryDirectory(prefix="iot-aggregator-bench-") as state_dir:
        from tests.fixtures.kafka_broker import free_ports

        port, controller = free_ports(2)
        broker = KafkaBroker(BrokerConfig(state_dir=pathlib.Path(state_dir), port=port, controller_port=controller))
        broker.start()
        try:
            bootstrap = broker.bootstrap
            kafka.ensure_topics(bootstrap)
            producer = Producer(kafka.producer_config(bootstrap, partitioner="murmur2_random"))
            for key, value in data[:args.kafka_readings]:
                while True:
                    try:
                        producer.produce(topics.IOT_CDC_READINGS.name, key=key, value=value)
                        break
                    except BufferError:
                        producer.poll(0.1)
            producer.flush(120)
            base_cpu, base_wall = consume_baseline(bootstrap, args.kafka_readings)
            agg_cpu, agg_wall, transactions = aggregator_round_trip(bootstrap, args.kafka_readings, args.batch)
        finally:
            broker.stop()
    print(f"Kafka round trip ({args.kafka_readings} records, real broker on this machine)   per CPU s   per wall s")
    print(f"  raw read_committed consume (baseline)      {base_cpu:>12,.0f}/s {base_wall:>12,.0f}/s")
    print(f"  aggregator, exactly once ({transactions} txns)      {agg_cpu:>12,.0f}/s {agg_wall:>12,.0f}/s")
    print(f"  ratio aggregator / baseline                {agg_cpu / base_cpu:>12.3f}  {agg_wall / base_wall:>12.3f}")


if __name__ == "__main__":
    main()
