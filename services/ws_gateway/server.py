"""The assembled gateway: one `websockets` server for `/ws`, `/`, `/healthz` and `/metrics`, the
forwarder, and the emulated users.

    gateway = GatewayServer(settings)
    await gateway.start()      # stream to the ingestion service, port bound, emulation running
    ...
    await gateway.stop()       # stop accepting, stop emulating, flush and collect acks, close

Shutdown: `/healthz` turns 503 and new connections are refused; emulated users stop; messages
still arriving get a retryable error; queued events are sent and their acks delivered to the
clients until the drain deadline; connections close with 1001 (going away); the gRPC stream
ends with a half-close.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import pathlib
import time
from typing import Optional

import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from services.ws_gateway import protocol
from services.ws_gateway.config import Settings
from services.ws_gateway.emulator import Emulator
from services.ws_gateway.forwarder import Forwarder, ForwarderClosed
from services.ws_gateway.metrics import Metrics

LOG = logging.getLogger("ws_gateway.server")

PAGE = pathlib.Path(__file__).with_name("page.html")
WS_PATH = "/ws"


class StartError(RuntimeError):
    """The gateway cannot start; the message says why and what to do."""


def _response(status: int, body: bytes, content_type: str) -> Response:
    status = http.HTTPStatus(status)
    headers = Headers([
        ("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
    ])
    return Response(status.value, status.phrase, headers, body)


class GatewayServer:
    def __init__(self, settings: Settings, metrics: Optional[Metrics] = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.port: Optional[int] = None
        self.forwarder: Optional[Forwarder] = None
        self.emulator: Optional[Emulator] = None
        self.emulation_done = asyncio.Event()
        self._page = b""
        self._ws = None
        self._connections: set = set()
        self._replies: set = set()
        self._background: list = []
        self._draining = False
        self._stopped = False

    async def start(self) -> None:
        s = self.settings
        try:
            self._page = PAGE.read_bytes()
        except OSError as err:
            raise StartError("cannot read the page %s: %s" % (PAGE, err)) from None
        self.forwarder = Forwarder(
            s.ingest_target, s.api_key, s.tenant, s.producer_id, batch_size=s.batch_size,
            linger_seconds=s.linger_ms / 1000.0, max_unacked_batches=s.max_unacked_batches,
            queue_events=s.queue_events, metrics=self.metrics)
        await self.forwarder.start()
        try:
            self._ws = await serve(self._client, s.host, s.port, process_request=self._http,
                                   max_size=s.max_message_bytes, server_header="dp-ws-gateway")
        except OSError as err:
            await self.forwarder.close(1.0)
            raise StartError("cannot listen on %s:%d (%s); choose --port / DP_WS_PORT" % (s.host, s.port, err)) from None
        self.port = self._ws.sockets[0].getsockname()[1]
        if s.users:
            self.emulator = Emulator(self.forwarder, s.users, s.rate, seed=s.seed, late_fraction=s.late_fraction,
                                     max_lateness_seconds=s.max_lateness_seconds, metrics=self.metrics)
            self._background.append(asyncio.ensure_future(self._emulate()))
        else:
            self.emulation_done.set()
        LOG.info("event=serving port=%d page=http://%s:%d/ ws=ws://%s:%d%s %s", self.port, s.host, self.port, s.host,
                 self.port, WS_PATH, s.describe())

    async def _emulate(self) -> None:
        try:
            stats = await self.emulator.run_for(self.settings.duration)
            LOG.info("event=emulation_summary %s", stats.summary())
        finally:
            self.emulation_done.set()

    # --- HTTP ------------------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Optional[Response]:
        path = request.path.split("?", 1)[0]
        if path == WS_PATH:
            if self._draining:
                return _response(503, b"gateway is shutting down; connect to another instance\n",
                                 "text/plain; charset=utf-8")
            return None  # the WebSocket handshake goes on
        if path in ("/", "/index.html"):
            return _response(200, self._page, "text/html; charset=utf-8")
        if path == "/healthz":
            status, body = self.health()
            return _response(status, json.dumps(body).encode() + b"\n", "application/json")
        if path == "/metrics":
            return _response(200, self.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
        return _response(404, b"not found; try / (the page), /ws (WebSocket), /healthz or /metrics\n",
                         "text/plain; charset=utf-8")

    def health(self) -> tuple[int, dict]:
        f = self.forwarder
        connected = bool(f and f.connected)
        body = {
            "status": "draining" if self._draining else ("ok" if connected else "ingest_unreachable"),
            "ingest_target": self.settings.ingest_target,
            "ingest_connected": connected,
            "queued_events": f.queued if f else 0,
            "unacked_events": f.unacked if f else 0,
            "connections": len(self._connections),
            "emulated_users": self.settings.users,
            "last_stream_error": f.last_error if f else "",
        }
        return (200 if body["status"] == "ok" else 503), body

    # --- WebSocket clients -----------------------------------------------------------------

    async def _client(self, ws: ServerConnection) -> None:
        s = self.settings
        agent = ws.request.headers.get("User-Agent", "") if ws.request else ""
        pending = asyncio.Semaphore(s.max_pending_per_client)
        self._connections.add(ws)
        self.metrics.connections.inc()
        peer = "%s:%s" % tuple(ws.remote_address[:2]) if ws.remote_address else "-"
        LOG.info("event=client_connected peer=%s", peer)
        try:
            await ws.send(protocol.hello(s.max_pending_per_client))
            async for message in ws:
                try:
                    parsed = protocol.parse_message(message, agent)
                except protocol.ProtocolError as err:
                    self.metrics.messages.labels("invalid").inc()
                    await ws.send(protocol.error(err.reason, err.event_id))
                    continue
                if isinstance(parsed, protocol.Ping):
                    self.metrics.messages.labels("ping").inc()
                    await ws.send(protocol.pong())
                    continue
                # Backpressure: with max_pending unacknowledged events, stop reading this client
                # (its socket buffer fills, then its sends block) until acks come back.
                await pending.acquire()
                try:
                    if self._draining:
                        raise ForwarderClosed("gateway is shutting down")
                    future = await self.forwarder.submit(parsed, source="client")
                except ForwarderClosed:
                    pending.release()
                    self.metrics.messages.labels("refused").inc()
                    await ws.send(protocol.error("gateway is shutting down; send the event again to another "
                                                 "instance", parsed.event_id, retry=True))
                    continue
                self.metrics.messages.labels("forwarded").inc()
                reply = asyncio.ensure_future(self._reply(ws, future, pending))
                self._replies.add(reply)
                reply.add_done_callback(self._replies.discard)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._connections.discard(ws)
            self.metrics.connections.dec()
            LOG.info("event=client_disconnected peer=%s code=%s", peer, ws.close_code)

    async def _reply(self, ws: ServerConnection, future: asyncio.Future, pending: asyncio.Semaphore) -> None:
        try:
            result = await future
        finally:
            pending.release()
        if result.accepted:
            text = protocol.ack(result.event_id, result.duplicate)
        else:
            text = protocol.error(result.reason, result.event_id, retry=result.retry)
        try:
            await ws.send(text)
        except websockets.ConnectionClosed:
            pass  # the client went away; it resends what it has no ack for

    # --- shutdown --------------------------------------------------------------------------

    async def stop(self, drain_seconds: Optional[float] = None) -> None:
        if self._stopped or self._ws is None:
            return
        self._stopped = True
        drain = self.settings.drain_seconds if drain_seconds is None else drain_seconds
        began = time.monotonic()
        self._draining = True
        LOG.info("event=draining connections=%d queued=%d unacked=%d drain_seconds=%g", len(self._connections),
                 self.forwarder.queued, self.forwarder.unacked, drain)
        self._ws.close(close_connections=False)  # no new connections; open ones stay for their acks
        if self.emulator is not None:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
        left = await self.forwarder.close(timeout=drain)
        if self._replies:
            await asyncio.wait(list(self._replies), timeout=2.0)
        for ws in list(self._connections):
            await ws.close(1001, "gateway shutting down")
        try:
            await asyncio.wait_for(self._ws.wait_closed(), timeout=5.0)
        except asyncio.TimeoutError:
            LOG.warning("event=close_timeout connections=%d", len(self._connections))
        LOG.info("event=stopped seconds=%.2f unacknowledged=%d", time.monotonic() - began, left)
