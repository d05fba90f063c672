"""Prometheus metrics of the gateway, on a registry of their own (one per server object)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge("dp_ws_connections", "Open WebSocket connections on /ws.", registry=r)
        self.messages = Counter("dp_ws_messages", "WebSocket messages received, by outcome "
                                "(forwarded, invalid, ping, refused).", ["outcome"], registry=r)
        self.events = Counter("dp_ws_events", "Events settled by the ingestion service, by source (client, emulator) "
                              "and outcome (accepted, duplicate, rejected, failed).", ["source", "outcome"], registry=r)
        self.emulated = Counter("dp_ws_emulated_events", "Events the emulated users produced, by event type.",
                                ["event_type"], registry=r)
        self.queued_events = Gauge("dp_ws_queued_events", "Events waiting for a batch.", registry=r)
        self.unacked_batches = Gauge("dp_ws_unacked_batches", "Batches sent on the stream and not yet acknowledged.",
                                     registry=r)
        self.batches = Counter("dp_ws_batches", "Batches acknowledged or failed, by outcome.", ["outcome"], registry=r)
        self.batch_size = Histogram("dp_ws_batch_size_events", "Events per batch.", buckets=BATCH_SIZE_BUCKETS,
                                    registry=r)
        self.ack_latency = Histogram("dp_ws_ack_latency_seconds",
                                     "From an event's arrival at the gateway to the ingestion service's acknowledgement.",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.stream_errors = Counter("dp_ws_stream_errors", "PublishStream calls that ended with an error, by gRPC code.",
                                     ["code"], registry=r)
        self.streams_opened = Counter("dp_ws_streams_opened", "PublishStream calls opened.", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
