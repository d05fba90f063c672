"""The assembled service: gRPC server (IngestService, health, reflection), Kafka sink, metrics.

`IngestServer(settings)` is what main.py runs and what tests start in-process:

    server = IngestServer(settings)
    await server.start()          # topics checked, producer up, port bound, SERVING
    ...
    await server.stop()           # NOT_SERVING, drain, flush, stop

Shutdown order (STYLE.md, grpc's aio examples): health NOT_SERVING; refuse new batches (new
calls and stream reads get UNAVAILABLE with a retry hint); wait for batches in progress until
the drain deadline; flush the producer with what is left of it; `await server.stop(grace)`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from datapipelines import kafka
from services.ingest import api_keys, validation
from services.ingest.auth import KeyStore, KeyStoreError
from services.ingest.config import Settings
from services.ingest.dedup import DedupWindow
from services.ingest.kafka_sink import KafkaSink
from services.ingest.metrics import Metrics
from services.ingest.servicer import SERVICE_NAME, InFlightBudget, IngestServicer

LOG = logging.getLogger("ingest.server")

KEYS_RELOAD_SECONDS = 2.0


class StartError(RuntimeError):
    """The service cannot start; the message says why and what to do."""


class KeyFile:
    """The key store, reloaded when its file changes (keys added with the CLI need no restart)."""

    def __init__(self, path):
        self.path = path
        self._stamp = None
        self.store = KeyStore()
        self.reload(initial=True)

    def __call__(self) -> KeyStore:
        return self.store

    def _stat(self):
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self, initial: bool = False) -> bool:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            store = api_keys.load(self.path)
        except (OSError, KeyStoreError, UnicodeDecodeError) as err:
            if initial:
                raise StartError("cannot read API key store %s: %s" % (self.path, err)) from None
            LOG.error("event=api_keys_reload_failed path=%s error=%r keeping=%d", self.path, str(err), len(self.store))
            return False
        self._stamp = stamp
        self.store = store
        LOG.info("event=api_keys_loaded path=%s keys=%d tenants=%s", self.path, len(store),
                 ",".join(sorted(store.tenants())) or "-")
        return True


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class IngestServer:
    def __init__(self, settings: Settings, metrics: Optional[Metrics] = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.port: Optional[int] = None
        self.metrics_port: Optional[int] = None
        self.keys: Optional[KeyFile] = None
        self.sink: Optional[KafkaSink] = None
        self.servicer: Optional[IngestServicer] = None
        self.health: Optional[health.aio.HealthServicer] = None
        self._server: Optional[grpc.aio.Server] = None
        self._metrics_httpd = None
        self._background: list = []
        self._stopped = False

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.keys = KeyFile(s.api_keys_file)
        if not len(self.keys.store):
            LOG.warning("event=no_api_keys path=%s hint=%r", s.api_keys_file,
                        "every call is UNAUTHENTICATED until a key is added: bazel run //services/ingest:api_keys -- add ...")
        contracts = validation.contracts()
        wanted = [c.topic for c in contracts.values()] + [validation.dead_letter_topic(c) for c in contracts.values()]
        try:
            created = await asyncio.to_thread(kafka.ensure_topics, s.bootstrap, wanted, 15.0)
        except Exception as err:  # KafkaException, RuntimeError: the broker is not there
            raise StartError("Kafka at %s is not reachable (%s); start it: bazel run //deploy/kafka:broker, or set "
                             "--bootstrap / DP_KAFKA_BOOTSTRAP" % (s.bootstrap, err)) from None
        if created:
            LOG.info("event=topics_created topics=%s", ",".join(created))

        self.sink = KafkaSink(
            kafka.producer_config(s.bootstrap, **{
                "client.id": "ingest",
                "message.timeout.ms": int(s.delivery_timeout_seconds * 1000),
                # Room for everything admitted (events and their dead letters) and then some:
                # the in-flight budget, not this queue, is what pushes back on callers.
                "queue.buffering.max.messages": max(100_000, 2 * s.max_in_flight_events),
                "queue.buffering.max.kbytes": 1024 * 1024,
            }),
            loop, probe_topic=wanted[0].name, on_availability=self._kafka_availability)
        self.sink.start()
        self.servicer = IngestServicer(
            self.keys, self.sink, contracts, s.limits,
            DedupWindow(s.dedup_window_events, s.dedup_window_seconds),
            InFlightBudget(s.max_in_flight_events, on_change=self.metrics.in_flight_events.set),
            self.metrics,
            admission_wait_seconds=s.admission_wait_seconds,
            ack_timeout_seconds=s.ack_timeout_seconds,
            retry_after_ms=s.retry_after_ms,
            max_batches_per_stream=s.max_batches_per_stream,
        )

        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", s.max_request_bytes),
            ("grpc.max_send_message_length", s.max_request_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ])
        server.add_generic_rpc_handlers((self.servicer.handler(),))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
        address = "%s:%d" % (s.host, s.port)
        try:
            if s.tls_cert:
                credentials = grpc.ssl_server_credentials(
                    [(_read(s.tls_key), _read(s.tls_cert))],
                    root_certificates=_read(s.tls_client_ca) if s.tls_client_ca else None,
                    require_client_auth=bool(s.tls_client_ca))
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as err:
            port = 0
            LOG.error("event=bind_failed address=%s error=%r", address, str(err))
        if not port:
            self.sink.stop_polling()
            await asyncio.to_thread(self.sink.flush, 1.0)
            raise StartError("cannot listen on %s (in use?); choose --port / DP_INGEST_PORT" % address)
        self.port = port
        self._server = server
        await server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

        if s.metrics_port is not None:
            from prometheus_client import start_http_server

            self._metrics_httpd, _ = start_http_server(s.metrics_port, addr=s.metrics_host, registry=self.metrics.registry)
            self.metrics_port = self._metrics_httpd.server_address[1]
        self._background.append(asyncio.ensure_future(self._reload_keys()))
        LOG.info("event=serving port=%d metrics_port=%s %s", self.port, self.metrics_port or "-", s.describe())

    def _kafka_availability(self, available: bool) -> None:
        self.metrics.kafka_available.set(1 if available else 0)
        if self.health is not None and not self._stopped:
            status = health_pb2.HealthCheckResponse.SERVING if available else health_pb2.HealthCheckResponse.NOT_SERVING
            # The service (not the process) is unhealthy while it cannot write: balancers route elsewhere.
            self._background.append(asyncio.ensure_future(self.health.set(SERVICE_NAME, status)))

    async def _reload_keys(self) -> None:
        while True:
            await asyncio.sleep(KEYS_RELOAD_SECONDS)
            await asyncio.to_thread(self.keys.reload)

    async def stop(self, drain_seconds: Optional[float] = None, grace_seconds: float = 1.0) -> None:
        """Graceful shutdown within about `drain_seconds` (default: the settings) plus `grace_seconds`."""
        if self._stopped or self._server is None:
            return
        self._stopped = True
        drain = self.settings.drain_seconds if drain_seconds is None else drain_seconds
        deadline = time.monotonic() + drain
        began = time.monotonic()
        await self.health.enter_graceful_shutdown()
        self.servicer.begin_drain()
        idle = await self.servicer.wait_idle(max(0.0, deadline - time.monotonic()))
        self.sink.stop_polling()
        left = await asyncio.to_thread(self.sink.flush, max(1.0, deadline - time.monotonic()))
        await self._server.stop(grace_seconds)
        for task in self._background:
            task.cancel()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        LOG.info("event=stopped drained=%s records_unflushed=%d pending_events=%d seconds=%.1f", idle, left,
                 self.servicer.pending_events, time.monotonic() - began)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
