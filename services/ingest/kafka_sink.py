"""The Kafka side of the service: one idempotent producer (acks=all) and its delivery reports.

Records are produced from the event loop, and the loop also serves librdkafka's delivery
reports (a task polling every half millisecond while records are outstanding): a separate poll
thread would fight the loop for the GIL on every report. Reports count down per `Delivery`
(one per batch), which resolves once Kafka has answered for every record of it. The sink also
tracks whether Kafka is reachable: librdkafka reports "all brokers down", and a probe (a
metadata request, in a worker thread) says when it is back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import Callable, Optional, Sequence

from confluent_kafka import KafkaError, KafkaException, Producer

LOG = logging.getLogger("ingest.kafka")

PROBE_INTERVAL_SECONDS = 1.0
BUSY_POLL_SECONDS = 0.0005  # while records await their delivery reports
IDLE_POLL_SECONDS = 0.02


class Delivery:
    """Kafka's answer for `count` records produced together, resolved on the event loop.

    `errors` maps the index of every record Kafka did not take to the error. `future` resolves
    (always with None) when every produced record has a delivery report; `on_done(delivery)`
    then runs on the loop.
    """

    __slots__ = ("count", "errors", "future", "started", "_remaining", "_lock", "_loop", "_on_done")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, on_done: Optional[Callable[["Delivery"], None]] = None):
        self.count = count
        self.errors: dict[int, str] = {}
        self.future: asyncio.Future = loop.create_future()
        self.started = time.monotonic()
        self._remaining = count + 1  # +1: released by seal(), once producing is over
        self._lock = threading.Lock()
        self._loop = loop
        self._on_done = on_done

    def callback(self, index: int):
        return functools.partial(self._report, index)

    def _report(self, index: int, err, _msg) -> None:  # wherever poll() or flush() runs
        if err is not None:
            self.errors[index] = str(err)
        self._count_down(1)

    def seal(self, produced: int) -> None:
        """Producing is over: `produced` of `count` records were handed to librdkafka."""
        for index in range(produced, self.count):
            self.errors[index] = "not produced: the producer queue is full"
        self._count_down(self.count - produced + 1)

    def _count_down(self, n: int) -> None:
        with self._lock:
            self._remaining -= n
            done = self._remaining == 0
        if done:
            self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.future.done():
            self.future.set_result(None)
        if self._on_done is not None:
            self._on_done(self)

    @property
    def ok(self) -> bool:
        return self.future.done() and not self.errors


class KafkaSink:
    """Produces records and reports deliveries; `available` is False while Kafka is unreachable."""

    def __init__(self, config: dict, loop: asyncio.AbstractEventLoop, probe_topic: str,
                 on_availability: Optional[Callable[[bool], None]] = None):
        self._loop = loop
        self._probe_topic = probe_topic
        self._on_availability = on_availability
        self.available = True
        self.fatal: Optional[str] = None
        self._stopping = False
        # librdkafka's own log lines go through logging (served by poll), not straight to stderr.
        self._producer = Producer({**config, "error_cb": self._on_error, "logger": logging.getLogger("ingest.librdkafka")})
        self._tasks: list = []

    def start(self) -> None:
        """Starts serving delivery reports on the running loop."""
        self._tasks = [asyncio.ensure_future(self._poll_loop()), asyncio.ensure_future(self._probe_loop())]

    # -- producing (event loop) -------------------------------------------------------------

    def send(self, records: Sequence[tuple], delivery: Delivery) -> int:
        """Produces (topic, key, value, headers) records; returns how many were queued.

        Stops at the first record the local queue refuses (BufferError); the caller seals the
        delivery with the count either way.
        """
        produce = self._producer.produce
        produced = 0
        try:
            for index, (topic, key, value, headers) in enumerate(records):
                produce(topic, value, key, headers=headers, on_delivery=delivery.callback(index))
                produced += 1
        except BufferError:
            LOG.warning("event=producer_queue_full produced=%d of=%d", produced, len(records))
        except KafkaException as err:  # e.g. the producer hit a fatal error
            LOG.error("event=produce_failed produced=%d of=%d error=%r", produced, len(records), str(err))
        return produced

    def queued(self) -> int:
        return len(self._producer)

    # -- reachability (error_cb runs inside poll) ---------------------------------------------------------

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = str(err)
            LOG.error("event=producer_fatal error=%r", str(err))
            self._set_available(False)
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            LOG.warning("event=kafka_unreachable error=%r", str(err))
            self._set_available(False)
        else:
            LOG.info("event=kafka_client_error error=%r", str(err))

    def _set_available(self, available: bool) -> None:
        if self.fatal and available:
            return
        if available != self.available:
            self.available = available
            if available:
                LOG.info("event=kafka_reachable")
            if self._on_availability is not None:
                self._loop.call_soon_threadsafe(self._on_availability, available)

    async def _poll_loop(self) -> None:
        poll = self._producer.poll
        producer = self._producer
        while not self._stopping:
            poll(0)
            await asyncio.sleep(BUSY_POLL_SECONDS if len(producer) else IDLE_POLL_SECONDS)

    async def _probe_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            if not self.available and not self.fatal and await asyncio.to_thread(self._kafka_answers):
                self._set_available(True)

    def _kafka_answers(self) -> bool:
        try:
            metadata = self._producer.list_topics(topic=self._probe_topic, timeout=PROBE_INTERVAL_SECONDS)
        except KafkaException:
            return False
        topic = metadata.topics.get(self._probe_topic)
        return bool(metadata.brokers) and topic is not None and topic.error is None and all(
            p.leader >= 0 for p in topic.partitions.values())

    # -- shutdown ---------------------------------------------------------------------------

    def stop_polling(self) -> None:
        """Stops the loop's polling; `flush` (in a worker thread) serves the last reports."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()

    def flush(self, timeout: float) -> int:
        """Waits up to `timeout` for outstanding records (blocking: call in a worker thread); returns those left."""
        self._stopping = True
        left = self._producer.flush(timeout)
        if left:
            LOG.error("event=flush_incomplete records_left=%d timeout_seconds=%g", left, timeout)
        return left
