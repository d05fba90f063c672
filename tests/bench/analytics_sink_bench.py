"""Analytics sink insert path vs a raw chdb insert, and named-query latency.

    bazel run //tests/bench:analytics_sink
    bazel run //tests/bench:analytics_sink -- --rows 1000000 --batch-size 100000

Figures, all in this one process on one chdb path (a fresh temporary directory):
  sink insert path     records as they come off Kafka (serialized ReadingAggregate bytes)
                       -> length-delimited framing -> ClickHouse Protobuf input format
                       -> Null ingest table -> materialized view -> ReplacingMergeTree table
  sink incl. decode    the same plus records.decode and the contract checks per record
                       (what the consumer loop adds in Python, Kafka itself excluded)
  raw chdb baseline    the same rows already in Arrow columns (built outside the clock),
                       serialized to ArrowStream and inserted straight into the table
  named queries        each query of the HTTP API, validated, run and JSON-shaped
Prints figures only; the test suite asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import statistics
import sys
import tempfile
import time

import pyarrow as pa

from datapipelines import records, topics
from datapipelines.iot.v1 import reading_aggregate_pb2
from services.analytics import migrations, protobuf_schema, queries, sink
from services.analytics.store import ChdbStore

TARGET = sink.IOT_AGGREGATES
DEVICES = 5000
SITES = 50


def make_values(rows: int) -> list:
    """`rows` serialized aggregates: DEVICES devices, consecutive 1-minute windows, versions 1-3."""
    template = reading_aggregate_pb2.ReadingAggregate(scope=1, window_kind=1, reading_count=60, late_reading_count=1,
                                                      window_closed=False)
    for name in ("temperature_celsius", "humidity_percent", "pressure_hpa", "battery_percent"):
        getattr(template, name).CopyFrom(reading_aggregate_pb2.MetricStats(count=60, min=1.5, max=9.5, mean=5.0,
                                                                           sum=300.0))
    out = []
    base = 1_700_000_040
    for i in range(rows):
        device = i % DEVICES
        minute = i // (DEVICES * 3)
        template.site_id = "site-%02d" % (device % SITES)
        # One record in 100 is a site aggregate (the sites/latest query needs some).
        template.scope = 2 if device % 100 == 0 else 1
        if template.scope == 2:
            template.site_id = "site-%02d" % (device // 100 % SITES)
        template.key_id = template.site_id if template.scope == 2 else "device-%05d" % device
        template.version = (i // DEVICES) % 3 + 1
        template.window_start_time.seconds = base + 60 * minute
        template.window_end_time.seconds = base + 60 * minute + 60
        template.emit_time.seconds = base + 60 * minute + 61
        template.temperature_celsius.max = 9.5 + device % 17
        out.append(template.SerializeToString())
    return out


def arrow_columns(values: list) -> pa.Table:
    """The stored columns of `values`, built in Python (outside the clock) for the baseline."""
    cols = {name: [] for name in ("scope", "key_id", "site_id", "window_kind", "window_start", "window_end",
                                  "reading_count", "late_reading_count", "version", "emit_time", "window_closed")}
    metrics = {"%s_%s" % (m, s): [] for m in ("temperature_celsius", "humidity_percent", "pressure_hpa",
                                              "battery_percent") for s in ("count", "min", "max", "mean", "sum")}
    message = reading_aggregate_pb2.ReadingAggregate()
    for value in values:
        message.ParseFromString(value)
        cols["scope"].append("site" if message.scope == 2 else "device")
        cols["key_id"].append(message.key_id)
        cols["site_id"].append(message.site_id)
        cols["window_kind"].append("tumbling")
        cols["window_start"].append(message.window_start_time.seconds * 1000)
        cols["window_end"].append(message.window_end_time.seconds * 1000)
        cols["reading_count"].append(message.reading_count)
        cols["late_reading_count"].append(message.late_reading_count)
        cols["version"].append(message.version)
        cols["emit_time"].append(message.emit_time.seconds * 1000)
        cols["window_closed"].append(message.window_closed)
        for key in metrics:
            metric, stat = key.rsplit("_", 1)
            metrics[key].append(getattr(getattr(message, metric), stat))
    arrays = {}
    for name, data in {**cols, **metrics}.items():
        if name in ("window_start", "window_end", "emit_time"):
            arrays[name] = pa.array(data, pa.timestamp("ms", tz="UTC"))
        elif name == "version":
            arrays[name] = pa.array(data, pa.uint64())
        else:
            arrays[name] = pa.array(data)
    return pa.table(arrays)


def rate(rows: int, seconds: float) -> str:
    return "%10.0f rows/s  (%d rows in %.2f s)" % (rows / seconds, rows, seconds)


def bench_sink(store: ChdbStore, values: list, batch_size: int, decode: bool) -> float:
    schema, name = TARGET.insert_schema()
    topic = topics.IOT_AGGREGATES
    headers = records.schema_headers(reading_aggregate_pb2.ReadingAggregate())
    started = time.perf_counter()
    for start in range(0, len(values), batch_size):
        batch = values[start:start + batch_size]
        if decode:
            kept = []
            for value in batch:
                message = records.decode(topic, value, headers)
                if TARGET.validate(message) is None:
                    kept.append(value)
            batch = kept
        store.insert_protobuf(TARGET.ingest_table, schema, name, protobuf_schema.frame(batch))
    return time.perf_counter() - started


def bench_baseline(store: ChdbStore, table: pa.Table, batch_size: int) -> float:
    columns = table.column_names
    started = time.perf_counter()
    for batch in table.to_batches(max_chunksize=batch_size):
        sink_buffer = io.BytesIO()
        with pa.ipc.new_stream(sink_buffer, batch.schema) as writer:
            writer.write_batch(batch)
        store.insert_arrow_stream("iot_reading_aggregates", columns, sink_buffer.getvalue())
    return time.perf_counter() - started


def bench_queries(store: ChdbStore, repeats: int) -> list:
    now = dt.datetime(2023, 11, 14, 23, 0, tzinfo=dt.timezone.utc)
    cases = [
        (queries.AGGREGATES, {"scope": ["device"], "key_id": ["device-00042"], "from": ["2023-11-14T22:00:00Z"]}),
        (queries.SITES_LATEST, {"closed_only": ["false"]}),
        (queries.DEVICES_TOP, {"metric": ["temperature"], "window": ["6h"]}),
        (queries.DEVICES_TOP, {"metric": ["humidity"], "stat": ["mean"], "window": ["6h"], "site_id": ["site-07"]}),
    ]
    out = []
    for query, raw in cases:
        timings = []
        rows = 0
        for _ in range(repeats):
            started = time.perf_counter()
            answer = queries.run(store, query, query.validate(raw, lambda: now))
            timings.append((time.perf_counter() - started) * 1000)
            rows = answer["row_count"]
        timings.sort()
        label = query.name + " " + ",".join("%s=%s" % (k, v[0]) for k, v in raw.items())
        out.append((label, statistics.median(timings), timings[int(len(timings) * 0.95) - 1], rows))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="analytics_sink_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=50_000, help="records per insert (the sink's --batch-size)")
    parser.add_argument("--query-repeats", type=int, default=30)
    args = parser.parse_args(argv)

    print("generating %d serialized ReadingAggregate records ..." % args.rows, flush=True)
    values = make_values(args.rows)
    table = arrow_columns(values)
    with tempfile.TemporaryDirectory(prefix="analytics-bench-") as directory:
        sink_store = ChdbStore(directory + "/chdb", database="bench_sink")
        decode_store = ChdbStore(directory + "/chdb", database="bench_decode")
        baseline_store = ChdbStore(directory + "/chdb", database="bench_baseline")
        try:
            for store in (sink_store, decode_store, baseline_store):
                migrations.migrate(store)
            # Warm-up (first insert pays for schema parsing and part creation).
            bench_sink(sink_store, values[:1000], 1000, decode=False)
            sink_store.command("TRUNCATE TABLE iot_reading_aggregates")

            baseline = bench_baseline(baseline_store, table, args.batch_size)
            plain = bench_sink(sink_store, values, args.batch_size, decode=False)
            decoded = bench_sink(decode_store, values, args.batch_size, decode=True)
            visible = {name: store.query("SELECT count() FROM iot_reading_aggregates FINAL").rows[0][0]
                       for name, store in (("sink", sink_store), ("decode", decode_store),
                                           ("baseline", baseline_store))}
            assert len(set(visible.values())) == 1, "the paths stored different windows: %s" % visible

            print()
            print("chdb %s, batch size %d, %d rows" % (
                sink_store.query("SELECT version() AS v").rows[0][0], args.batch_size, args.rows))
            print("  raw chdb baseline (ArrowStream)   " + rate(args.rows, baseline))
            print("  sink insert path (Protobuf + MV)  " + rate(args.rows, plain))
            print("  sink incl. decode + checks        " + rate(args.rows, decoded))
            print("  ratio sink/baseline               %10.2f" % (baseline / plain))
            print("  ratio sink incl. decode/baseline  %10.2f" % (baseline / decoded))
            print("  target >= 500000 rows/s for the sink insert path: %s"
                  % ("met" if args.rows / plain >= 500_000 else "NOT met"))
            print()
            print("named queries over %d stored windows (median / p95 of %d runs, ms):"
                  % (sink_store.query("SELECT count() FROM iot_reading_aggregates FINAL").rows[0][0],
                     args.query_repeats))
            for label, median, p95, rows in bench_queries(sink_store, args.query_repeats):
                print("  %-78s %7.1f %7.1f  (%d rows)" % (label, median, p95, rows))
        finally:
            for store in (sink_store, decode_store, baseline_store):
                store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
