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

LOG = logging.getLogger("analytics.http")


class Api:
    """What the handler needs, injected: the store, metrics, readiness, a clock."""

    def __init__(self, store: Store, metrics: Metrics, is_consuming: Callable[[], bool],
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)):
        self.store = store
        self.metrics = metrics
        self.is_consuming = is_consuming
        self.now = now
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
