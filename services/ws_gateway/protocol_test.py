"""The JSON event protocol: documented fields map onto UserEvent; bad messages get clear reasons."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datapipelines.behaviour.v1 import user_event_pb2 as ue
from services.ws_gateway import protocol

NOW_MS = 1_750_000_000_123


def event(**overrides):
    m = {"type": "event", "event_id": "e-1", "event_type": "add_to_cart", "session_id": "s-1",
         "anonymous_id": "anon-1", "client_time": NOW_MS,
         "page": {"url": "https://shop.example/p/sku-1", "path": "/p/sku-1", "title": "Sku 1"},
         "device": {"category": "mobile", "os_name": "Android", "screen_width_px": 412, "locale": "de-DE"},
         "properties": {"product_id": "sku-1", "category": "shoes", "quantity": 2,
                        "unit_price": {"currency_code": "EUR", "amount_minor": 1999}},
         "attributes": {"ab.variant": "B"}}
    for key, value in overrides.items():
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value
    return m


def parse(m, agent="UA/1"):
    return protocol.parse_message(json.dumps(m), agent)


def reason(m) -> str:
    with pytest.raises(protocol.ProtocolError) as err:
        parse(m) if not isinstance(m, str) else protocol.parse_message(m)
    return err.value.reason


def test_a_full_event_maps_every_field():
    e = parse(event())
    assert e.event_id == "e-1" and e.session_id == "s-1" and e.anonymous_id == "anon-1" and e.user_id == ""
    assert e.event_type == ue.USER_EVENT_TYPE_ADD_TO_CART
    assert e.client_time.ToMilliseconds() == NOW_MS
    assert e.page.path == "/p/sku-1" and e.page.title == "Sku 1"
    assert e.device.category == ue.DEVICE_CATEGORY_MOBILE and e.device.screen_width_px == 412
    assert e.WhichOneof("properties") == "cart"
    assert e.cart.quantity == 2 and e.cart.unit_price.currency_code == "EUR" and e.cart.unit_price.amount_minor == 1999
    assert dict(e.attributes) == {"ab.variant": "B"}
    assert e.user_agent == "UA/1", "the handshake's User-Agent fills a missing user_agent"
    assert not e.HasField("server_time"), "server_time is the ingestion service's"


@pytest.mark.parametrize("name,properties,field", [
    ("page_view", None, None),
    ("product_view", {"product_id": "p", "price": {"currency_code": "usd", "amount_minor": 5}}, "product"),
    ("click", {"element_id": "buy"}, "click"),
    ("scroll", {"depth_percent": 0}, "scroll"),
    ("search", {"query": "shoes", "result_count": 3}, "search"),
    ("remove_from_cart", {"product_id": "p", "quantity": 1}, "cart"),
    ("checkout", {"checkout_id": "c", "item_count": 2, "cart_total": {"currency_code": "EUR", "amount_minor": 10}},
     "checkout"),
    ("purchase", {"order_id": "o", "item_count": 1, "order_total": {"currency_code": "EUR", "amount_minor": 10}},
     "purchase"),
])
def test_every_event_type(name, properties, field):
    e = parse(event(event_type=name, properties=properties))
    assert protocol.EVENT_TYPE_NAMES[e.event_type] == name
    assert e.WhichOneof("properties") == field


def test_client_time_forms():
    assert parse(event(client_time="2025-06-15T12:00:00.250Z")).client_time.ToMilliseconds() == 1749988800250
    assert parse(event(client_time="2025-06-15T14:00:00+02:00")).client_time.seconds == 1749988800
    assert parse(event(client_time=1749988800250.0)).client_time.nanos == 250_000_000


def test_ping_and_replies():
    assert isinstance(protocol.parse_message('{"type":"ping"}'), protocol.Ping)
    assert json.loads(protocol.ack("e", True)) == {"type": "ack", "event_id": "e", "duplicate": True}
    assert json.loads(protocol.error("bad", "e")) == {"type": "error", "reason": "bad", "retry": False, "event_id": "e"}
    assert json.loads(protocol.error("bad")) == {"type": "error", "reason": "bad", "retry": False}
    assert json.loads(protocol.hello(5))["max_pending"] == 5


@pytest.mark.parametrize("message,expected", [
    ("not json", "message is not valid JSON"),
    ("[1,2]", "message must be a JSON object, got an array"),
    ('{"type":"subscribe"}', 'unknown message type "subscribe"'),
    (event(event_id=None), "event_id is missing"),
    (event(event_id=7), "event_id must be a string, got a number"),
    (event(event_id="x" * 129), "event_id is 129 characters; at most 128"),
    (event(event_type="hover"), 'event_type "hover" is not one of page_view'),
    (event(event_type=None), "event_type null is not one of"),
    (event(session_id=None), "session_id is missing"),
    (event(anonymous_id=None), "neither user_id nor anonymous_id is set"),
    (event(client_time=None), "client_time is missing"),
    (event(client_time="yesterday"), 'client_time "yesterday" is not RFC 3339'),
    (event(client_time="2025-06-15T12:00:00"), "has no time zone"),
    (event(client_time=True), "got a boolean"),
    (event(client_time=-5), "is not epoch milliseconds"),
    (event(colour="red"), 'unknown field "colour" in event'),
    (event(page={"url": 5}), "page.url must be a string, got a number"),
    (event(page="home"), "page must be a JSON object, got a string"),
    (event(event_type="page_view", properties=None, page={"title": "t"}), "a page_view needs page.url or page.path"),
    (event(event_type="page_view"), "a page_view carries no properties"),
    (event(device={"category": "fridge"}), 'device.category "fridge" is not one of desktop'),
    (event(device={"screen_width_px": 1.5}), "device.screen_width_px must be a whole number"),
    (event(properties=None), "a add_to_cart needs properties"),
    (event(properties={"quantity": 1}), "properties.product_id is missing; a add_to_cart needs it"),
    (event(properties={"product_id": "p", "quantity": "2"}), "properties.quantity must be an integer, got a string"),
    (event(properties={"product_id": "p", "quantity": 1, "depth_percent": 3}),
     'unknown field "depth_percent" in properties of a add_to_cart'),
    (event(properties={"product_id": "p", "quantity": 1, "unit_price": {"currency_code": "EURO", "amount_minor": 1}}),
     "properties.unit_price.currency_code \"EURO\" is not an ISO 4217 code"),
    (event(properties={"product_id": "p", "quantity": 1, "unit_price": {"currency_code": "EUR"}}),
     "properties.unit_price.amount_minor is missing"),
    (event(properties={"product_id": "p", "quantity": 2**40}), "properties.quantity 1099511627776 is out of range"),
    (event(attributes={"k": 1}), "attributes[k] must be a string, got a number"),
    ('{"type":"event","event_id":"\\ud800"}', "event_id is not valid Unicode"),
])
def test_invalid_messages_get_clear_reasons(message, expected):
    assert expected in reason(message)


def test_errors_carry_the_event_id_when_there_is_one():
    with pytest.raises(protocol.ProtocolError) as err:
        parse(event(event_type="hover"))
    assert err.value.event_id == "e-1"


def test_binary_messages_are_refused():
    with pytest.raises(protocol.ProtocolError, match="binary messages"):
        protocol.parse_message(b"{}")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                                      max_size=4),
                    max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(protocol.EVENT_FIELDS[1:]), value=JSON)
def test_any_value_in_any_field_parses_or_is_refused_with_a_reason(field, value):
    """No JSON value crashes the parser: it yields a UserEvent that serializes, or a ProtocolError."""
    try:
        e = parse(event(**{field: value}) if value is not None else event(**{field: None}))
    except protocol.ProtocolError as err:
        assert err.reason and len(err.reason) < 400
    else:
        assert e.SerializeToString()
