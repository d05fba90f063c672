"""Recently accepted event ids per tenant, for REJECTION_REASON_DUPLICATE (bounded, in memory).

An id is remembered once Kafka confirmed its event, for `ttl_seconds` or until the tenant has
`max_per_tenant` newer ids, whichever ends first. Limits (docs/adr/0008-ingestion-service.md):
the window is per process, so a restart or another replica does not know the ids; a retry
after the window is written again. Consumers deduplicate on `event_id` as the contract says;
this window only keeps ordinary client retries out of the topic.
"""

from __future__ import annotations

import collections
import time
from typing import Callable


class DedupWindow:
    def __init__(self, max_per_tenant: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.max_per_tenant = max_per_tenant
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        # tenant -> event id -> expiry, oldest first
        self._ids: dict[str, collections.OrderedDict] = {}

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._ids.values())

    def seen(self, tenant: str, event_id: str) -> bool:
        ids = self._ids.get(tenant)
        if not ids:
            return False
        expiry = ids.get(event_id)
        if expiry is None:
            return False
        if expiry <= self._clock():
            del ids[event_id]
            return False
        return True

    def remember(self, tenant: str, event_ids) -> None:
        if self.max_per_tenant <= 0 or self.ttl_seconds <= 0:
            return
        ids = self._ids.get(tenant)
        if ids is None:
            ids = self._ids[tenant] = collections.OrderedDict()
        now = self._clock()
        expiry = now + self.ttl_seconds
        for event_id in event_ids:
            if event_id in ids:
                ids.move_to_end(event_id)
            ids[event_id] = expiry
        # Oldest first: evict beyond the size bound, then whatever has expired.
        excess = len(ids) - self.max_per_tenant
        for _ in range(excess if excess > 0 else 0):
            ids.popitem(last=False)
        while ids:
            oldest = next(iter(ids.values()))
            if oldest > now:
                break
            ids.popitem(last=False)
