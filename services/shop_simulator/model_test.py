"""Invariants of the generated shop activity, checked over the lines themselves (no I/O)."""

import collections
import dataclasses
import datetime as dt
import json

import pytest
from datapipelines.commerce.v1 import commerce_event_pb2
from google.protobuf import json_format

from services.shop_simulator.config import ShopConfig
from services.shop_simulator.model import (
    BAD_KINDS,
    DUPLICATE,
    MAX_REFUND_DELAY_DAYS,
    NEGATIVE_PRICE,
    NON_UTF8,
    UNKNOWN_TYPE,
    VALID,
    DayGenerator,
    ShopModel,
)

START = dt.date(2026, 3, 1)
DAYS = MAX_REFUND_DELAY_DAYS + 3
CONFIG = ShopConfig(start_date=START, days=DAYS, users=600, events_per_day=5_000, seed=11, bad_line_rate=0.01,
                    duplicate_rate=0.004)


def generate(config: ShopConfig):
    """{day: [Line, ...]} and the generators (for their counts)."""
    model = ShopModel(config)
    days, generators = {}, {}
    for day in config.dates:
        generators[day] = DayGenerator(model, day)
        days[day] = list(generators[day].lines())
    return days, generators


@pytest.fixture(scope="module")
def generated():
    return generate(CONFIG)


@pytest.fixture(scope="module")
def events(generated):
    """{day: [event dict, ...]} of the valid lines, duplicates dropped."""
    days, _ = generated
    result = {}
    for day, lines in days.items():
        result[day] = [json.loads(line.data) for line in lines if line.kind == VALID]
    return result


def payload(event):
    names = [name for name in event if name not in ("eventId", "eventTime", "userId", "sessionId", "anonymousId",
                                                   "countryCode")]
    assert len(names) == 1, event
    return names[0], event[names[0]]


def amount(money):
    return int(money.get("amountMinor", "0"))


def test_valid_lines_are_the_contracts_canonical_json(generated):
    days, _ = generated
    for day, lines in days.items():
        for line in lines:
            if line.kind not in (VALID, DUPLICATE):
                continue
            message = json_format.Parse(line.data.decode("utf-8"), commerce_event_pb2.CommerceEvent())
            assert message.WhichOneof("payload") is not None
            # Exactly what json_format prints (names, int64 as strings, omitted defaults, times).
            assert json_format.MessageToDict(message) == json.loads(line.data)
            # The partition is the UTC date of the event time.
            assert message.event_time.ToDatetime().date() == day


def test_event_ids_are_unique_and_duplicates_repeat_a_valid_line(generated):
    days, _ = generated
    seen = set()
    for lines in days.values():
        previous_valid = None
        for line in lines:
            if line.kind == VALID:
                event_id = json.loads(line.data)["eventId"]
                assert event_id not in seen
                seen.add(event_id)
                previous_valid = line.data
            elif line.kind == DUPLICATE:
                assert line.data == previous_valid


def test_bad_line_rate_and_kinds(generated):
    days, generators = generated
    lines = [line for day_lines in days.values() for line in day_lines]
    bad = [line for line in lines if line.kind in BAD_KINDS]
    assert abs(len(bad) / len(lines) - CONFIG.bad_line_rate) < 0.003, (len(bad), len(lines))
    duplicates = sum(1 for line in lines if line.kind == DUPLICATE)
    assert abs(duplicates / len(lines) - CONFIG.duplicate_rate) < 0.002
    assert {line.kind for line in bad} == set(BAD_KINDS)
    for line in bad:
        try:
            text = line.data.decode("utf-8")
        except UnicodeDecodeError:
            assert line.kind == NON_UTF8
            continue
        assert line.kind != NON_UTF8
        try:
            event = json.loads(text)
        except json.JSONDecodeError:
            continue  # malformed or truncated
        if line.kind == UNKNOWN_TYPE:
            with pytest.raises(json_format.ParseError):
                json_format.Parse(text, commerce_event_pb2.CommerceEvent())
        else:
            assert line.kind == NEGATIVE_PRICE, line
            name, body = payload(event)
            price = body.get("price") or body.get("unitPrice")
            assert amount(price) < 0
    # The generator's tallies match what it yielded.
    for day, day_lines in days.items():
        tally = collections.Counter(line.kind for line in day_lines)
        assert {kind: count for kind, count in generators[day].counts.items() if count} == dict(tally)


def test_no_negative_amounts_in_valid_events(events):
    def walk(value):
        if isinstance(value, dict):
            if "currencyCode" in value:
                assert amount(value) >= 0, value
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    for day_events in events.values():
        for event in day_events:
            walk(event)


def test_orders_reference_their_checkout_and_cart(events):
    orders = 0
    for day_events in events.values():
        checkouts, carts = {}, collections.defaultdict(collections.Counter)
        for event in day_events:
            name, body = payload(event)
            if name == "addToCart":
                carts[body["cartId"]][body["product"]["productId"]] += body["quantity"]
            elif name == "removeFromCart":
                carts[body["cartId"]][body["product"]["productId"]] -= body["quantity"]
            elif name == "checkoutStarted":
                checkouts[body["checkoutId"]] = (body, event)
            elif name == "orderPlaced":
                orders += 1
                checkout, checkout_event = checkouts[body["checkoutId"]]
                assert checkout_event["sessionId"] == event["sessionId"] and event["userId"]
                assert checkout_event["eventTime"] <= event["eventTime"]
                cart = +carts[checkout["cartId"]]
                assert {line["product"]["productId"]: line["quantity"] for line in body["lines"]} == dict(cart)
                subtotal = sum(amount(line["lineTotal"]) for line in body["lines"])
                assert amount(body["subtotal"]) == subtotal == amount(checkout["cartTotal"])
                assert checkout["itemCount"] == sum(line["quantity"] for line in body["lines"])
                for line in body["lines"]:
                    assert amount(line["lineTotal"]) <= amount(line["unitPrice"]) * line["quantity"]
                assert amount(body["total"]) == (subtotal - amount(body["discount"]) + amount(body["shipping"])
                                                 + amount(body["tax"]))
                currencies = {body[key]["currencyCode"] for key in ("subtotal", "discount", "shipping", "tax", "total")}
                assert len(currencies) == 1
    assert orders > 20


def test_payments_and_refunds_reference_orders_and_never_exceed_them(events):
    orders, captured = {}, {}
    refunded = collections.defaultdict(int)
    refunded_units = collections.defaultdict(collections.Counter)
    checked_refunds = 0
    for day in sorted(events):
        for event in events[day]:
            name, body = payload(event)
            if name == "orderPlaced":
                orders[body["orderId"]] = (day, body, event)
            elif name == "payment":
                day_placed, order, _ = orders[body["orderId"]]  # a payment follows its order the same day
                assert day_placed == day
                assert amount(body["amount"]) == amount(order["total"])
                if body["status"] == "PAYMENT_STATUS_CAPTURED":
                    captured[body["orderId"]] = body["paymentId"]
            elif name == "refund":
                if body["orderId"] not in orders:
                    # Only orders placed before the generated range may be missing.
                    assert (day - START).days < MAX_REFUND_DELAY_DAYS, event
                    continue
                day_placed, order, order_event = orders[body["orderId"]]
                assert 0 <= (day - day_placed).days <= MAX_REFUND_DELAY_DAYS
                assert order_event["eventTime"] < event["eventTime"]
                assert captured[body["orderId"]] == body["paymentId"]
                assert event["userId"] == order_event["userId"]
                assert amount(body["amount"]) > 0
                refunded[body["orderId"]] += amount(body["amount"])
                assert refunded[body["orderId"]] <= amount(order["total"])
                ordered = {line["product"]["productId"]: line for line in order["lines"]}
                for line in body.get("lines", []):
                    product = line["product"]["productId"]
                    refunded_units[body["orderId"]][product] += line["quantity"]
                    assert refunded_units[body["orderId"]][product] <= ordered[product]["quantity"]
                    assert amount(line["lineTotal"]) <= amount(ordered[product]["lineTotal"])
                checked_refunds += 1
    assert checked_refunds > 5
    # Refunds happen on later days too, not only on the day of the order.
    later = [order_id for order_id in refunded if orders[order_id][0] != START + dt.timedelta(days=DAYS - 1)]
    assert later


def test_funnel_sessions_bots_and_customers(events):
    stage_sessions = collections.defaultdict(set)
    users_by_day = collections.defaultdict(set)
    for day, day_events in events.items():
        for event in day_events:
            name, _ = payload(event)
            session = event.get("sessionId")
            if session:
                stage_sessions[name].add(session)
            if event.get("userId"):
                users_by_day[day].add(event["userId"])
    assert len(stage_sessions["productView"]) > len(stage_sessions["addToCart"]) > len(stage_sessions["checkoutStarted"])
    assert len(stage_sessions["checkoutStarted"]) > len(stage_sessions["orderPlaced"]) > 0
    # Customers come back on later days (cohorts and returning users have something to count).
    days = sorted(users_by_day)
    assert users_by_day[days[0]] & users_by_day[days[-1]]
    # Crawler sessions: long, fast, never a cart.
    per_session = collections.Counter(event.get("sessionId") for day_events in events.values() for event in day_events)
    assert max(per_session.values()) >= 20


def test_same_settings_same_bytes_and_days_are_independent():
    small = dataclasses.replace(CONFIG, days=2, events_per_day=2_000)
    first, _ = generate(small)
    again, _ = generate(small)
    assert first == again
    # Re-running the second day alone gives exactly that day of the longer run.
    alone, _ = generate(dataclasses.replace(small, start_date=small.start_date + dt.timedelta(days=1), days=1))
    second_day = small.start_date + dt.timedelta(days=1)
    assert alone[second_day] == first[second_day]
    other, _ = generate(dataclasses.replace(small, seed=12))
    assert other[small.start_date] != first[small.start_date]


def test_events_per_day_is_respected():
    config = dataclasses.replace(CONFIG, days=1, events_per_day=20_000)
    days, _ = generate(config)
    assert abs(len(days[config.start_date]) - 20_000) < 20_000 * 0.05


def test_ids_are_the_standard_version_4_uuid_text():
    import random
    import uuid

    from services.shop_simulator.catalogue import uuid_from

    ours, reference = random.Random(3), random.Random(3)
    for _ in range(2_000):
        assert uuid_from(ours) == str(uuid.UUID(int=reference.getrandbits(128), version=4))
