"""Valid UserEvents of every type, for the example client, the tests and the benchmark.

`user_event(n)` is a pure function of `n` (and the clock passed in): event ids are
`<prefix>-<n>`, sessions rotate over `sessions`, event types cycle through all of them with
their matching properties, so a reader can recompute what was sent.
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator, Optional

from google.protobuf import timestamp_pb2

from datapipelines.behaviour.v1 import user_event_pb2 as ue
from datapipelines.common.v1 import money_pb2
from datapipelines.ingest.v1 import envelope_pb2, ingest_service_pb2

SCHEMA_NAME = ue.UserEvent.DESCRIPTOR.full_name
EVENT_TYPES = tuple(v.number for v in ue.UserEventType.DESCRIPTOR.values if v.number != 0)


def user_event(n: int, prefix: str = "ev", sessions: int = 100, now: Optional[float] = None) -> ue.UserEvent:
    now = time.time() if now is None else now
    event_type = EVENT_TYPES[n % len(EVENT_TYPES)]
    client_seconds = int(now) - 1 - (n % 30)
    event = ue.UserEvent(
        event_id="%s-%d" % (prefix, n),
        user_id="user-%d" % (n % 37) if n % 3 else "",
        session_id="session-%d" % (n % sessions),
        anonymous_id="anon-%d" % (n % 53),
        event_type=event_type,
        page=ue.PageContext(url="https://shop.example/p/%d?ref=x" % (n % 200), path="/p/%d" % (n % 200),
                            title="Product %d" % (n % 200)),
        user_agent="Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        device=ue.DeviceInfo(category=ue.DEVICE_CATEGORY_DESKTOP, os_name="Linux", browser_name="Firefox",
                             browser_version="128.0", screen_width_px=1920, screen_height_px=1080, locale="de-DE"),
        client_time=timestamp_pb2.Timestamp(seconds=client_seconds, nanos=(n * 7919) % 1_000_000_000),
    )
    price = money_pb2.Money(currency_code="EUR", amount_minor=1999 + n % 500)
    if event_type == ue.USER_EVENT_TYPE_PRODUCT_VIEW:
        event.product.CopyFrom(ue.ProductProperties(product_id="sku-%d" % (n % 200), category="shoes/running", price=price))
    elif event_type == ue.USER_EVENT_TYPE_CLICK:
        event.click.CopyFrom(ue.ClickProperties(element_id="buy-button", element_text="Buy now"))
    elif event_type == ue.USER_EVENT_TYPE_SCROLL:
        event.scroll.depth_percent = n % 101
    elif event_type == ue.USER_EVENT_TYPE_SEARCH:
        event.search.CopyFrom(ue.SearchProperties(query="running shoes %d" % (n % 10), result_count=n % 40))
    elif event_type in (ue.USER_EVENT_TYPE_ADD_TO_CART, ue.USER_EVENT_TYPE_REMOVE_FROM_CART):
        event.cart.CopyFrom(ue.CartProperties(product_id="sku-%d" % (n % 200), category="shoes/running",
                                              quantity=1 + n % 3, unit_price=price))
    elif event_type == ue.USER_EVENT_TYPE_CHECKOUT:
        event.checkout.CopyFrom(ue.CheckoutProperties(checkout_id="co-%d" % n, item_count=2, cart_total=price))
    elif event_type == ue.USER_EVENT_TYPE_PURCHASE:
        event.purchase.CopyFrom(ue.PurchaseProperties(order_id="order-%d" % n, item_count=2, order_total=price))
    if n % 5 == 0:
        event.attributes["ab.variant"] = "B"
    return event


def envelope(event: ue.UserEvent, tenant: str, producer: str = "sample-client") -> envelope_pb2.Envelope:
    return envelope_pb2.Envelope(
        event_id=event.event_id,
        tenant_id=tenant,
        producer_id=producer,
        schema_name=SCHEMA_NAME,
        payload=event.SerializeToString(),
        produce_time=timestamp_pb2.Timestamp(seconds=int(time.time())),
    )


def batch(envelopes: Iterable[envelope_pb2.Envelope], batch_id: str) -> ingest_service_pb2.PublishBatch:
    return ingest_service_pb2.PublishBatch(batch_id=batch_id, envelopes=list(envelopes))


def batches(count: int, batch_size: int, tenant: str, prefix: str = "ev", start: int = 0,
            now: Optional[float] = None) -> Iterator[ingest_service_pb2.PublishBatch]:
    """`count` valid events from number `start` on, in batches of `batch_size` (batch ids `<prefix>-b<first event number>`)."""
    now = time.time() if now is None else now
    for first in range(start, start + count, batch_size):
        last = min(first + batch_size, start + count)
        yield batch((envelope(user_event(n, prefix, now=now), tenant) for n in range(first, last)),
                    "%s-b%d" % (prefix, first))
