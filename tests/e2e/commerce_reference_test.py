"""The commerce reference recomputation on handmade lines, with exact expected rows.

The end-to-end test trusts commerce_reference.py to say what every mart row must be; this
test makes the reference itself fail when a definition drifts (values worked out by hand).
"""

import datetime
import gzip
import hashlib
import json

import pytest

from tests.e2e import commerce_reference as ref

DAY = datetime.date(2026, 11, 18)  # a Wednesday; its ISO week starts on Monday the 16th
UTC = datetime.timezone.utc


def d(day_of_november):
    return datetime.date(2026, 11, day_of_november)


def at(hour, minute, second=0):
    return datetime.datetime(2026, 11, 18, hour, minute, second, tzinfo=UTC)


def money(amount, currency="EUR"):
    out = {"currencyCode": currency}
    if amount:
        out["amountMinor"] = str(amount)
    return out


def line(event_id, time, payload, anonymous="a1", user=None):
    doc = {"eventId": event_id, "eventTime": time, "anonymousId": anonymous}
    if user:
        doc["userId"] = user
    doc.update(payload)
    return json.dumps(doc, separators=(",", ":")).encode()


def order_line(product, name, category, quantity, total, currency="EUR"):
    return {"product": {"productId": product, "productName": name, "category": category}, "quantity": quantity,
            "unitPrice": money(total // quantity, currency), "lineTotal": money(total, currency)}


def reasons(lines, name="hdfs://nn/raw/dt=2026-11-18/part-00000.jsonl"):
    _, rejected = ref.validate_partition([(name, b"\n".join(lines) + b"\n")], DAY)
    return [(r[2], r[3], r[4]) for r in rejected]


PAGE = {"pageView": {"pageUrl": "https://shop/x", "pagePath": "/x"}}
T = "2026-11-18T10:00:00Z"


def test_every_rejection_reason_with_its_detail():
    lines = [
        b'{"eventId":"e1","search":{"query":"caf\xe9"}}',
        b"  ",
        b'{"eventId":"e3","eventTime":"2026-11-18T1',
        line("e4", T, PAGE).replace(b'"', b"'"),
        line("e5", T, PAGE)[:-1] + b',}',
        json.dumps({"eventId": "e6", "eventTime": T, "anonymousId": "a1", "pageView": "/x"}).encode(),
        line("e7", T, {"wishlistAdd": {"productId": "p1"}, "couponApplied": {}}),
        line("e8", T, {}),
        line("e9", T, dict(PAGE, search={"query": "x"})),
        line("", T, PAGE),
        line("e11", "2026-11-18", PAGE),
        line("e12", "2026-11-19T00:00:00Z", PAGE),
        line("e13", "2026-11-19T00:30:00+01:00", PAGE),  # 23:30 UTC on the 18th: inside
        line("e14", T, {"productView": {"product": {"productId": "p1"}, "price": money(-5)}}),
        line("e15", T, {"addToCart": {"product": {"productId": "p1"}, "unitPrice": money(100)}}),
        line("e16", T, {"addToCart": {"product": {"productId": "p1"}, "quantity": "x", "unitPrice": money(1)}}),
        line("e17", T, {"refund": {"refundId": "r", "orderId": "o", "amount": money(0)}}),
        line("e18", T, {"productView": {"product": {"productId": "p1"}, "price": money(5, "eur")}}),
        line("e19", T, {"payment": {"paymentId": "y", "orderId": "o", "amount": money(5), "status": "PAID"}}),
        line("e20", T, {"orderPlaced": {"orderId": "o", "total": money(500), "lines": [
            order_line("p1", "P", "c", 1, 500, "GBP")]}}),
        line("e21", T, {"orderPlaced": {"orderId": "o", "total": money(500), "lines": []}}),
        line("e22", T, {"orderPlaced": {"orderId": "o", "total": money(500), "lines": [
            order_line("p1", "P", "c", 1, -500)]}}),
        line("e13", T, PAGE),  # the id of a valid line before: a duplicate
        line("e4", T, PAGE),  # the id of a rejected line only: valid
        b"",
    ]
    assert reasons(lines) == [
        (1, "not_utf8", "the line is not valid UTF-8"),
        (2, "empty_line", ""),
        (3, "truncated_json", "not parseable as JSON"),
        (4, "malformed_json", "not parseable as JSON"),
        (5, "malformed_json", "not parseable as JSON"),
        (6, "type_mismatch", "a field has the wrong JSON type, or the line is not an object"),
        (7, "unknown_event_type", "unknown fields: wishlistAdd,couponApplied"),
        (8, "missing_payload", "no payload field is set"),
        (9, "multiple_payloads", "more than one payload field is set"),
        (10, "missing_field", "eventId"),
        (11, "invalid_timestamp", "eventTime=2026-11-18"),
        (12, "outside_partition", "eventTime=2026-11-19T00:00:00Z is not in dt=2026-11-18"),
        (14, "negative_amount", "productView.price"),
        (15, "invalid_quantity", "addToCart.quantity"),
        (16, "type_mismatch", "addToCart.quantity"),
        (17, "invalid_amount", "refund.amount must be positive"),
        (18, "invalid_currency", "productView.price.currencyCode"),
        (19, "invalid_enum", "payment.status"),
        (20, "mixed_currency", "orderPlaced.lines"),
        (21, "missing_field", "orderPlaced.lines"),
        (22, "negative_amount", "orderPlaced.lines"),
        (23, "duplicate_event_id", "eventId=e13"),
        (25, "empty_line", ""),
    ]


def test_raw_lines_as_stored_and_line_numbers_per_file():
    long_line = b'{"x":"' + b"y" * 5000 + b'"}'
    files = [("f2.jsonl", b"\xff\xc3(\n" + long_line + b"\r\n"),
             ("f1.jsonl.gz", gzip.compress(line("a", T, PAGE) + b"\r" + line("a", T, PAGE)))]
    events, rejected = ref.validate_partition(files, DAY)
    assert [e["event_id"] for e in events] == ["a"]
    assert [r[1:4] + r[5:] for r in rejected] == [
        ("f1.jsonl.gz", 2, "duplicate_event_id", line("a", T, PAGE).decode(), False),
        ("f2.jsonl", 1, "not_utf8", "\ufffd\ufffd(", False),
        ("f2.jsonl", 2, "unknown_event_type", long_line.decode()[:4096], True),
    ]


def day_lines():
    purchase = {"orderPlaced": {"orderId": "o1", "total": money(2700), "shipping": money(200), "lines": [
        order_line("p1", "Phones", "audio/headphones", 2, 2000), order_line("p2", "Mug", "home/kitchen", 1, 500)]}}
    return [
        line("a1-1", "2026-11-18T10:00:00Z", PAGE, user="u1"),
        line("a1-2", "2026-11-18T10:05:00Z", {"productView": {
            "product": {"productId": "p1", "productName": "Phones", "category": "audio/headphones"},
            "price": money(1000)}}, user="u1"),
        line("a1-3", "2026-11-18T10:10:00Z", {"addToCart": {"product": {"productId": "p1"}, "quantity": 2,
                                                            "unitPrice": money(1000)}}, user="u1"),
        line("a1-4", "2026-11-18T10:12:00Z", {"checkoutStarted": {"checkoutId": "c1", "cartTotal": money(2500)}},
             user="u1"),
        line("a1-5", "2026-11-18T10:15:00Z", purchase, user="u1"),
        line("a1-6", "2026-11-18T10:20:00Z", purchase, user="u1"),  # o1 again: counted once
        line("r1", "2026-11-18T12:00:00Z", {"refund": {"refundId": "r1", "orderId": "o1", "amount": money(500),
                                                       "lines": [order_line("p2", "Mug", "home/kitchen", 1, 500)]}},
             user="u1"),
        line("a2-1", "2026-11-18T11:00:00Z", PAGE, anonymous="a2"),
        line("a2-2", "2026-11-18T11:40:00Z", PAGE, anonymous="a2"),  # 40 minutes later: a new session
        line("a2-3", "2026-11-18T11:41:00Z", {"productView": {"product": {"productId": "p1"}, "price": money(1000)}},
             anonymous="a2"),
        line("a3-1", "2026-11-18T13:00:00Z", {"orderPlaced": {"orderId": "o2", "total": money(900, "GBP"), "lines": [
            order_line("p3", "Book", "", 1, 900, "GBP")]}}, anonymous="a3", user="u2"),
    ]


HISTORY = [
    (d(11), "u1", "EUR", 1, 1000, 0),
    (d(17), "u3", "EUR", 2, 3000, 0),
    (d(19), "u4", "EUR", 1, 100, 0),  # a later day of the week, already loaded
    (d(12), "u5", "EUR", 0, 0, 300),  # a refund only: no customer
]


@pytest.fixture
def marts():
    events, rejected = ref.validate_partition([("f.jsonl", b"\n".join(day_lines()))], DAY)
    assert rejected == []
    return ref.day_marts(events, HISTORY, DAY)


def sid(anonymous_id, first_event):
    return hashlib.sha256(("%s|%s" % (anonymous_id, first_event)).encode()).hexdigest()[:32]


def test_sessions_cut_at_30_minute_gaps(marts):
    assert sorted(marts["session_summary"], key=lambda s: (s[3], s[4])) == [
        (sid("a1", "a1-1"), DAY, "u1", "a1", at(10, 0), at(10, 20), 6, 1, 1, "FUNNEL_STAGE_PURCHASE", True, 2700, "EUR"),
        (sid("a1", "r1"), DAY, "u1", "a1", at(12, 0), at(12, 0), 1, 0, 0, "FUNNEL_STAGE_VISIT", False, None, None),
        (sid("a2", "a2-1"), DAY, "", "a2", at(11, 0), at(11, 0), 1, 1, 0, "FUNNEL_STAGE_VISIT", False, None, None),
        (sid("a2", "a2-2"), DAY, "", "a2", at(11, 40), at(11, 41), 2, 1, 1, "FUNNEL_STAGE_PRODUCT_VIEW", False,
         None, None),
        (sid("a3", "a3-1"), DAY, "u2", "a3", at(13, 0), at(13, 0), 1, 0, 0, "FUNNEL_STAGE_PURCHASE", True, 900, "GBP"),
    ]


def test_funnel(marts):
    assert marts["daily_funnel_step"] == [
        (DAY, "FUNNEL_STAGE_VISIT", 1, 5, 3, 1.0),
        (DAY, "FUNNEL_STAGE_PRODUCT_VIEW", 2, 3, 3, 0.6),
        (DAY, "FUNNEL_STAGE_CART", 3, 2, 2, 2 / 3),
        (DAY, "FUNNEL_STAGE_CHECKOUT", 4, 2, 2, 1.0),
        (DAY, "FUNNEL_STAGE_PURCHASE", 5, 2, 2, 1.0),
    ]


def test_revenue_by_category_net_of_refunds_and_top_products(marts):
    assert sorted(marts["daily_category_revenue"]) == [
        (DAY, "audio", 1, 2, 2000, "EUR", 0, "EUR", 2000, "EUR"),
        (DAY, "home", 1, 1, 500, "EUR", 500, "EUR", 0, "EUR"),
        (DAY, "uncategorized", 1, 1, 900, "GBP", 0, "GBP", 900, "GBP"),
    ]
    assert marts["daily_top_product"] == [
        (DAY, 1, "p1", "Phones", "audio/headphones", 2, 2000, "EUR", 2),
        (DAY, 2, "p2", "Mug", "home/kitchen", 1, 500, "EUR", 0),
        (DAY, 1, "p3", "Book", "", 1, 900, "GBP", 0),
    ]


def test_customers_cohorts_and_rfm(marts):
    assert sorted(marts["customer_daily_order"]) == [(DAY, "u1", "EUR", 1, 2700, 500), (DAY, "u2", "GBP", 1, 900, 0)]
    assert sorted(marts["daily_customer_type"]) == [(DAY, "NEW", "GBP", 1, 1, 900), (DAY, "RETURNING", "EUR", 1, 1, 2700)]
    assert sorted(marts["cohort_retention"]) == [
        ("COHORT_PERIOD_DAY", d(11), 7, 1, 1, 1.0, DAY),
        ("COHORT_PERIOD_DAY", d(17), 1, 1, 0, 0.0, DAY),
        ("COHORT_PERIOD_DAY", DAY, 0, 1, 1, 1.0, DAY),
        ("COHORT_PERIOD_WEEK", d(9), 1, 1, 1, 1.0, d(16)),
        ("COHORT_PERIOD_WEEK", d(16), 0, 3, 3, 1.0, d(16)),
    ]
    # EUR: u1 2 orders, 1000 + 2700 - 500, last today; u3 2 orders, 3000, yesterday. Scores are
    # ceil(5 x share of customers no better): recency u1 5 (2 of 2), u3 ceil(2.5) = 3; frequency
    # tied, both 5; monetary u3 3, u1 5. GBP: u2 alone, 5/5/5. u4 ordered after the as-of day.
    assert sorted(marts["customer_rfm"]) == [
        (DAY, "u1", 0, 2, 3200, "EUR", 5, 5, 5, "RFM_SEGMENT_CHAMPION"),
        (DAY, "u2", 0, 1, 900, "GBP", 5, 5, 5, "RFM_SEGMENT_CHAMPION"),
        (DAY, "u3", 1, 2, 3000, "EUR", 3, 5, 3, "RFM_SEGMENT_LOYAL"),
    ]


def test_rfm_segment_rules_first_match_wins():
    cases = [((5, 5, 5, 9), "RFM_SEGMENT_CHAMPION"), ((3, 4, 1, 9), "RFM_SEGMENT_LOYAL"),
             ((5, 1, 1, 1), "RFM_SEGMENT_NEW"), ((3, 2, 5, 2), "RFM_SEGMENT_POTENTIAL_LOYALIST"),
             ((2, 3, 5, 3), "RFM_SEGMENT_AT_RISK"), ((1, 1, 1, 1), "RFM_SEGMENT_LOST"),
             ((1, 2, 3, 2), "RFM_SEGMENT_HIBERNATING")]
    assert [ref.segment(*args) for args, _ in cases] == [want for _, want in cases]


def test_state_replaces_a_day_and_keeps_the_others():
    state = ref.MartState()
    files = [("f.jsonl", b"\n".join(day_lines()))]
    counts = state.run_day(DAY, files)
    assert counts == {"raw_lines": 11, "valid_events": 11, "rejected_lines": 0, "rejected_by_reason": {}}
    first = {table: state.rows(table) for table in ref.TABLES}
    nextday = [("g.jsonl", line("n1", "2026-11-19T09:00:00Z", {"orderPlaced": {
        "orderId": "o3", "total": money(100), "lines": [order_line("p1", "Phones", "audio", 1, 100)]}}, user="u2")
        + b"\nnot json")]
    state.run_day(d(19), nextday)
    assert state.rows("customer_daily_order") == sorted(first["customer_daily_order"] + [
        (d(19), "u2", "EUR", 1, 100, 0)], key=repr)
    assert [r for r in state.rows("daily_customer_type") if r[0] == d(19)] == [(d(19), "RETURNING", "EUR", 1, 1, 100)]
    assert [r for r in state.rows("cohort_retention") if r[0] == "COHORT_PERIOD_WEEK"] == [
        ("COHORT_PERIOD_WEEK", d(16), 0, 2, 2, 1.0, d(16))]  # u1 and u2, both first in this week
    assert state.rows("rejected_line") == [(d(19), "g.jsonl", 2, "malformed_json", "not parseable as JSON",
                                            "not json", False)]
    state.run_day(DAY, files)  # re-running a day changes nothing
    again = {table: [r for r in state.rows(table) if d(19) not in r] for table in ref.TABLES}
    assert again["session_summary"] == first["session_summary"]
    assert again["daily_funnel_step"] == first["daily_funnel_step"]
    assert [r for r in state.rows("cohort_retention") if r[0] == "COHORT_PERIOD_WEEK"] == [
        ("COHORT_PERIOD_WEEK", d(16), 0, 2, 2, 1.0, d(16))]


def test_differences_finds_missing_extra_repeated_rows_and_floats_beyond_the_tolerance():
    want = [(DAY, "FUNNEL_STAGE_VISIT", 1, 10, 9, 1.0), (DAY, "FUNNEL_STAGE_PRODUCT_VIEW", 2, 5, 5, 0.5)]
    assert ref.differences("daily_funnel_step", [want[1], (*want[0][:5], 1.0 + 1e-15)], want) == []
    assert ref.differences("daily_funnel_step", want[:1], want) == ["only in the expected: %r" % (want[1],)]
    moved = (*want[1][:5], 0.5 + 1e-9)
    assert ref.differences("daily_funnel_step", [want[0], moved], want) == [
        "daily_funnel_step differs: result %r, expected %r" % (moved, want[1])]
    assert ref.differences("daily_funnel_step", want + want[:1], want)[0] == "daily_funnel_step: repeated rows"
    extra = (DAY, "u1", "EUR", 1, 100, 0)
    assert ref.differences("customer_daily_order", [extra], []) == ["only in the result: %r" % (extra,)]
