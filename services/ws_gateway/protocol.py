"""The JSON event protocol of `/ws` (documented in README.md): client messages → UserEvent, replies.

Pure: `parse_message(text)` returns a `Ping` or a `datapipelines.behaviour.v1.UserEvent`, or raises
`ProtocolError` whose `reason` says which field is wrong and what to send instead; the server
sends it back as `{"type": "error", "reason": ..., "event_id": ...}`. Contract rules that need the
server's clock or limits (client_time age and skew, string lengths, money ranges) stay with the
ingestion service, which answers them per event; the gateway passes its detail on.

The emulator builds the same JSON objects (`model.py`) and goes through `parse_event` too, so
emulated and real clients take one path.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from typing import Any, Mapping, Optional

from google.protobuf import timestamp_pb2

from datapipelines.behaviour.v1 import user_event_pb2 as ue
from datapipelines.common.v1 import money_pb2

PROTOCOL = "dp.behaviour.events.v1"

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_ID = 128

# JSON name of each event type -> (UserEventType, properties field of UserEvent or None).
EVENT_TYPES: dict[str, tuple[int, Optional[str]]] = {
    "page_view": (ue.USER_EVENT_TYPE_PAGE_VIEW, None),
    "product_view": (ue.USER_EVENT_TYPE_PRODUCT_VIEW, "product"),
    "click": (ue.USER_EVENT_TYPE_CLICK, "click"),
    "scroll": (ue.USER_EVENT_TYPE_SCROLL, "scroll"),
    "search": (ue.USER_EVENT_TYPE_SEARCH, "search"),
    "add_to_cart": (ue.USER_EVENT_TYPE_ADD_TO_CART, "cart"),
    "remove_from_cart": (ue.USER_EVENT_TYPE_REMOVE_FROM_CART, "cart"),
    "checkout": (ue.USER_EVENT_TYPE_CHECKOUT, "checkout"),
    "purchase": (ue.USER_EVENT_TYPE_PURCHASE, "purchase"),
}
EVENT_TYPE_NAMES = {number: name for name, (number, _) in EVENT_TYPES.items()}

DEVICE_CATEGORIES = {
    "desktop": ue.DEVICE_CATEGORY_DESKTOP,
    "mobile": ue.DEVICE_CATEGORY_MOBILE,
    "tablet": ue.DEVICE_CATEGORY_TABLET,
    "bot": ue.DEVICE_CATEGORY_BOT,
}

STR, INT, MONEY = "string", "integer", "money"

# Field kinds of each JSON object; a name in REQUIRED must be present and non-empty.
PAGE_FIELDS = {"url": STR, "path": STR, "title": STR, "referrer_url": STR}
DEVICE_FIELDS = {"category": STR, "os_name": STR, "browser_name": STR, "browser_version": STR,
                 "screen_width_px": INT, "screen_height_px": INT, "locale": STR}
PROPERTY_FIELDS: dict[str, dict[str, str]] = {
    "product": {"product_id": STR, "category": STR, "price": MONEY},
    "click": {"element_id": STR, "element_text": STR, "target_url": STR},
    "scroll": {"depth_percent": INT},
    "search": {"query": STR, "result_count": INT},
    "cart": {"product_id": STR, "category": STR, "quantity": INT, "unit_price": MONEY},
    "checkout": {"checkout_id": STR, "item_count": INT, "cart_total": MONEY},
    "purchase": {"order_id": STR, "item_count": INT, "order_total": MONEY},
}
REQUIRED_PROPERTIES = {
    "product": ("product_id",),
    "click": ("element_id",),
    "scroll": ("depth_percent",),
    "search": ("query",),
    "cart": ("product_id", "quantity"),
    "checkout": ("checkout_id",),
    "purchase": ("order_id", "item_count", "order_total"),
}
MONEY_FIELDS = {"currency_code": STR, "amount_minor": INT}
EVENT_FIELDS = ("type", "event_id", "event_type", "session_id", "user_id", "anonymous_id", "client_time", "page",
                "device", "user_agent", "properties", "attributes")


class ProtocolError(ValueError):
    """A client message the gateway cannot forward; `reason` is sent back to the client."""

    def __init__(self, reason: str, event_id: Optional[str] = None):
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


@dataclasses.dataclass(frozen=True)
class Ping:
    """`{"type": "ping"}`: answered with `{"type": "pong"}`, nothing forwarded."""


# --- replies -------------------------------------------------------------------------------

def _dump(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def hello(max_pending: int) -> str:
    return _dump({"type": "hello", "protocol": PROTOCOL, "max_pending": max_pending})


def ack(event_id: str, duplicate: bool = False) -> str:
    return _dump({"type": "ack", "event_id": event_id, "duplicate": duplicate})


def error(reason: str, event_id: Optional[str] = None, retry: bool = False) -> str:
    reply: dict[str, Any] = {"type": "error", "reason": reason, "retry": retry}
    if event_id:
        reply["event_id"] = event_id
    return _dump(reply)


def pong() -> str:
    return _dump({"type": "pong"})


# --- parsing -------------------------------------------------------------------------------

def parse_message(text: str | bytes, user_agent: str = ""):
    """One WebSocket message → `Ping` or `UserEvent`; raises ProtocolError."""
    if isinstance(text, (bytes, bytearray)):
        raise ProtocolError("binary messages are not part of the protocol; send JSON text")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise ProtocolError("message is not valid JSON: %s" % err) from None
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object, got %s" % _json_kind(message))
    kind = message.get("type", "event")
    if kind == "ping":
        return Ping()
    if kind != "event":
        raise ProtocolError("unknown message type %s; send \"event\" (or \"ping\")" % _describe(kind),
                            _maybe_id(message))
    return parse_event(message, user_agent)


def parse_event(message: Mapping[str, Any], user_agent: str = "") -> ue.UserEvent:
    """A JSON event object → UserEvent; raises ProtocolError naming the first bad field."""
    event_id = _maybe_id(message)
    try:
        return _event(message, user_agent)
    except ProtocolError as err:
        err.event_id = event_id
        raise


def _event(m: Mapping[str, Any], user_agent: str) -> ue.UserEvent:
    _no_unknown("event", m, EVENT_FIELDS)
    event_id = _id(m, "event_id")
    name = m.get("event_type")
    if not isinstance(name, str) or name not in EVENT_TYPES:
        raise ProtocolError("event_type %s is not one of %s" % (_describe(name), ", ".join(EVENT_TYPES)))
    event_type, properties_field = EVENT_TYPES[name]
    event = ue.UserEvent(event_id=event_id, event_type=event_type, session_id=_id(m, "session_id"))
    event.user_id = _id(m, "user_id", required=False)
    event.anonymous_id = _id(m, "anonymous_id", required=False)
    if not event.user_id and not event.anonymous_id:
        raise ProtocolError("neither user_id nor anonymous_id is set; set one (anonymous_id: a cookie id)")
    event.client_time.CopyFrom(_client_time(m.get("client_time")))
    if "page" in m:
        _fill(event.page, "page", _object(m["page"], "page"), PAGE_FIELDS)
    if event_type == ue.USER_EVENT_TYPE_PAGE_VIEW and not (event.page.url or event.page.path):
        raise ProtocolError("a page_view needs page.url or page.path")
    if "device" in m:
        device = dict(_object(m["device"], "device"))
        category = device.pop("category", None)
        if category is not None:
            if category not in DEVICE_CATEGORIES:
                raise ProtocolError("device.category %s is not one of %s"
                                    % (_describe(category), ", ".join(DEVICE_CATEGORIES)))
            event.device.category = DEVICE_CATEGORIES[category]
        _fill(event.device, "device", device, DEVICE_FIELDS)
    agent = m.get("user_agent", user_agent)
    event.user_agent = _string(agent, "user_agent")
    properties = m.get("properties")
    if properties_field is None:
        if properties not in (None, {}):
            raise ProtocolError("a %s carries no properties; leave properties out" % name)
    else:
        if properties is None:
            raise ProtocolError("a %s needs properties {%s}" % (name, ", ".join(PROPERTY_FIELDS[properties_field])))
        target = getattr(event, properties_field)
        properties = _object(properties, "properties")
        for required in REQUIRED_PROPERTIES[properties_field]:
            if properties.get(required) in (None, ""):
                raise ProtocolError("properties.%s is missing; a %s needs it" % (required, name))
        _fill(target, "properties", properties, PROPERTY_FIELDS[properties_field], what=name)
        target.SetInParent()  # a scroll at depth 0 still carries its (default) properties
    if "attributes" in m:
        attributes = _object(m["attributes"], "attributes")
        for key, value in attributes.items():
            if not isinstance(value, str):
                raise ProtocolError("attributes[%s] must be a string, got %s" % (_short(key), _json_kind(value)))
            event.attributes[_string(key, "attributes key")] = _string(value, "attributes[%s]" % _short(key))
    return event


def _fill(target, prefix: str, values: Mapping[str, Any], fields: Mapping[str, str], what: str = "") -> None:
    _no_unknown(prefix + (" of a %s" % what if what else ""), values, fields)
    for name, value in values.items():
        path = "%s.%s" % (prefix, name)
        kind = fields[name]
        if value is None:
            continue
        if kind == STR:
            setattr(target, name, _string(value, path))
        elif kind == INT:
            setattr(target, name, _integer(value, path, INT32_MAX))
        else:
            money = _object(value, path)
            _no_unknown(path, money, MONEY_FIELDS)
            code = money.get("currency_code")
            if not isinstance(code, str) or len(code) != 3 or not code.isascii() or not code.isalpha():
                raise ProtocolError("%s.currency_code %s is not an ISO 4217 code such as \"EUR\""
                                    % (path, _describe(code)))
            if "amount_minor" not in money:
                raise ProtocolError("%s.amount_minor is missing (the amount in minor units, 1999 for 19.99)" % path)
            getattr(target, name).CopyFrom(money_pb2.Money(
                currency_code=code.upper(), amount_minor=_integer(money["amount_minor"], path + ".amount_minor",
                                                                  INT64_MAX)))


def _client_time(value: Any) -> timestamp_pb2.Timestamp:
    """RFC 3339 with a zone ("2025-01-31T12:00:00.123Z") or Unix epoch milliseconds (JS Date.now())."""
    if value is None:
        raise ProtocolError("client_time is missing; send when the event happened, as RFC 3339 with a zone "
                            "or Unix epoch milliseconds")
    if isinstance(value, bool):
        raise ProtocolError("client_time must be an RFC 3339 string or epoch milliseconds, got a boolean")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or not 0 < value < 253402300800000:
            raise ProtocolError("client_time %r is not epoch milliseconds between 1970 and 9999" % value)
        millis = int(value)
        return timestamp_pb2.Timestamp(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ProtocolError("client_time %s is not RFC 3339 (e.g. \"2025-01-31T12:00:00.123Z\")"
                                % _describe(value)) from None
        if moment.tzinfo is None:
            raise ProtocolError("client_time %s has no time zone; end it with Z or an offset like +01:00"
                                % _describe(value))
        stamp = timestamp_pb2.Timestamp()
        try:
            stamp.FromDatetime(moment)
        except (ValueError, OverflowError):
            raise ProtocolError("client_time %s is out of range" % _describe(value)) from None
        if stamp.seconds <= 0:
            raise ProtocolError("client_time %s is before 1970" % _describe(value))
        return stamp
    raise ProtocolError("client_time must be an RFC 3339 string or epoch milliseconds, got %s" % _json_kind(value))


def _id(m: Mapping[str, Any], name: str, required: bool = True) -> str:
    value = m.get(name)
    if value is None or value == "":
        if required:
            raise ProtocolError("%s is missing; set it" % name)
        return ""
    text = _string(value, name)
    if len(text) > MAX_ID:
        raise ProtocolError("%s is %d characters; at most %d" % (name, len(text), MAX_ID))
    return text


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError("%s must be a string, got %s" % (path, _json_kind(value)))
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("%s is not valid Unicode (a lone surrogate escape?)" % path) from None
    return value


def _integer(value: Any, path: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("%s must be an integer, got %s" % (path, _json_kind(value)))
    if isinstance(value, float) and not value.is_integer():
        raise ProtocolError("%s must be a whole number, got %r" % (path, value))
    number = int(value)
    if not -limit - 1 <= number <= limit:
        raise ProtocolError("%s %d is out of range" % (path, number))
    return number


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError("%s must be a JSON object, got %s" % (path, _json_kind(value)))
    return value


def _no_unknown(where: str, values: Mapping[str, Any], known) -> None:
    for key in values:
        if key not in known:
            raise ProtocolError("unknown field %s in %s; known: %s" % (_describe(key), where, ", ".join(known)))


def _maybe_id(message: Mapping[str, Any]) -> Optional[str]:
    value = message.get("event_id")
    return value[:MAX_ID] if isinstance(value, str) and value else None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)[:40]
    return text[:40] + ("..." if len(text) > 40 else "")


def _describe(value: Any) -> str:
    return json.dumps(_short(value)) if isinstance(value, str) else ("%s" % _json_kind(value))
