"""The service's HTTP interface (stdlib ThreadingHTTPServer): named queries, health, metrics.

    GET /api/v1/queries                  the named queries and their parameters
    GET /api/v1/iot/aggregates?...       see queries.py for each query's parameters
    GET /api/v1/iot/sites/latest?...
    GET /api/v1/iot/devices/top?...
    GET /api/v1/behaviour/metrics?...
    GET /api/v1/behaviour/sessions?...
    GET /api/v1/behaviour/sessions/summary?...
    GET /api/v1/behaviour/funnel?...
    GET /api/v1/behaviour/top-pages?...
    GET /api/v1/iot/series?...
    GET /api/v1/pipeline/dead-letters    records held in every dead-letter and late-data topic
    GET /dashboards[/iot|/behaviour]     the live dashboard pages (services/analytics/web)
    GET /healthz                         the process is up
    GET /readyz                          the store answers and the consumer has partitions
    GET /metrics                         Prometheus text format

Read-only: GET (and HEAD) only, no SQL from clients. Errors are JSON with a reason:
400 lists every bad parameter, 404 unknown path, 405 other methods, 503 store unavailable.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import threading
import time
import urllib.parse
from typing import Callable, Optional

from prometheus_client import CONTENT_TYPE_LATEST

from services.analytics import queries
from services.analytics.metrics import Metrics
from services.analytics.store import Store, StoreError
from services.analytics.topic_counts import TopicCountError, TopicCounts
from services.analytics.web.pages import Pages

LOG = logging.getLogger("analytics.http")
DEAD_LETTERS_PATH = "/api/v1/pipeline/dead-letters"


class Api:
    """What the handler needs, injected: the store, metrics, readiness, a clock, and optionally the
    dashboard pages and the side-topic counter (their routes answer 404/503 without them)."""

    def __init__(self, store: Store, metrics: Metrics, is_consuming: Callable[[], bool],
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
                 pages: Optional[Pages] = None, topic_counts: Optional[TopicCounts] = None):
        self.store = store
        self.metrics = metrics
        self.is_consuming = is_consuming
        self.now = now
        self.pages = pages
        self.topic_counts = topic_counts
        self.draining = threading.Event()

    def readiness(self) -> tuple:
        checks = {
            "store": self.store.ping(),
            "consumer_assigned": bool(self.is_consuming()),
            "not_draining": not self.draining.is_set(),
        }
        ready = all(checks.values())
        self.metrics.ready.set(1 if ready else 0)
        return ready, checks

    def handle(self, method: str, target: str) -> tuple:
        """(status, content type, body bytes, route label) for one request."""
        parts = urllib.parse.urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "method-not-allowed", "detail": "the API is read-only: use GET"}) + ("other",)
        if path == "/healthz":
            return _json(200, {"status": "ok"}) + ("/healthz",)
        if path == "/readyz":
            ready, checks = self.readiness()
            return _json(200 if ready else 503, {"ready": ready, "checks": checks}) + ("/readyz",)
        if path == "/metrics":
            return (200, CONTENT_TYPE_LATEST, self.metrics.exposition(), "/metrics")
        if path == "/api/v1/queries":
            return _json(200, {"queries": [query.describe() for query in queries.ALL]}) + (path,)
        if path == "/dashboards" or path.startswith("/dashboards/"):
            found = self.pages.get(path) if self.pages is not None else None
            if found is None:
                return _json(404, {"error": "not-found", "detail": "no dashboard file %s; the pages are "
                                   "/dashboards/iot and /dashboards/behaviour" % path[:100]}) + ("/dashboards",)
            return (200, found[0], found[1], "/dashboards")
        if path == DEAD_LETTERS_PATH:
            return self.dead_letters() + (path,)
        query = queries.BY_PATH.get(path)
        if query is None:
            return _json(404, {"error": "not-found", "detail": "no route %s; GET /api/v1/queries lists the queries"
                               % path[:100]}) + ("other",)
        started = time.monotonic()
        try:
            raw = urllib.parse.parse_qs(parts.query, keep_blank_values=True, max_num_fields=50)
        except ValueError as err:
            return _json(400, {"error": "bad-request", "query": query.name, "problems": [str(err)]}) + (path,)
        try:
            values = query.validate(raw, self.now)
            body = queries.run(self.store, query, values)
        except queries.BadRequest as err:
            return _json(400, {"error": "bad-request", "query": query.name, "problems": err.problems}) + (path,)
        except StoreError as err:
            LOG.error("event=query_failed query=%s error=%r", query.name, str(err))
            return _json(503, {"error": "store-unavailable", "query": query.name, "detail": str(err)[:500]}) + (path,)
        finally:
            self.metrics.query_seconds.labels(query.name).observe(time.monotonic() - started)
        return _json(200, body) + (path,)


    def dead_letters(self) -> tuple:
        """Records in every dead-letter and late topic (from Kafka), and this sink's dead letters by reason."""
        sink = []
        for family in self.metrics.dead_letters.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    sink.append({"topic": sample.labels["topic"], "reason": sample.labels["reason"],
                                 "records": int(sample.value)})
        if self.topic_counts is None:
            return _json(503, {"error": "unavailable", "detail": "this server counts no topics (no Kafka client)",
                               "analytics_sink": sink})
        try:
            counted = self.topic_counts.counts()
        except TopicCountError as err:
            return _json(503, {"error": "kafka-unavailable", "detail": str(err)[:500], "analytics_sink": sink})
        return _json(200, {"caught_up": counted["caught_up"], "topics": counted["topics"], "analytics_sink": sink})


def _json(status: int, payload: dict) -> tuple:
    return status, "application/json", json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    api: Api  # set on the subclass made by make_server
    protocol_version = "HTTP/1.1"
    timeout = 30
    server_version = "datapipelines-analytics"

    def _serve(self, method: str) -> None:
        try:
            status, content_type, body, route = self.api.handle(method, self.path)
        except Exception as err:  # a bug must not kill the server thread silently
            LOG.exception("event=http_error path=%s", self.path[:200])
            status, content_type, body = _json(500, {"error": "internal", "detail": repr(err)[:300]})
            route = "other"
        self.api.metrics.http_requests.labels(route, str(status)).inc()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server naming)
        self._serve("GET")

    def do_HEAD(self):  # noqa: N802
        self._serve("HEAD")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
        LOG.debug("event=http_request client=%s request=%r", self.client_address[0], format % args)


def make_server(api: Api, host: str, port: int) -> http.server.ThreadingHTTPServer:
    handler = type("AnalyticsHandler", (_Handler,), {"api": api})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: http.server.ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    thread.start()
    return thread


def stop(server: http.server.ThreadingHTTPServer, thread: Optional[threading.Thread], timeout: float = 5.0) -> None:
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join(timeout)
