"""Operations side of the aggregator: Prometheus metrics, /healthz and /readyz, key=value logs."""

from __future__ import annotations

import http.server
import logging
import threading
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    """All metrics of one process, in their own registry (tests make as many as they like)."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        p = "dp_iot_aggregator_"
        self.records_in = Counter(p + "records_in", "Input records consumed (all kinds).", registry=r)
        self.changes_applied = Counter(p + "changes_applied", "Change events applied to the windows.", registry=r)
        self.duplicates = Counter(p + "duplicates", "Replayed changes skipped (LSN not newer).", registry=r)
        self.null_values = Counter(p + "null_values", "Input records without a value (skipped).", registry=r)
        self.dead_letters = Counter(p + "dead_letters", "Records sent to the dead-letter topic.", ["reason"], registry=r)
        self.late = Counter(p + "late_readings", "Readings sent to the late-readings topic.", ["reason"], registry=r)
        self.aggregates_out = Counter(p + "aggregates_out", "Aggregates emitted.", ["closed"], registry=r)
        self.changelog_out = Counter(p + "changelog_records", "State changelog records written.", registry=r)
        self.transactions = Counter(p + "transactions", "Kafka transactions by outcome.", ["outcome"], registry=r)
        self.batch_seconds = Histogram(p + "batch_seconds", "Time to process and commit one batch.", registry=r,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.restore_seconds = Histogram(p + "restore_seconds", "Time to restore state of an assignment.",
                                         registry=r, buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.restored_entries = Counter(p + "restored_entries", "State entries restored from the changelog.",
                                        registry=r)
        self.lag = Gauge(p + "consumer_lag", "Records behind the end of the input partition.", ["partition"],
                         registry=r)
        self.stream_time = Gauge(p + "stream_time_seconds", "Stream time (max event time) per partition.",
                                 ["partition"], registry=r)
        self.open_panes = Gauge(p + "open_panes", "Device and site panes held in state.", registry=r)
        self.state_entries = Gauge(p + "state_entries", "Readings held in state.", registry=r)


class Health:
    """Liveness: the processing loop came round recently. Readiness: assigned partitions restored."""

    def __init__(self, stall_seconds: float = 120.0):
        self.stall_seconds = stall_seconds
        self._beat = time.monotonic()
        self.ready = False
        self.detail = "starting"

    def beat(self) -> None:
        self._beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.stall_seconds


class _Handler(http.server.BaseHTTPRequestHandler):
    metrics: Metrics
    health: Health

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/metrics":
            self._send(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        elif self.path == "/healthz":
            ok = self.health.alive()
            self._send(200 if ok else 503, b"ok\n" if ok else b"processing loop stalled\n")
        elif self.path == "/readyz":
            ok = self.health.ready
            self._send(200 if ok else 503, (("ready" if ok else "not ready: ") + ("" if ok else self.health.detail))
                       .encode() + b"\n")
        else:
            self._send(404, b"try /metrics, /healthz or /readyz\n")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # requests are not worth a log line each
        pass


def serve_http(host: str, port: int, metrics: Metrics, health: Health) -> http.server.ThreadingHTTPServer:
    """Starts /metrics, /healthz, /readyz on a daemon thread; `server.server_address` has the bound port."""
    handler = type("Handler", (_Handler,), {"metrics": metrics, "health": health})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def configure_logging(level: str) -> None:
    """One event per line: `ts=... level=... logger=... event=... key=value ...`."""
    logging.basicConfig(
        level=level,
        format="ts=%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    logging.Formatter.converter = time.gmtime
