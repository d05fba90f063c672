"""IngestService: authenticate, admit, validate, deduplicate, publish, and acknowledge after Kafka.

Every dependency comes in through the constructor (key store, Kafka sink, contracts, limits,
dedup window, in-flight budget, metrics, clock). One batch goes through `_publish`:

1. refuse the whole call when the batch is empty or too big (INVALID_ARGUMENT), the service is
   draining or Kafka is unreachable (UNAVAILABLE), or no in-flight capacity frees up within the
   admission wait (RESOURCE_EXHAUSTED); the last two carry the `retry-after-ms` trailer;
2. validate each envelope; rejected ones are answered with their reason and written to the
   dead-letter topic; an id already accepted (dedup window) is answered DUPLICATE; an id whose
   earlier delivery is still pending joins that delivery instead of being written again;
3. produce the accepted events and dead letters, wait for every delivery report, then answer.
   A batch with any failed delivery fails as a whole (UNAVAILABLE): the caller resends it with
   the same event ids, and those that did reach Kafka come back DUPLICATE.

Requests arrive as bytes and are parsed here, so an undecodable request is INVALID_ARGUMENT
with a reason rather than gRPC's generic INTERNAL.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from typing import Callable, Mapping, Optional

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from datapipelines import records
from datapipelines.ingest.v1 import ingest_service_pb2 as pb
from services.ingest import validation
from services.ingest.auth import AuthError, KeyStore, Principal
from services.ingest.config import Limits
from services.ingest.dedup import DedupWindow
from services.ingest.kafka_sink import Delivery, KafkaSink
from services.ingest.metrics import Metrics

LOG = logging.getLogger("ingest.servicer")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IngestService"].full_name
RETRY_AFTER_TRAILER = "retry-after-ms"
DLQ_STAGE = "ingest"

# Headers every record written by the service carries besides the contract headers.
HEADER_TENANT = "dp.ingest.tenant"
HEADER_PRODUCER = "dp.ingest.producer"
HEADER_EVENT_ID = "dp.ingest.event-id"
# On dead letters only: the schema name the producer claimed (it may be unknown or wrong).
HEADER_CLAIMED_SCHEMA = "dp.ingest.schema-name"


class BatchFailed(Exception):
    """The whole call fails with `code`; `retry_after_ms` is set when retrying is the remedy."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_after_ms: Optional[int] = None):
        super().__init__(details)
        self.code = code
        self.details = details
        self.retry_after_ms = retry_after_ms


class InFlightBudget:
    """Events admitted and not yet confirmed by Kafka, bounded; waiters are served in order."""

    def __init__(self, capacity: int, on_change: Optional[Callable[[int], None]] = None):
        self.capacity = capacity
        self.used = 0
        self._waiters: collections.deque = collections.deque()
        self._on_change = on_change

    async def acquire(self, n: int, timeout: float) -> bool:
        if n > self.capacity:
            return False
        if not self._waiters and self.used + n <= self.capacity:
            self._take(n)
            return True
        if timeout <= 0:
            return False
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((n, future))
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except asyncio.TimeoutError:
            self._wake()  # a large waiter giving up may let smaller ones in
            return False
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(n)  # granted just as the caller went away
            else:
                self._wake()
            raise

    def release(self, n: int) -> None:
        if n:
            self.used -= n
            if self._on_change:
                self._on_change(self.used)
            self._wake()

    def _take(self, n: int) -> None:
        self.used += n
        if self._on_change:
            self._on_change(self.used)

    def _wake(self) -> None:
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + n > self.capacity:
                return
            self._waiters.popleft()
            self._take(n)
            future.set_result(True)


class IngestServicer:
    def __init__(
        self,
        keys: Callable[[], KeyStore],
        sink: KafkaSink,
        contracts: Mapping[str, validation.Contract],
        limits: Limits,
        dedup: DedupWindow,
        budget: InFlightBudget,
        metrics: Metrics,
        *,
        admission_wait_seconds: float,
        ack_timeout_seconds: float,
        retry_after_ms: int,
        max_batches_per_stream: int,
        clock: Callable[[], float] = time.time,
    ):
        self._keys = keys
        self._sink = sink
        self._contracts = contracts
        self._limits = limits
        self._dedup = dedup
        self._budget = budget
        self._metrics = metrics
        self._admission_wait = admission_wait_seconds
        self._ack_timeout = ack_timeout_seconds
        self._retry_after_ms = retry_after_ms
        self._max_batches_per_stream = max_batches_per_stream
        self._clock = clock
        # (tenant, event_id) -> (Delivery, record index): written, Kafka has not answered yet.
        self._pending: dict[tuple, tuple] = {}
        self._draining = asyncio.Event()
        self._active_batches = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- gRPC ------------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Publish": grpc.unary_unary_rpc_method_handler(
                self.Publish, request_deserializer=None, response_serializer=pb.PublishResponse.SerializeToString),
            "PublishStream": grpc.stream_stream_rpc_method_handler(
                self.PublishStream, request_deserializer=None,
                response_serializer=pb.PublishStreamResponse.SerializeToString),
        })

    async def Publish(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.PublishResponse:
        principal = await self._authenticate(context)
        try:
            batch = pb.PublishRequest.FromString(request).batch
        except DecodeError:
            await self._fail(context, "Publish", BatchFailed(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request is not a valid %s (bad protobuf encoding or invalid UTF-8 in a string field)"
                % pb.PublishRequest.DESCRIPTOR.full_name))
        try:
            ack = await self._publish(batch, principal, "Publish")
        except BatchFailed as failure:
            await self._fail(context, "Publish", failure)
        return pb.PublishResponse(ack=ack)

    async def PublishStream(self, requests, context: grpc.aio.ServicerContext):
        principal = await self._authenticate(context)
        self._metrics.open_streams.inc()
        acks: asyncio.Queue = asyncio.Queue()
        window = asyncio.Semaphore(self._max_batches_per_stream)
        reader = asyncio.ensure_future(self._read_stream(requests, principal, acks, window))
        try:
            while True:
                task = await acks.get()
                if task is None:
                    break
                try:
                    ack = await task
                except BatchFailed as failure:
                    reader.cancel()
                    await self._fail(context, "PublishStream", failure)
                window.release()
                yield pb.PublishStreamResponse(ack=ack)
            ending = reader.result()
            if ending is not None:
                await self._fail(context, "PublishStream", ending)
        finally:
            self._metrics.open_streams.dec()
            reader.cancel()
            while not acks.empty():
                task = acks.get_nowait()
                if task is not None:
                    task.cancel()

    async def _read_stream(self, requests, principal: Principal, acks: asyncio.Queue,
                           window: asyncio.Semaphore) -> Optional[BatchFailed]:
        """Reads batches and starts them; returns None at the end of the stream, else why it stopped."""
        iterator = requests.__aiter__()
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            while True:
                await window.acquire()  # at most N unacknowledged batches: HTTP/2 flow control does the rest
                if self._draining.is_set():
                    return self._shutting_down()
                next_request = asyncio.ensure_future(iterator.__anext__())
                done, _ = await asyncio.wait({next_request, draining}, return_when=asyncio.FIRST_COMPLETED)
                if next_request not in done:
                    next_request.cancel()
                    return self._shutting_down()
                try:
                    raw = next_request.result()
                except StopAsyncIteration:
                    return None
                try:
                    batch = pb.PublishStreamRequest.FromString(raw).batch
                except DecodeError:
                    return BatchFailed(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "a stream message is not a valid %s (bad protobuf encoding or invalid UTF-8 in a string "
                        "field); batches acknowledged before it stand" % pb.PublishStreamRequest.DESCRIPTOR.full_name)
                acks.put_nowait(asyncio.ensure_future(self._publish(batch, principal, "PublishStream")))
        finally:
            draining.cancel()
            acks.put_nowait(None)

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        try:
            return self._keys().authenticate(context.invocation_metadata())
        except AuthError as err:
            self._metrics.auth_failures.inc()
            LOG.info("event=unauthenticated peer=%s reason=%r", context.peer(), str(err))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(err))

    async def _fail(self, context: grpc.aio.ServicerContext, rpc: str, failure: BatchFailed) -> None:
        self._metrics.batches.labels(rpc, failure.code.name).inc()
        trailers = ()
        if failure.retry_after_ms is not None:
            trailers = ((RETRY_AFTER_TRAILER, str(failure.retry_after_ms)),)
        await context.abort(failure.code, failure.details, trailing_metadata=trailers)

    def _retryable(self, code: grpc.StatusCode, details: str) -> BatchFailed:
        return BatchFailed(code, details, self._retry_after_ms)

    def _shutting_down(self) -> BatchFailed:
        return self._retryable(grpc.StatusCode.UNAVAILABLE,
                               "the service is shutting down; resend unacknowledged batches (same event ids) "
                               "on a new call")

    # -- one batch -------------------------------------------------------------------------

    async def _publish(self, batch: pb.PublishBatch, principal: Principal, rpc: str) -> pb.BatchAck:
        started = time.monotonic()
        envelopes = batch.envelopes
        count = len(envelopes)
        if count == 0:
            raise BatchFailed(grpc.StatusCode.INVALID_ARGUMENT, "batch %r has no envelopes; send at least one"
                              % batch.batch_id)
        if count > self._limits.max_batch_events:
            raise BatchFailed(grpc.StatusCode.INVALID_ARGUMENT, "batch %r has %d envelopes; at most %d per batch"
                              % (batch.batch_id, count, self._limits.max_batch_events))
        if self._draining.is_set():
            raise self._shutting_down()
        if not self._sink.available:
            raise self._retryable(grpc.StatusCode.UNAVAILABLE,
                                  "Kafka is unreachable; nothing of this batch was written, retry it later")
        self._active_batches += 1
        self._idle.clear()
        self._metrics.in_flight_batches.inc()
        try:
            if not await self._budget.acquire(count, self._admission_wait):
                raise self._retryable(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      "%d events are already waiting for Kafka; nothing of this batch was written, "
                                      "retry it later" % self._budget.used)
            ack = await self._publish_admitted(batch, principal, count)
        finally:
            self._active_batches -= 1
            self._metrics.in_flight_batches.dec()
            if self._active_batches == 0:
                self._idle.set()
        self._metrics.batches.labels(rpc, "OK").inc()
        self._metrics.batch_size.observe(count)
        self._metrics.ack_latency.labels(rpc).observe(time.monotonic() - started)
        return ack

    async def _publish_admitted(self, batch: pb.PublishBatch, principal: Principal, count: int) -> pb.BatchAck:
        tenant = principal.tenant
        try:
            sorted_batch = self._sort(batch, principal)
        except BaseException:
            self._budget.release(count)  # a bug in a rule must not leak capacity
            raise
        rejections, to_write, accepted_ids, accepted_schemas, dead_letters, joined = sorted_batch
        accepted_count = len(accepted_ids)
        pending = self._pending

        # Capacity beyond what is written goes back now; the rest when Kafka has answered.
        self._budget.release(count - len(to_write))
        delivery = Delivery(asyncio.get_running_loop(), len(to_write),
                            functools.partial(self._delivered, tenant, accepted_ids))
        for record_index, event_id in enumerate(accepted_ids):
            pending[(tenant, event_id)] = (delivery, record_index)
        produced = self._sink.send(to_write, delivery)
        delivery.seal(produced)

        deadline = time.monotonic() + self._ack_timeout
        await self._await_delivery(delivery, deadline, "the batch")
        if delivery.errors:
            first = min(delivery.errors)
            if produced < len(to_write):
                raise self._retryable(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      "the Kafka producer queue is full; %d of %d events were not written, "
                                      "resend the batch with the same event ids"
                                      % (len(to_write) - produced, len(to_write)))
            raise self._retryable(grpc.StatusCode.UNAVAILABLE,
                                  "Kafka did not take %d of %d records (first: %s); resend the batch with the same "
                                  "event ids" % (len(delivery.errors), len(to_write), delivery.errors[first]))
        for index, event_id, earlier, record_index in joined:
            await self._await_delivery(earlier, deadline, "an earlier call's delivery of event %r" % event_id)
            if record_index in earlier.errors:
                raise self._retryable(grpc.StatusCode.UNAVAILABLE,
                                      "event %r of an earlier call did not reach Kafka; resend the batch" % event_id)
            rejections.append((index, event_id, validation.DUPLICATE,
                               "event_id %r was accepted by an earlier call: it is in Kafka once" % event_id))

        metrics = self._metrics
        for schema, n in accepted_schemas.items():
            metrics.accepted.labels(schema).inc(n)
        if rejections:
            rejections.sort()
            by_reason = collections.Counter(reason for _, _, reason, _ in rejections)
            for reason, n in by_reason.items():
                metrics.rejected.labels(validation.reason_code(reason)).inc(n)
            if dead_letters:
                metrics.dead_lettered.inc(len(dead_letters))
            if LOG.isEnabledFor(logging.DEBUG):
                LOG.debug("event=batch_rejections tenant=%s batch_id=%r rejected=%d reasons=%s", tenant,
                          batch.batch_id, len(rejections),
                          ",".join("%s:%d" % (validation.reason_code(r), n) for r, n in sorted(by_reason.items())))
        now = self._clock()
        seconds = int(now)
        return pb.BatchAck(
            batch_id=batch.batch_id,
            accepted_count=accepted_count,
            rejections=[pb.Rejection(index=i, event_id=e, reason=r, detail=d) for i, e, r, d in rejections],
            ack_time=timestamp_pb2.Timestamp(seconds=seconds, nanos=int((now - seconds) * 1e9)),
        )

    def _sort(self, batch: pb.PublishBatch, principal: Principal) -> tuple:
        """Validates and deduplicates a batch: what to answer, write, and wait for."""
        tenant = principal.tenant
        contracts = self._contracts
        limits = self._limits
        dedup = self._dedup
        pending = self._pending
        server_time = validation.ServerTime(self._clock())
        tenant_header = (HEADER_TENANT, tenant.encode())

        rejections: list[tuple] = []  # (index, event_id, reason, detail)
        to_write: list[tuple] = []  # (topic, key, value, headers): accepted events, then dead letters
        accepted_ids: list[str] = []  # event ids of to_write[:len(accepted_ids)]
        accepted_schemas: collections.Counter = collections.Counter()
        dead_letters: list[tuple] = []
        joined: list[tuple] = []  # (index, event_id, pending Delivery, its record index)
        in_batch: set = set()
        for index, envelope in enumerate(batch.envelopes):
            event_id = envelope.event_id
            try:
                accepted = validation.validate(envelope, principal, contracts, limits, server_time)
            except validation.Rejected as rejected:
                rejections.append((index, event_id, rejected.reason, rejected.detail))
                dead_letters.append(self._dead_letter(envelope, rejected, tenant_header))
                continue
            if event_id in in_batch or dedup.seen(tenant, event_id):
                rejections.append((index, event_id, validation.DUPLICATE,
                                   "event_id %r was already accepted: it is in Kafka once" % event_id))
                continue
            in_batch.add(event_id)
            earlier = pending.get((tenant, event_id))
            if earlier is not None:
                joined.append((index, event_id) + earlier)
                continue
            contract = accepted.contract
            to_write.append((contract.topic.name, accepted.key, accepted.value, list(contract.headers) + [
                tenant_header,
                (HEADER_PRODUCER, envelope.producer_id.encode()),
                (HEADER_EVENT_ID, event_id.encode()),
            ]))
            accepted_ids.append(event_id)
            accepted_schemas[contract.schema_name] += 1
        to_write.extend(dead_letters)
        return rejections, to_write, accepted_ids, accepted_schemas, dead_letters, joined

    async def _await_delivery(self, delivery: Delivery, deadline: float, what: str) -> None:
        if delivery.future.done():
            return
        try:
            # shield: a caller that goes away must not cancel the delivery others may be joined to.
            await asyncio.wait_for(asyncio.shield(delivery.future), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise self._retryable(grpc.StatusCode.UNAVAILABLE,
                                  "Kafka did not confirm %s within %g s; resend the batch with the same event ids "
                                  "(events Kafka confirms meanwhile come back DUPLICATE)" % (what, self._ack_timeout)) from None

    def _delivered(self, tenant: str, accepted_ids: list, delivery: Delivery) -> None:
        """On the loop, when Kafka answered for every record of a batch (even if its caller left)."""
        errors = delivery.errors
        pending = self._pending
        confirmed = []
        for record_index, event_id in enumerate(accepted_ids):
            entry = pending.get((tenant, event_id))
            if entry is not None and entry[0] is delivery:
                del pending[(tenant, event_id)]
            if record_index not in errors:
                confirmed.append(event_id)
        self._dedup.remember(tenant, confirmed)
        self._budget.release(delivery.count)
        if errors:
            LOG.warning("event=delivery_failed tenant=%s records=%d failed=%d first_error=%r", tenant, delivery.count,
                        len(errors), errors[min(errors)])

    def _dead_letter(self, envelope, rejected: validation.Rejected, tenant_header: tuple) -> tuple:
        contract = self._contracts.get(envelope.schema_name)
        topic = validation.dead_letter_topic(contract)
        source = contract.topic.name if contract is not None else validation.ACCEPTED_TOPICS[0].name
        payload = envelope.payload
        detail = rejected.detail
        if len(payload) > self._limits.max_event_bytes:
            detail += " (dead letter keeps the first %d bytes)" % self._limits.max_event_bytes
            payload = payload[: self._limits.max_event_bytes]
        headers = records.dead_letter_headers(
            records.MalformedRecord(rejected.code, detail), source, None, None, DLQ_STAGE,
            [tenant_header,
             (HEADER_PRODUCER, envelope.producer_id[:validation.MAX_PRODUCER_ID].encode()),
             (HEADER_EVENT_ID, envelope.event_id[:validation.MAX_EVENT_ID].encode()),
             (HEADER_CLAIMED_SCHEMA, envelope.schema_name[:validation.MAX_SCHEMA_NAME].encode())])
        return (topic.name, None, payload, headers)

    # -- shutdown --------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """No new batches: new calls and streams get UNAVAILABLE, streams stop reading."""
        self._draining.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Waits until no batch is in progress; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    @property
    def pending_events(self) -> int:
        return len(self._pending)
