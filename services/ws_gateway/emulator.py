"""N emulated users: one asyncio task each, driving `model.Visitor` and sending through the forwarder.

Every emulated event is a protocol JSON object parsed by `protocol.parse_event`, exactly as a
WebSocket client's, then submitted to the same `Forwarder`. Pacing: each visitor's model waits
are scaled so that N visitors together produce about `rate` events per second, and a shared
token bucket keeps the total at or below `rate`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
import uuid
from typing import Optional

from services.ws_gateway import model, protocol
from services.ws_gateway.forwarder import Forwarder, ForwarderClosed
from services.ws_gateway.metrics import Metrics

LOG = logging.getLogger("ws_gateway.emulator")


@dataclasses.dataclass
class Stats:
    produced: int = 0
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    failed: int = 0
    late: int = 0
    sessions: int = 0
    by_type: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    started: float = 0.0
    stopped: float = 0.0

    @property
    def settled(self) -> int:
        return self.accepted + self.duplicate + self.rejected + self.failed

    def summary(self) -> str:
        seconds = (self.stopped or time.monotonic()) - self.started
        return ("produced=%d accepted=%d duplicate=%d rejected=%d failed=%d late=%d sessions=%d seconds=%.1f "
                "acked_events_per_second=%.1f" % (self.produced, self.accepted, self.duplicate, self.rejected,
                                                  self.failed, self.late, self.sessions, seconds,
                                                  (self.accepted + self.duplicate) / seconds if seconds > 0 else 0.0))


class TokenBucket:
    """At most `rate` takes per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: Optional[float] = None):
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 10.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.rate)


class Emulator:
    def __init__(self, forwarder: Forwarder, users: int, rate: float, *, seed: int = 7, late_fraction: float = 0.02,
                 max_lateness_seconds: float = 120.0, metrics: Optional[Metrics] = None,
                 run_id: Optional[str] = None):
        self.forwarder = forwarder
        self.users = users
        self.rate = rate
        self.seed = seed
        self.late_fraction = late_fraction
        self.max_lateness_seconds = max_lateness_seconds
        self.metrics = metrics or forwarder.metrics
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.stats = Stats()
        # Model seconds → wall seconds: N visitors at MEAN_WAIT model seconds per event give `rate`.
        self.time_scale = users / rate / model.MEAN_WAIT if users else 1.0
        self._bucket = TokenBucket(rate)
        self._tasks: list = []
        self._outstanding: set = set()

    def start(self) -> None:
        self.stats.started = time.monotonic()
        LOG.info("event=emulation_started users=%d rate=%g run_id=%s late_fraction=%g", self.users, self.rate,
                 self.run_id, self.late_fraction)
        self._tasks = [asyncio.ensure_future(self._user(i)) for i in range(self.users)]

    async def run_for(self, seconds: float) -> Stats:
        """Emulates for `seconds` (0: until cancelled), then stops and waits for the last acks."""
        self.start()
        try:
            if seconds > 0:
                await asyncio.sleep(seconds)
            else:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            await self.stop(settle_seconds=0)  # the gateway is stopping: the forwarder's drain settles them
            raise
        return await self.stop()

    async def stop(self, settle_seconds: float = 30.0) -> Stats:
        """Stops the users; waits up to `settle_seconds` for the events they sent to be settled."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._outstanding and settle_seconds > 0:
            await asyncio.wait(list(self._outstanding), timeout=settle_seconds)
        self.stats.stopped = time.monotonic()
        LOG.info("event=emulation_stopped users=%d %s", self.users, self.stats.summary())
        return self.stats

    async def _user(self, index: int) -> None:
        visitor = model.Visitor(index, self.seed, self.run_id, self.late_fraction, self.max_lateness_seconds)
        # Spread the first events over one mean wait, so users do not start in lock step.
        await asyncio.sleep(self.time_scale * model.MEAN_WAIT * index / max(1, self.users))
        while True:
            await self._bucket.take()
            step = visitor.step(time.time())
            event = protocol.parse_event(step.message)
            try:
                future = await self.forwarder.submit(event, source="emulator")
            except ForwarderClosed:
                return
            self.stats.produced += 1
            self.stats.late += step.late
            self.stats.sessions += step.new_session
            self.stats.by_type[step.message["event_type"]] += 1
            self.metrics.emulated.labels(step.message["event_type"]).inc()
            self._outstanding.add(future)
            future.add_done_callback(self._settled)
            await asyncio.sleep(step.wait * self.time_scale)

    def _settled(self, future: asyncio.Future) -> None:
        self._outstanding.discard(future)
        if future.cancelled():
            self.stats.failed += 1
            return
        result = future.result()
        if result.accepted:
            if result.duplicate:
                self.stats.duplicate += 1
            else:
                self.stats.accepted += 1
        elif result.retry:
            self.stats.failed += 1
        else:
            self.stats.rejected += 1
            self.stats.reasons[result.reason[:120]] += 1
