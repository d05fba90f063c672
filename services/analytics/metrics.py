"""Prometheus metrics of the analytics service, on a registry the service owns (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rows_inserted = Counter(
            "analytics_rows_inserted", "Records stored in the analytics store.", ["table"], registry=r)
        self.batches = Counter(
            "analytics_batches", "Sink batches by outcome (stored, failed).", ["topic", "outcome"], registry=r)
        self.insert_seconds = Histogram(
            "analytics_insert_seconds", "Time to insert one batch (rows and offsets).", ["table"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram(
            "analytics_batch_rows", "Records per stored batch.", ["topic"],
            buckets=(1, 10, 100, 1_000, 10_000, 50_000, 100_000, 500_000), registry=r)
        self.consumer_lag = Gauge(
            "analytics_consumer_lag",
            "Records of each assigned partition not yet stored and committed (end offset, the last stable offset "
            "under read_committed, minus the next offset to read); NaN while the broker cannot say.",
            ["topic", "partition"], registry=r)
        self.dead_letters = Counter(
            "analytics_dead_letters", "Records sent to the dead-letter topic, by reason.", ["topic", "reason"],
            registry=r)
        self.skipped_replays = Counter(
            "analytics_skipped_offsets", "Offsets skipped on assignment because the store already had them.",
            ["topic"], registry=r)
        self.query_seconds = Histogram(
            "analytics_query_seconds", "Named query latency (validation, store, encoding).", ["query"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.http_requests = Counter(
            "analytics_http_requests", "HTTP requests by route and status code.", ["route", "code"], registry=r)
        self.ready = Gauge("analytics_ready", "1 when the store is open and the consumer has partitions.", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
