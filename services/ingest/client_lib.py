"""A small IngestService client that retries until every batch is acknowledged.

Uses the generated stubs (no reflection). `deliver()` sends batches over PublishStream; when a
call fails with a retryable status (UNAVAILABLE, RESOURCE_EXHAUSTED, ...) it waits for the
server's `retry-after-ms` hint (or its own backoff) and resends every batch not yet
acknowledged, with the same event ids: events that did reach Kafka come back DUPLICATE, so
nothing is written twice and nothing acknowledged is lost.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Optional, Sequence

import grpc

from datapipelines.ingest.v1 import ingest_service_pb2 as pb
from datapipelines.ingest.v1 import ingest_service_pb2_grpc as pb_grpc

RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
})
RETRY_AFTER_TRAILER = "retry-after-ms"


def retry_after_ms(error: grpc.RpcError) -> Optional[int]:
    """The server's retry hint from the trailing metadata, if any."""
    try:
        trailers = error.trailing_metadata() or ()
    except Exception:  # not a call error (e.g. a channel that never connected)
        return None
    for key, value in trailers:
        if key == RETRY_AFTER_TRAILER:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def delivered_indexes(batch: pb.PublishBatch, ack: pb.BatchAck) -> list[int]:
    """Positions of the batch's events that are in Kafka: accepted, or DUPLICATE (accepted before)."""
    rejected = {r.index for r in ack.rejections if r.reason != pb.REJECTION_REASON_DUPLICATE}
    return [i for i in range(len(batch.envelopes)) if i not in rejected]


@dataclasses.dataclass
class Outcome:
    acks: dict  # batch_id -> BatchAck (the one that settled the batch)
    calls: int = 0
    retries: int = 0
    errors: list = dataclasses.field(default_factory=list)  # (status code name, details, retry-after-ms)

    def accepted(self) -> int:
        return sum(a.accepted_count for a in self.acks.values())

    def rejections(self) -> list:
        return [r for a in self.acks.values() for r in a.rejections]


class IngestClient:
    def __init__(self, target: str, api_key: str, *, root_certificates: Optional[bytes] = None,
                 private_key: Optional[bytes] = None, certificate_chain: Optional[bytes] = None,
                 server_name: Optional[str] = None, bearer: bool = False):
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024),
                   ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.IngestServiceStub(self.channel)
        self.metadata = (("authorization", "Bearer " + api_key),) if bearer else (("x-api-key", api_key),)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "IngestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def publish(self, batch: pb.PublishBatch, timeout: float = 30.0) -> pb.BatchAck:
        """One unary Publish; raises grpc.RpcError."""
        return self.stub.Publish(pb.PublishRequest(batch=batch), metadata=self.metadata, timeout=timeout).ack

    def stream(self, batches: Iterable[pb.PublishBatch], timeout: Optional[float] = None,
               batches_per_second: Optional[float] = None):
        """Acks of one PublishStream call, as they come; raises grpc.RpcError."""
        def requests():
            for batch in batches:
                yield pb.PublishStreamRequest(batch=batch)
                if batches_per_second:
                    time.sleep(1.0 / batches_per_second)

        call = self.stub.PublishStream(requests(), metadata=self.metadata, timeout=timeout)
        try:
            for response in call:
                yield response.ack
        finally:
            call.cancel()  # settles the call (and its request thread) before the channel goes away

    def deliver(self, batches: Sequence[pb.PublishBatch], *, unary: bool = False, give_up_after: float = 120.0,
                backoff_seconds: float = 0.2, max_backoff_seconds: float = 2.0, call_timeout: float = 60.0,
                batches_per_second: Optional[float] = None) -> Outcome:
        """Sends until every batch has an acknowledgement; retries retryable failures.

        `batches_per_second` paces a stream (a simple rate limit for demos and tests).
        """
        unacked = {b.batch_id: b for b in batches}
        if len(unacked) != len(batches):
            raise ValueError("batch ids must be unique")
        outcome = Outcome(acks={})
        deadline = time.monotonic() + give_up_after
        delay = backoff_seconds
        while unacked:
            outcome.calls += 1
            try:
                if unary:
                    for batch_id, batch in list(unacked.items()):
                        outcome.acks[batch_id] = self.publish(batch, timeout=call_timeout)
                        del unacked[batch_id]
                else:
                    for ack in self.stream(list(unacked.values()), timeout=call_timeout,
                                           batches_per_second=batches_per_second):
                        outcome.acks[ack.batch_id] = ack
                        unacked.pop(ack.batch_id, None)
                delay = backoff_seconds
            except grpc.RpcError as error:
                code = error.code()
                hint = retry_after_ms(error)
                outcome.errors.append((code.name if code else "?", error.details(), hint))
                if code not in RETRYABLE:
                    raise
                if time.monotonic() > deadline:
                    raise TimeoutError("gave up after %.0f s with %d batches unacknowledged; last error %s: %s"
                                       % (give_up_after, len(unacked), code.name, error.details())) from error
                outcome.retries += 1
                time.sleep(min(max_backoff_seconds, hint / 1000.0 if hint is not None else delay))
                delay = min(max_backoff_seconds, delay * 2)
        return outcome
