"""Prometheus metrics of the ingestion service, on a registry of their own (one per service object)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.accepted = Counter("dp_ingest_events_accepted", "Events written to Kafka and acknowledged.",
                                ["schema"], registry=r)
        self.rejected = Counter("dp_ingest_events_rejected", "Events rejected, by reason.", ["reason"], registry=r)
        self.dead_lettered = Counter("dp_ingest_events_dead_lettered", "Rejected events written to a dead-letter topic.",
                                     registry=r)
        self.batches = Counter("dp_ingest_batches", "Batches answered, by RPC and outcome (ok or a gRPC code).",
                               ["rpc", "outcome"], registry=r)
        self.batch_size = Histogram("dp_ingest_batch_size_events", "Events per batch.", buckets=BATCH_SIZE_BUCKETS,
                                    registry=r)
        self.ack_latency = Histogram("dp_ingest_ack_latency_seconds",
                                     "From a batch's arrival to its acknowledgement (Kafka confirmed every event).",
                                     ["rpc"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight_events = Gauge("dp_ingest_in_flight_events",
                                      "Events admitted and not yet confirmed by Kafka.", registry=r)
        self.in_flight_batches = Gauge("dp_ingest_in_flight_batches", "Batches being processed.", registry=r)
        self.auth_failures = Counter("dp_ingest_auth_failures", "Calls refused as UNAUTHENTICATED.", registry=r)
        self.kafka_available = Gauge("dp_ingest_kafka_available", "1 while Kafka is reachable.", registry=r)
        self.kafka_available.set(1)
        self.open_streams = Gauge("dp_ingest_open_streams", "PublishStream calls in progress.", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
