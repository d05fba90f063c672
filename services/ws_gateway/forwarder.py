"""Forwards UserEvents to the ingestion service over one long-lived gRPC PublishStream.

    forwarder = Forwarder(target, api_key, tenant, producer_id, ...)
    await forwarder.start()
    outcome = await (await forwarder.submit(user_event, source="client"))   # a Result, once acked
    await forwarder.close(timeout=15)   # stop taking events, flush, collect acks, end the stream

- Batching: events wait in a bounded buffer until `batch_size` are there or `linger` passed.
- Backpressure: `submit` waits while the buffer is full, and batches wait for a slot while
  `max_unacked_batches` are on the stream; callers (WebSocket handlers, emulated users) that
  await `submit` stop reading or producing, so a slow Kafka slows the clients down instead of
  growing memory.
- Retries: when the stream ends with a retryable status (UNAVAILABLE, RESOURCE_EXHAUSTED, ...)
  the forwarder waits for the service's `retry-after-ms` trailer (or its own backoff), opens a
  new stream and resends every unacknowledged batch with the same event ids; events that had
  reached Kafka come back DUPLICATE and count as delivered (`client_lib` has the same rule).
- A non-retryable status (UNAUTHENTICATED, INVALID_ARGUMENT, ...) fails the batches on the
  stream with the reason; the forwarder keeps trying new streams for later events.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import time
import uuid
from typing import Optional

import grpc

from datapipelines.behaviour.v1 import user_event_pb2 as ue
from datapipelines.ingest.v1 import ingest_service_pb2 as pb
from datapipelines.ingest.v1 import ingest_service_pb2_grpc as pb_grpc
from services.ingest import client_lib, sample_events
from services.ws_gateway.metrics import Metrics

LOG = logging.getLogger("ws_gateway.forwarder")


class ForwarderClosed(RuntimeError):
    """The gateway is shutting down and takes no more events."""


@dataclasses.dataclass(frozen=True)
class Result:
    """What became of one event."""

    event_id: str
    accepted: bool  # in Kafka (accepted now or before)
    duplicate: bool = False
    reason: str = ""  # why not accepted, for the client
    retry: bool = False  # sending the event again may succeed


@dataclasses.dataclass
class _Item:
    envelope: object
    future: asyncio.Future
    source: str
    arrived: float


@dataclasses.dataclass
class _Batch:
    batch: pb.PublishBatch
    items: list
    epoch: int = 0  # the stream it was last written to


class Forwarder:
    def __init__(self, target: str, api_key: str, tenant: str, producer_id: str, *, batch_size: int = 200,
                 linger_seconds: float = 0.02, max_unacked_batches: int = 8, queue_events: int = 10_000,
                 metrics: Optional[Metrics] = None, backoff_seconds: float = 0.2, max_backoff_seconds: float = 5.0):
        self.target = target
        self.tenant = tenant
        self.producer_id = producer_id
        self.batch_size = batch_size
        self.linger_seconds = linger_seconds
        self.metrics = metrics or Metrics()
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._metadata = (("x-api-key", api_key),)
        self._instance = uuid.uuid4().hex[:10]
        self._numbers = itertools.count(1)
        self._buffer: collections.deque = collections.deque()
        self._space = asyncio.Semaphore(queue_events)
        self._slots = asyncio.Semaphore(max_unacked_batches)
        self._has_items = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._pending: dict[str, _Batch] = {}
        self._closing = False
        self._batcher_done = False
        self._channel: Optional[grpc.aio.Channel] = None
        self._tasks: list = []
        self.last_error: str = ""

    # --- public ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.target, options=[
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.max_send_message_length", 16 * 1024 * 1024),
        ])
        self._stub = pb_grpc.IngestServiceStub(self._channel)
        self._tasks = [asyncio.ensure_future(self._batch_loop()), asyncio.ensure_future(self._stream_loop())]

    @property
    def connected(self) -> bool:
        """The channel to the ingestion service is up."""
        return (self._channel is not None
                and self._channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY)

    @property
    def queued(self) -> int:
        return len(self._buffer)

    @property
    def unacked(self) -> int:
        return sum(len(b.items) for b in self._pending.values())

    async def submit(self, event: ue.UserEvent, source: str = "client") -> asyncio.Future:
        """Queues `event` (waiting for room); the returned future resolves to its Result."""
        if self._closing:
            raise ForwarderClosed("gateway is shutting down")
        await self._space.acquire()
        if self._closing and self._batcher_done:
            self._space.release()
            raise ForwarderClosed("gateway is shutting down")
        future = asyncio.get_running_loop().create_future()
        envelope = sample_events.envelope(event, self.tenant, producer=self.producer_id)
        self._buffer.append(_Item(envelope, future, source, time.monotonic()))
        self.metrics.queued_events.set(len(self._buffer))
        self._has_items.set()
        if len(self._buffer) >= self.batch_size:
            self._batch_full.set()
        return future

    async def close(self, timeout: float) -> int:
        """Stops taking events, sends what is queued and waits for acks until `timeout`.

        Returns the number of events left without an acknowledgement (their futures fail with a
        retryable reason, so clients resend them elsewhere).
        """
        self._closing = True
        self._has_items.set()
        self._batch_full.set()
        self._wakeup.set()
        left = 0
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*self._tasks)), timeout)
        except asyncio.TimeoutError:
            LOG.warning("event=drain_timeout queued=%d unacked=%d", len(self._buffer), self.unacked)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            reason = "gateway stopped before the ingestion service acknowledged the event; send it again"
            for batch in list(self._pending.values()):
                left += len(batch.items)
                self._fail(batch, reason, retry=True)
            self._pending.clear()
            while self._buffer:
                item = self._buffer.popleft()
                left += 1
                if not item.future.done():
                    item.future.set_result(Result(item.envelope.event_id, False, reason=reason, retry=True))
            if self._channel is not None:
                await self._channel.close()
        return left

    # --- batching --------------------------------------------------------------------------

    async def _batch_loop(self) -> None:
        try:
            while True:
                while not self._buffer:
                    if self._closing:
                        return
                    self._has_items.clear()
                    await self._has_items.wait()
                if len(self._buffer) < self.batch_size and not self._closing and self.linger_seconds > 0:
                    self._batch_full.clear()
                    try:
                        await asyncio.wait_for(self._batch_full.wait(), self.linger_seconds)
                    except asyncio.TimeoutError:
                        pass
                await self._slots.acquire()
                items = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
                for _ in items:
                    self._space.release()
                batch_id = "%s-%s-%d" % (self.producer_id, self._instance, next(self._numbers))
                self._pending[batch_id] = _Batch(sample_events.batch((i.envelope for i in items), batch_id), items)
                self.metrics.queued_events.set(len(self._buffer))
                self.metrics.unacked_batches.set(len(self._pending))
                self.metrics.batch_size.observe(len(items))
                self._wakeup.set()
        finally:
            self._batcher_done = True
            self._wakeup.set()

    def _finished(self) -> bool:
        return self._closing and self._batcher_done and not self._pending

    # --- the stream ------------------------------------------------------------------------

    async def _stream_loop(self) -> None:
        delay = self.backoff_seconds
        epoch = 0
        while not self._finished():
            if not self._pending and not self._closing:
                # Nothing to send: open the next stream when there is (an idle broken stream
                # would otherwise be reopened in a loop).
                self._wakeup.clear()
                if not self._pending:
                    await self._wakeup.wait()
                    continue
            epoch += 1
            call = self._stub.PublishStream(metadata=self._metadata)
            self.metrics.streams_opened.inc()
            writer = asyncio.ensure_future(self._write(call, epoch))
            error: Optional[grpc.aio.AioRpcError] = None
            try:
                async for response in call:
                    self._settle(response.ack)
                    delay = self.backoff_seconds
            except grpc.aio.AioRpcError as err:
                error = err
            finally:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            if error is None:
                if self._pending and not self._closing:
                    LOG.warning("event=stream_ended_early unacked_batches=%d", len(self._pending))
                continue
            code = error.code()
            hint = client_lib.retry_after_ms(error)
            self.metrics.stream_errors.labels(code.name).inc()
            self.last_error = "%s: %s" % (code.name, error.details())
            if code in client_lib.RETRYABLE:
                wait = hint / 1000.0 if hint is not None else delay
                LOG.warning("event=stream_failed code=%s retryable=true retry_after_s=%.2f unacked_batches=%d detail=%r",
                            code.name, wait, len(self._pending), error.details())
            else:
                wait = delay
                LOG.error("event=stream_failed code=%s retryable=false unacked_batches=%d detail=%r", code.name,
                          len(self._pending), error.details())
                hint_text = " (check the gateway's API key and tenant)" if code in (
                    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) else ""
                for batch in list(self._pending.values()):
                    self._fail(batch, "ingestion service refused the stream: %s: %s%s"
                               % (code.name, error.details(), hint_text), retry=True)
            delay = min(self.max_backoff_seconds, delay * 2)
            await asyncio.sleep(min(wait, self.max_backoff_seconds))

    async def _write(self, call, epoch: int) -> None:
        try:
            while True:
                self._wakeup.clear()
                for batch in list(self._pending.values()):
                    if batch.epoch != epoch:
                        batch.epoch = epoch
                        await call.write(pb.PublishStreamRequest(batch=batch.batch))
                if self._finished():
                    await call.done_writing()
                    return
                await self._wakeup.wait()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as err:
            LOG.debug("event=write_stopped error=%r", str(err))  # the reader sees the call's status

    def _settle(self, ack: pb.BatchAck) -> None:
        batch = self._pending.pop(ack.batch_id, None)
        if batch is None:
            return  # an ack of a batch settled before (a resend raced its first ack)
        self._slots.release()
        self.metrics.unacked_batches.set(len(self._pending))
        self.metrics.batches.labels("acked").inc()
        rejections = {r.index: r for r in ack.rejections}
        now = time.monotonic()
        for index, item in enumerate(batch.items):
            rejection = rejections.get(index)
            if rejection is None:
                result, outcome = Result(item.envelope.event_id, True), "accepted"
            elif rejection.reason == pb.REJECTION_REASON_DUPLICATE:
                result, outcome = Result(item.envelope.event_id, True, duplicate=True), "duplicate"
            else:
                reason = "rejected by the ingestion service: %s: %s" % (
                    pb.RejectionReason.Name(rejection.reason)[len("REJECTION_REASON_"):], rejection.detail)
                result, outcome = Result(item.envelope.event_id, False, reason=reason), "rejected"
            self.metrics.events.labels(item.source, outcome).inc()
            self.metrics.ack_latency.observe(now - item.arrived)
            if not item.future.done():
                item.future.set_result(result)
        self._wakeup.set()

    def _fail(self, batch: _Batch, reason: str, retry: bool) -> None:
        if self._pending.pop(batch.batch.batch_id, None) is not None:
            self._slots.release()
        self.metrics.unacked_batches.set(len(self._pending))
        self.metrics.batches.labels("failed").inc()
        for item in batch.items:
            self.metrics.events.labels(item.source, "failed").inc()
            if not item.future.done():
                item.future.set_result(Result(item.envelope.event_id, False, reason=reason, retry=retry))
        self._wakeup.set()
