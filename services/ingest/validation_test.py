"""Validation rules of envelopes and UserEvents, on in-memory messages."""

import pytest

from datapipelines.behaviour.v1 import user_event_pb2 as ue
from datapipelines.ingest.v1 import envelope_pb2
from services.ingest import sample_events, validation
from services.ingest.auth import ANY, Principal
from services.ingest.config import Limits

NOW = 1_780_000_000.25
LIMITS = Limits()
CONTRACTS = validation.contracts()
TENANT = "t1"
EVERYTHING = Principal(TENANT, "000000000000", frozenset({ANY}), frozenset({ANY}))


def event(n: int = 1, **changes) -> ue.UserEvent:
    message = sample_events.user_event(n, now=NOW)
    for name, value in changes.items():
        if value is None:
            message.ClearField(name)
        else:
            setattr(message, name, value)
    return message


def envelope(message=None, payload=None, **fields) -> envelope_pb2.Envelope:
    message = message if message is not None else event()
    env = sample_events.envelope(message, TENANT)
    if payload is not None:
        env.payload = payload
    for name, value in fields.items():
        setattr(env, name, value)
    return env


def check(env, principal=EVERYTHING, limits=LIMITS, now=NOW):
    return validation.validate(env, principal, CONTRACTS, limits, validation.ServerTime(now))


def rejected(env, **kwargs) -> validation.Rejected:
    with pytest.raises(validation.Rejected) as info:
        check(env, **kwargs)
    return info.value


def test_registry_comes_from_the_topics_module():
    contract = CONTRACTS["datapipelines.behaviour.v1.UserEvent"]
    assert contract.topic.name == "behaviour.events.v1"
    assert contract.message_class is ue.UserEvent
    assert dict(contract.headers)["dp.schema"] == b"datapipelines.behaviour.v1.UserEvent"
    assert contract.server_time_field == 10
    assert validation.dead_letter_topic(contract).name == "behaviour.events.v1.dlq"
    assert validation.dead_letter_topic(None).name == "behaviour.events.v1.dlq"


def test_every_event_type_has_its_properties_rule():
    named = {v.number for v in ue.UserEventType.DESCRIPTOR.values} - {ue.USER_EVENT_TYPE_UNSPECIFIED}
    assert set(validation.PROPERTIES_OF) == named


@pytest.mark.parametrize("n", range(len(sample_events.EVENT_TYPES) * 2))
def test_sample_events_of_every_type_are_accepted(n):
    message = event(n)
    accepted = check(envelope(message))
    assert accepted.event_type == ue.UserEventType.Name(message.event_type)
    assert accepted.key == message.session_id.encode()
    written = ue.UserEvent.FromString(accepted.value)
    assert written.server_time.seconds == int(NOW) and written.server_time.nanos == 250_000_000
    written.ClearField("server_time")
    assert written == message


def test_producer_bytes_are_kept_and_server_time_appended():
    message = event()
    payload = message.SerializeToString() + b"\xf8\x3e\x07"  # unknown field 999 = 7, from a newer producer
    accepted = check(envelope(message, payload=payload))
    assert accepted.value.startswith(payload)
    assert ue.UserEvent.FromString(accepted.value).server_time.seconds == int(NOW)


def test_server_time_from_the_client_is_overwritten():
    message = event()
    message.server_time.seconds, message.server_time.nanos = 5, 7
    written = ue.UserEvent.FromString(check(envelope(message)).value)
    assert (written.server_time.seconds, written.server_time.nanos) == (int(NOW), 250_000_000)


def test_missing_envelope_fields_are_named():
    error = rejected(envelope(event_id="", schema_name=""))
    assert error.reason == validation.MISSING_ENVELOPE_FIELD
    assert "event_id" in error.detail and "schema_name" in error.detail and "tenant_id" not in error.detail
    assert rejected(envelope(payload=b"")).reason == validation.MISSING_ENVELOPE_FIELD
    assert error.code == "missing-envelope-field"


def test_too_large_payload():
    message = event()
    error = rejected(envelope(message), limits=Limits(max_event_bytes=len(message.SerializeToString()) - 1))
    assert error.reason == validation.TOO_LARGE


def test_overlong_envelope_ids():
    assert rejected(envelope(event_id="x" * 129)).reason == validation.VALIDATION_FAILED
    assert rejected(envelope(producer_id="p" * 129)).reason == validation.VALIDATION_FAILED


def test_other_tenant_is_unauthorized():
    error = rejected(envelope(tenant_id="t2"))
    assert error.reason == validation.UNAUTHORIZED and "t2" in error.detail


def test_unknown_schema():
    error = rejected(envelope(schema_name="datapipelines.behaviour.v1.SessionSummary"))
    assert error.reason == validation.UNKNOWN_SCHEMA
    assert "datapipelines.behaviour.v1.UserEvent" in error.detail


def test_schema_and_event_type_rights():
    no_schema = Principal(TENANT, "k", frozenset({"datapipelines.other.v1.X"}), frozenset({ANY}))
    assert rejected(envelope(), principal=no_schema).reason == validation.UNAUTHORIZED
    clicks_only = Principal(TENANT, "k", frozenset({ANY}), frozenset({"USER_EVENT_TYPE_CLICK"}))
    click = event(n=sample_events.EVENT_TYPES.index(ue.USER_EVENT_TYPE_CLICK))
    assert check(envelope(click), principal=clicks_only).event_type == "USER_EVENT_TYPE_CLICK"
    error = rejected(envelope(event(n=0)), principal=clicks_only)
    assert error.reason == validation.UNAUTHORIZED and "USER_EVENT_TYPE_PAGE_VIEW" in error.detail


@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28"])
def test_undecodable_payloads(payload):
    # Truncated varint, truncated string, and invalid UTF-8 in event_id.
    assert rejected(envelope(payload=payload)).reason == validation.MALFORMED_PAYLOAD


def test_invalid_utf8_in_a_nested_string_is_malformed():
    good = event().SerializeToString()
    bad = good + b"\x3a\x02\xed\xa0"  # user_agent (field 7) = an unpaired surrogate
    assert rejected(envelope(payload=bad)).reason == validation.MALFORMED_PAYLOAD


def violation(message, **kwargs) -> str:
    error = rejected(envelope(message), **kwargs)
    assert error.reason == validation.VALIDATION_FAILED, error.detail
    return error.detail


def test_event_type_rules():
    assert "UNSPECIFIED" in violation(event(event_type=ue.USER_EVENT_TYPE_UNSPECIFIED))
    assert "not a known" in violation(event(event_type=77))


def test_id_rules():
    error = rejected(envelope(event(), event_id="other"))
    assert error.reason == validation.VALIDATION_FAILED and "differs" in error.detail
    assert "session_id" in violation(event(session_id=""))
    message = event(n=1)
    message.user_id, message.anonymous_id = "", ""
    assert "neither user_id nor anonymous_id" in violation(message)
    assert "128" in violation(event(user_id="u" * 129))


def test_client_time_rules():
    assert "client_time is not set" in violation(event(client_time=None))
    ahead = event()
    ahead.client_time.seconds = int(NOW) + 301
    assert "ahead" in violation(ahead)
    ahead.client_time.seconds = int(NOW) + 299
    check(envelope(ahead))
    old = event()
    old.client_time.seconds = int(NOW) - 8 * 24 * 3600
    assert "old" in violation(old)
    bad_nanos = event()
    bad_nanos.client_time.nanos = -1
    assert "not a valid timestamp" in violation(bad_nanos)


def test_properties_must_match_the_event_type():
    page_view = event(n=0)
    page_view.scroll.depth_percent = 3
    assert "carries no properties" in violation(page_view)
    click = event(n=sample_events.EVENT_TYPES.index(ue.USER_EVENT_TYPE_CLICK))
    click.ClearField("click")
    assert "needs properties.click" in violation(click)


def test_ranges_and_enums():
    scroll = event(n=sample_events.EVENT_TYPES.index(ue.USER_EVENT_TYPE_SCROLL))
    scroll.scroll.depth_percent = 101
    assert "depth_percent" in violation(scroll)
    cart = event(n=sample_events.EVENT_TYPES.index(ue.USER_EVENT_TYPE_ADD_TO_CART))
    cart.cart.quantity = 0
    assert "quantity" in violation(cart)
    cart = event(n=sample_events.EVENT_TYPES.index(ue.USER_EVENT_TYPE_ADD_TO_CART))
    cart.cart.unit_price.currency_code = "eur"
    assert "ISO 4217" in violation(cart)
    purchase = event(n=sample_events.EVENT_TYPES.index(ue.USER_EVENT_TYPE_PURCHASE))
    purchase.purchase.order_total.amount_minor = -1
    assert "amount_minor" in violation(purchase)
    device = event()
    device.device.category = 42
    assert "DeviceCategory" in violation(device)
    device = event()
    device.device.screen_width_px = -5
    assert "screen size" in violation(device)


def test_size_limits_of_strings_and_attributes():
    click = event(n=sample_events.EVENT_TYPES.index(ue.USER_EVENT_TYPE_CLICK))
    click.click.element_text = "x" * 201
    assert "element_text" in violation(click)
    many = event()
    for i in range(65):
        many.attributes["k%d" % i] = "v"
    assert "attributes" in violation(many)
    long_key = event()
    long_key.attributes["k" * 65] = "v"
    assert "attributes key" in violation(long_key)
    page = event()
    page.page.url = "https://x/" + "a" * 9000
    assert "page.url" in violation(page)


def test_page_view_needs_a_page():
    page_view = event(n=0)
    page_view.ClearField("page")
    assert "page.url or page.path" in violation(page_view)


def test_reason_codes_are_stable():
    assert validation.reason_code(validation.TOO_LARGE) == "too-large"
    assert validation.reason_code(validation.MALFORMED_PAYLOAD) == "malformed-payload"
    assert validation.reason_code(validation.UNAUTHORIZED) == "unauthorized"


def test_server_time_suffix_is_the_wire_format_of_the_field():
    server_time = validation.ServerTime(NOW)
    parsed = ue.UserEvent.FromString(server_time.suffix(10))
    assert parsed.server_time == server_time.timestamp
    assert validation._varint(300) == b"\xac\x02"
