"""Checks one envelope against its contract and the caller's rights (pure: no I/O, clock passed in).

`contracts()` maps every accepted `schema_name` to its topic, message class and rules, built
from the topics module: a schema is accepted when a topic carries it and this module has rules
for it. `validate()` either returns what to write to Kafka or raises `Rejected` with the reason
and a detail for people. The order of the checks is the order of their cost: envelope fields,
size, tenant, schema known and allowed (no parsing yet), payload parse, event type allowed,
then the contract's own rules.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, NamedTuple, Optional

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError, Message

from datapipelines import records, topics
from datapipelines.behaviour.v1 import user_event_pb2
from datapipelines.ingest.v1 import ingest_service_pb2
from services.ingest.auth import Principal
from services.ingest.config import Limits

R = ingest_service_pb2
MALFORMED_PAYLOAD = R.REJECTION_REASON_MALFORMED_PAYLOAD
UNKNOWN_SCHEMA = R.REJECTION_REASON_UNKNOWN_SCHEMA
UNAUTHORIZED = R.REJECTION_REASON_UNAUTHORIZED
VALIDATION_FAILED = R.REJECTION_REASON_VALIDATION_FAILED
DUPLICATE = R.REJECTION_REASON_DUPLICATE
TOO_LARGE = R.REJECTION_REASON_TOO_LARGE
MISSING_ENVELOPE_FIELD = R.REJECTION_REASON_MISSING_ENVELOPE_FIELD

REASON_NAMES: dict[int, str] = {v.number: v.name for v in R.RejectionReason.DESCRIPTOR.values}

# Envelope string limits (characters).
MAX_EVENT_ID = 128
MAX_TENANT_ID = 64
MAX_PRODUCER_ID = 128
MAX_SCHEMA_NAME = 256


def reason_code(reason: int) -> str:
    """Stable dead-letter code of a reason, e.g. REJECTION_REASON_TOO_LARGE -> "too-large"."""
    return REASON_NAMES.get(reason, "REJECTION_REASON_UNSPECIFIED")[len("REJECTION_REASON_"):].lower().replace("_", "-")


class Rejected(Exception):
    """One event is not accepted: `reason` is a RejectionReason number, `detail` is for people."""

    def __init__(self, reason: int, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    @property
    def code(self) -> str:
        return reason_code(self.reason)


class Invalid(Exception):
    """A contract rule is broken; becomes REJECTION_REASON_VALIDATION_FAILED."""


class ServerTime:
    """The service's clock for one batch: the Timestamp set on every accepted event, pre-encoded."""

    def __init__(self, now: float):
        self.now = now
        seconds = int(now)
        self.timestamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=int((now - seconds) * 1e9))
        self._encoded = self.timestamp.SerializeToString()
        self._suffixes: dict[int, bytes] = {}

    def suffix(self, field_number: int) -> bytes:
        """`field_number = this Timestamp` in the protobuf wire format, to append to a payload."""
        suffix = self._suffixes.get(field_number)
        if suffix is None:
            suffix = _varint(field_number << 3 | 2) + _varint(len(self._encoded)) + self._encoded
            self._suffixes[field_number] = suffix
        return suffix


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


@dataclasses.dataclass(frozen=True)
class Contract:
    """An accepted schema: where its events go and how they are checked."""

    schema_name: str
    topic: topics.Topic
    message_class: type
    # Name of the event's type for authorisation (e.g. USER_EVENT_TYPE_CLICK); raises Invalid.
    event_type: Callable[[Message], str]
    # The contract's rules; raises Invalid.
    check: Callable[[Message, str, float, Limits], None]
    headers: tuple  # contract headers (dp.schema, dp.schema.fingerprint)
    server_time_field: Optional[int]  # field number of `server_time`, set by the service


class Accepted(NamedTuple):
    """What to write to Kafka for one accepted event."""

    contract: Contract
    key: Optional[bytes]
    value: bytes
    event_type: str


def validate(envelope, principal: Principal, contracts: Mapping[str, Contract], limits: Limits,
             server_time: ServerTime) -> Accepted:
    """Checks one Envelope; returns what to publish or raises Rejected."""
    event_id = envelope.event_id
    tenant_id = envelope.tenant_id
    schema_name = envelope.schema_name
    payload = envelope.payload
    if not (event_id and tenant_id and schema_name and payload):
        missing = [name for name, value in (("event_id", event_id), ("tenant_id", tenant_id),
                                             ("schema_name", schema_name), ("payload", payload)) if not value]
        raise Rejected(MISSING_ENVELOPE_FIELD, "envelope field(s) %s empty; set them" % ", ".join(missing))
    if (len(event_id) > MAX_EVENT_ID or len(tenant_id) > MAX_TENANT_ID or len(schema_name) > MAX_SCHEMA_NAME
            or len(envelope.producer_id) > MAX_PRODUCER_ID):
        raise Rejected(VALIDATION_FAILED, "envelope ids too long: event_id <= %d, tenant_id <= %d, producer_id <= %d, "
                                          "schema_name <= %d characters"
                       % (MAX_EVENT_ID, MAX_TENANT_ID, MAX_PRODUCER_ID, MAX_SCHEMA_NAME))
    if len(payload) > limits.max_event_bytes:
        raise Rejected(TOO_LARGE, "payload is %d bytes; at most %d per event" % (len(payload), limits.max_event_bytes))
    if tenant_id != principal.tenant:
        raise Rejected(UNAUTHORIZED, "tenant_id %r is not the tenant of the API key (%r)" % (tenant_id, principal.tenant))
    contract = contracts.get(schema_name)
    if contract is None:
        raise Rejected(UNKNOWN_SCHEMA, "schema_name %r is not accepted; accepted: %s"
                       % (schema_name, ", ".join(sorted(contracts))))
    if not principal.may_publish(schema_name):
        raise Rejected(UNAUTHORIZED, "the API key of tenant %r may not publish %s" % (principal.tenant, schema_name))
    message = contract.message_class()
    try:
        message.ParseFromString(payload)
    except DecodeError as err:
        raise Rejected(MALFORMED_PAYLOAD, "payload (%d bytes) is not a valid %s: %s" % (len(payload), schema_name, err)) from None
    try:
        event_type = contract.event_type(message)
        if not principal.may_send(event_type):
            raise Rejected(UNAUTHORIZED, "the API key of tenant %r may not send %s" % (principal.tenant, event_type))
        contract.check(message, event_id, server_time.now, limits)
        key = contract.topic.key_of(message)
    except Invalid as err:
        raise Rejected(VALIDATION_FAILED, str(err)) from None
    field = contract.server_time_field
    if field is None:
        value = payload
    elif message.HasField("server_time"):
        # The client set what only the service may set: overwrite it (re-encoding the event).
        message.server_time.CopyFrom(server_time.timestamp)
        value = message.SerializeToString()
    else:
        # Appending the field keeps the producer's bytes (unknown fields included) as they were.
        value = payload + server_time.suffix(field)
    return Accepted(contract, key, value, event_type)


# --- datapipelines.behaviour.v1.UserEvent ------------------------------------------------

UE = user_event_pb2
EVENT_TYPE_NAMES: dict[int, str] = {v.number: v.name for v in UE.UserEventType.DESCRIPTOR.values}
DEVICE_CATEGORIES = frozenset(v.number for v in UE.DeviceCategory.DESCRIPTOR.values)

# Which member of `properties` each event type carries (the comments on UserEventType).
PROPERTIES_OF: dict[int, Optional[str]] = {
    UE.USER_EVENT_TYPE_PAGE_VIEW: None,
    UE.USER_EVENT_TYPE_PRODUCT_VIEW: "product",
    UE.USER_EVENT_TYPE_CLICK: "click",
    UE.USER_EVENT_TYPE_SCROLL: "scroll",
    UE.USER_EVENT_TYPE_SEARCH: "search",
    UE.USER_EVENT_TYPE_ADD_TO_CART: "cart",
    UE.USER_EVENT_TYPE_REMOVE_FROM_CART: "cart",
    UE.USER_EVENT_TYPE_CHECKOUT: "checkout",
    UE.USER_EVENT_TYPE_PURCHASE: "purchase",
}

MAX_ID = 128
MAX_URL = 8192
MAX_PATH = 2048
MAX_TEXT = 1024
MAX_ELEMENT_TEXT = 200  # the contract: "truncated to 200 characters"
MAX_SHORT = 128
MAX_LOCALE = 35  # BCP 47 tags longer than this are not in practical use
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY = 64  # the contract: "Keys are at most 64 characters"
MAX_SCREEN_PX = 100_000
MAX_COUNT = 1_000_000
MAX_AMOUNT_MINOR = 10 ** 15
_MAX_TIMESTAMP_SECONDS = 253402300799  # 9999-12-31T23:59:59Z, the Timestamp contract's range


def user_event_type(event) -> str:
    name = EVENT_TYPE_NAMES.get(event.event_type)
    if name is None:
        raise Invalid("event_type %d is not a known UserEventType" % event.event_type)
    if event.event_type == UE.USER_EVENT_TYPE_UNSPECIFIED:
        raise Invalid("event_type is USER_EVENT_TYPE_UNSPECIFIED; set an event type")
    return name


def _too_long(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise Invalid("%s is %d characters; at most %d" % (name, len(value), limit))


def _money(name: str, money) -> None:
    code = money.currency_code
    if len(code) != 3 or not code.isascii() or not code.isalpha() or not code.isupper():
        raise Invalid("%s.currency_code %r is not an ISO 4217 code such as 'EUR'" % (name, code[:16]))
    if not 0 <= money.amount_minor <= MAX_AMOUNT_MINOR:
        raise Invalid("%s.amount_minor %d is outside 0..%d" % (name, money.amount_minor, MAX_AMOUNT_MINOR))


def _count(name: str, value: int, low: int) -> None:
    if not low <= value <= MAX_COUNT:
        raise Invalid("%s is %d; expected %d..%d" % (name, value, low, MAX_COUNT))


def _required(name: str, value: str, limit: int = MAX_ID) -> None:
    if not value:
        raise Invalid("%s is empty; set it" % name)
    if len(value) > limit:
        raise Invalid("%s is %d characters; at most %d" % (name, len(value), limit))


_PAGE_LIMITS = (("url", MAX_URL), ("path", MAX_PATH), ("title", MAX_TEXT), ("referrer_url", MAX_URL))
_DEVICE_LIMITS = (("os_name", MAX_SHORT), ("browser_name", MAX_SHORT), ("browser_version", MAX_SHORT),
                  ("locale", MAX_LOCALE))


def _explain_lengths(prefix: str, message, limits) -> None:
    """Slow path of a grouped length check: raise for the first field over its limit."""
    for name, limit in limits:
        _too_long(prefix + name, getattr(message, name), limit)


def check_user_event(event, envelope_event_id: str, now: float, limits: Limits) -> None:
    """The rules of UserEvent beyond its wire format (event_type already checked).

    Runs for every event, so each field is read once and related checks are grouped; the
    detail of a failure is worked out only when a group fails.
    """
    event_id = event.event_id
    if event_id != envelope_event_id:
        raise Invalid("user_event.event_id %r differs from envelope.event_id %r; they must be equal"
                      % (event_id[:MAX_ID], envelope_event_id))
    session_id = event.session_id
    user_id = event.user_id
    anonymous_id = event.anonymous_id
    if not session_id or len(session_id) > MAX_ID:
        _required("user_event.session_id", session_id)
    if not user_id and not anonymous_id:
        raise Invalid("user_event has neither user_id nor anonymous_id; set one")
    if len(user_id) > MAX_ID or len(anonymous_id) > MAX_ID or len(event.user_agent) > MAX_TEXT:
        _explain_lengths("user_event.", event, (("user_id", MAX_ID), ("anonymous_id", MAX_ID), ("user_agent", MAX_TEXT)))

    if not event.HasField("client_time"):
        raise Invalid("user_event.client_time is not set; set it to when the event happened")
    client_time = event.client_time
    seconds = client_time.seconds
    nanos = client_time.nanos
    if not 0 <= nanos <= 999_999_999 or not 0 < seconds <= _MAX_TIMESTAMP_SECONDS:
        raise Invalid("user_event.client_time (%d s, %d ns) is not a valid timestamp" % (seconds, nanos))
    event_time = seconds + nanos * 1e-9
    if event_time > now + limits.max_clock_skew_seconds:
        raise Invalid("user_event.client_time is %.0f s ahead of the server's clock (at most %.0f s); "
                      "check the client's clock" % (event_time - now, limits.max_clock_skew_seconds))
    if event_time < now - limits.max_event_age_seconds:
        raise Invalid("user_event.client_time is %.0f s old (at most %.0f s)"
                      % (now - event_time, limits.max_event_age_seconds))

    page = event.page  # the default instance when unset: every string empty
    url = page.url
    path = page.path
    if len(url) > MAX_URL or len(path) > MAX_PATH or len(page.title) > MAX_TEXT or len(page.referrer_url) > MAX_URL:
        _explain_lengths("user_event.page.", page, _PAGE_LIMITS)
    event_type = event.event_type
    if event_type == UE.USER_EVENT_TYPE_PAGE_VIEW and not (url or path):
        raise Invalid("a USER_EVENT_TYPE_PAGE_VIEW needs page.url or page.path")

    device = event.device
    if device.category not in DEVICE_CATEGORIES:
        raise Invalid("user_event.device.category %d is not a known DeviceCategory" % device.category)
    width = device.screen_width_px
    height = device.screen_height_px
    if not (0 <= width <= MAX_SCREEN_PX and 0 <= height <= MAX_SCREEN_PX):
        raise Invalid("user_event.device screen size %dx%d is outside 0..%d px" % (width, height, MAX_SCREEN_PX))
    if (len(device.os_name) > MAX_SHORT or len(device.browser_name) > MAX_SHORT
            or len(device.browser_version) > MAX_SHORT or len(device.locale) > MAX_LOCALE):
        _explain_lengths("user_event.device.", device, _DEVICE_LIMITS)

    expected = PROPERTIES_OF[event_type]
    present = event.WhichOneof("properties")
    if present != expected:
        if expected is None:
            raise Invalid("a %s carries no properties, but %s is set" % (EVENT_TYPE_NAMES[event_type], present))
        raise Invalid("a %s needs properties.%s, but %s" % (
            EVENT_TYPE_NAMES[event_type], expected, "%s is set" % present if present else "none is set"))
    if present is not None:
        _PROPERTY_CHECKS[present](getattr(event, present))

    attributes = event.attributes
    if attributes:
        if len(attributes) > MAX_ATTRIBUTES:
            raise Invalid("user_event.attributes has %d entries; at most %d" % (len(attributes), MAX_ATTRIBUTES))
        for key, value in attributes.items():
            if not key or len(key) > MAX_ATTRIBUTE_KEY:
                raise Invalid("user_event.attributes key %r must be 1..%d characters" % (key[:80], MAX_ATTRIBUTE_KEY))
            _too_long("user_event.attributes[%s]" % key, value, MAX_TEXT)


def _check_click(click) -> None:
    _required("user_event.click.element_id", click.element_id, MAX_TEXT)
    _too_long("user_event.click.element_text", click.element_text, MAX_ELEMENT_TEXT)
    _too_long("user_event.click.target_url", click.target_url, MAX_URL)


def _check_scroll(scroll) -> None:
    if not 0 <= scroll.depth_percent <= 100:
        raise Invalid("user_event.scroll.depth_percent is %d; expected 0..100" % scroll.depth_percent)


def _check_search(search) -> None:
    _too_long("user_event.search.query", search.query, MAX_TEXT)
    _count("user_event.search.result_count", search.result_count, 0)


def _check_product(product) -> None:
    _required("user_event.product.product_id", product.product_id)
    _too_long("user_event.product.category", product.category, MAX_TEXT)
    if product.HasField("price"):
        _money("user_event.product.price", product.price)


def _check_cart(cart) -> None:
    _required("user_event.cart.product_id", cart.product_id)
    _too_long("user_event.cart.category", cart.category, MAX_TEXT)
    _count("user_event.cart.quantity", cart.quantity, 1)
    if cart.HasField("unit_price"):
        _money("user_event.cart.unit_price", cart.unit_price)


def _check_checkout(checkout) -> None:
    _required("user_event.checkout.checkout_id", checkout.checkout_id)
    _count("user_event.checkout.item_count", checkout.item_count, 0)
    if checkout.HasField("cart_total"):
        _money("user_event.checkout.cart_total", checkout.cart_total)


def _check_purchase(purchase) -> None:
    _required("user_event.purchase.order_id", purchase.order_id)
    _count("user_event.purchase.item_count", purchase.item_count, 1)
    if not purchase.HasField("order_total"):
        raise Invalid("user_event.purchase.order_total is not set; a purchase has a total")
    _money("user_event.purchase.order_total", purchase.order_total)


_PROPERTY_CHECKS = {
    "click": _check_click,
    "scroll": _check_scroll,
    "search": _check_search,
    "product": _check_product,
    "cart": _check_cart,
    "checkout": _check_checkout,
    "purchase": _check_purchase,
}


# --- the registry -------------------------------------------------------------------------

# Rules per message type: (event type of a message, contract check).
RULES: dict[str, tuple] = {
    UE.UserEvent.DESCRIPTOR.full_name: (user_event_type, check_user_event),
}

# Topics whose message type external producers may send.
ACCEPTED_TOPICS: tuple = (topics.BEHAVIOUR_EVENTS,)


def contracts(accepted: tuple = ACCEPTED_TOPICS) -> dict[str, Contract]:
    """schema_name -> Contract for every accepted topic (each must have rules here)."""
    out = {}
    for topic in accepted:
        cls = topic.message_class()
        name = cls.DESCRIPTOR.full_name
        if name not in RULES:
            raise ValueError("topic %s carries %s, which has no validation rules in services/ingest/validation.py"
                             % (topic.name, name))
        event_type, check = RULES[name]
        field = cls.DESCRIPTOR.fields_by_name.get("server_time")
        out[name] = Contract(
            schema_name=name,
            topic=topic,
            message_class=cls,
            event_type=event_type,
            check=check,
            headers=tuple(records.schema_headers(cls())),
            server_time_field=field.number if field is not None else None,
        )
    return out


def dead_letter_topic(contract: Optional[Contract]) -> topics.Topic:
    """Where a rejected event goes: its schema's topic's DLQ, else the first accepted topic's."""
    source = contract.topic if contract is not None else ACCEPTED_TOPICS[0]
    return topics.get(source.name + ".dlq")
