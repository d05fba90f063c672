"""Every transform of the marts job on small handmade DataFrames, with exact expected rows.

One local Spark session for the module (local[1], one shuffle partition, no whole-stage code
generation: on inputs this small, compiling the generated code costs more than running it).
"""

import datetime
import json

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from jobs.commerce.marts import transform

DAY = datetime.date(2026, 11, 18)  # a Wednesday
T0 = datetime.datetime(2026, 11, 18, 10, 0, 0)


@pytest.fixture(scope="module")
def spark():
    session = (SparkSession.builder.master("local[1]").appName("transform_test")
               .config("spark.sql.shuffle.partitions", "1")
               .config("spark.ui.enabled", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.sql.session.timeZone", "UTC")
               # Tiny inputs: compiling whole-stage code would cost more than running it.
               .config("spark.sql.codegen.wholeStage", "false")
               .getOrCreate())
    yield session
    session.stop()


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def event(event_id, minutes, event_type, anonymous_id="a1", user_id="", product=None, order_id=None,
          refund_id=None, amount=None, currency=None, lines=None):
    product = product or (None, "", "")
    return (
        "f", 0, event_id, at(minutes), user_id, anonymous_id, event_type, product[0], product[1], product[2],
        order_id, refund_id, amount, currency,
        None if lines is None else [(p, n, c, q, t, cur) for p, n, c, q, t, cur in lines],
    )


def events_df(spark, rows):
    return spark.createDataFrame(rows, transform.EVENT_SCHEMA)


def rows(frame, *columns, order=None):
    columns = columns or tuple(frame.columns)
    return [tuple(r[c] for c in columns) for r in frame.select(*columns).orderBy(*(order or columns)).collect()]


# --- parse_events ----------------------------------------------------------------------------------

def money(amount, currency="EUR"):
    out = {"currencyCode": currency}
    if amount:
        out["amountMinor"] = str(amount)
    return out


def line_json(payload, event_id="e1", time="2026-11-18T10:00:00Z", anonymous="a1", user=None):
    doc = {"eventId": event_id, "eventTime": time, "anonymousId": anonymous}
    if user:
        doc["userId"] = user
    doc.update(payload)
    return json.dumps(doc)


ORDER = {"orderPlaced": {
    "orderId": "o1",
    "lines": [
        {"product": {"productId": "p1", "productName": "Phones", "category": "audio/headphones"},
         "quantity": 2, "unitPrice": money(1000), "lineTotal": money(2000)},
        {"product": {"productId": "p2", "productName": "Cable", "category": "audio/cables"},
         "quantity": "1", "unitPrice": money(500), "lineTotal": money(500)},
    ],
    "subtotal": money(2500), "total": money(2700), "shipping": money(200),
}}


def test_parse_events_sorts_every_line_into_events_or_rejects(spark):
    texts = [
        line_json({"pageView": {"pageUrl": "https://shop/x", "pagePath": "/x"}}, "e1"),
        line_json(ORDER, "e2", "2026-11-18T10:05:00.123456Z", user="u1"),
        line_json({"productView": {"product": {"productId": "p1"}, "price": money(-5)}}, "e3"),
        line_json({"wishlistAdd": {"productId": "p1"}}, "e4"),
        '{"eventId": "e5", "eventTime": "2026-11-18T10:0',
        "this is not json",
        line_json({"pageView": {"pageUrl": "/y"}}, "e1"),  # duplicate event id
        line_json({"pageView": {"pageUrl": "/z"}}, "e8", "2026-11-17T23:59:59Z"),
        line_json({"addToCart": {"product": {"productId": "p1"}, "unitPrice": money(100)}}, "e9"),
        line_json({"pageView": {"pageUrl": "/z"}}, ""),
        json.dumps({"eventId": "e11", "eventTime": "2026-11-18T10:00:00Z", "anonymousId": "a1",
                    "pageView": "not an object"}),
        line_json({"search": {"query": "x"}, "pageView": {"pageUrl": "/q"}}, "e12"),
        "",
    ]
    data = [("file:/raw/part-0.jsonl.gz", i + 1, bytearray(t.encode("utf-8"))) for i, t in enumerate(texts)]
    data.append(("file:/raw/part-0.jsonl.gz", len(texts) + 1, bytearray(b'{"eventId": "e\xff\xfe"}')))
    data.append(("file:/raw/part-0.jsonl.gz", len(texts) + 2, bytearray(b"{not json, nor cut short")))
    lines = spark.createDataFrame(data, "source_file string, line_number long, b binary").select(
        "source_file", "line_number", F.col("b").cast("string").alias("value"))

    events, rejects = transform.parse_events(lines, DAY)

    # One checked row per line; the raw text is kept for rejected lines only, event columns for
    # valid ones only.
    checked = transform.validate_lines(lines, DAY)
    assert checked.count() == len(data)
    assert checked.where(F.col("reason").isNull() & F.col("raw_line").isNotNull()).count() == 0
    assert checked.where(F.col("reason").isNotNull() & F.col("event_id").isNotNull()).count() == 0

    rejected = rows(rejects, "line_number", "reason", "detail", "raw_line")
    assert [r[:3] for r in rejected] == [
        (3, "negative_amount", "productView.price"),
        (4, "unknown_event_type", "unknown fields: wishlistAdd"),
        (5, "truncated_json", "not parseable as JSON"),
        (6, "malformed_json", "not parseable as JSON"),
        (7, "duplicate_event_id", "eventId=e1"),
        (8, "outside_partition", "eventTime=2026-11-17T23:59:59Z is not in dt=2026-11-18"),
        (9, "invalid_quantity", "addToCart.quantity"),
        (10, "missing_field", "eventId"),
        (11, "type_mismatch", "a field has the wrong JSON type, or the line is not an object"),
        (12, "multiple_payloads", "more than one payload field is set"),
        (13, "empty_line", ""),
        (14, "not_utf8", "the line is not valid UTF-8"),
        (15, "malformed_json", "not parseable as JSON"),
    ]
    raw = {r[0]: r[3] for r in rejected}
    assert raw[6] == "this is not json"
    assert raw[14] == '{"eventId": "e\ufffd\ufffd"}'
    valid = events.orderBy("line_number").collect()
    assert [(r.line_number, r.event_id, r.event_type, r.user_id, r.order_id, r.amount, r.currency) for r in valid] == [
        (1, "e1", "page_view", "", None, None, None),
        (2, "e2", "order_placed", "u1", "o1", 2700, "EUR"),
    ]
    order = valid[1]
    assert order.event_time == datetime.datetime(2026, 11, 18, 10, 5, 0, 123456)
    assert [tuple(line) for line in order.lines] == [
        ("p1", "Phones", "audio/headphones", 2, 2000, "EUR"),
        ("p2", "Cable", "audio/cables", 1, 500, "EUR"),
    ]


def test_parse_events_wants_strict_json_and_rfc3339_times(spark):
    page = {"pageView": {"pageUrl": "/x"}}
    texts = [
        line_json(page, "s1").replace('"', "'"),  # single quotes: Spark's JSON reader alone takes it
        line_json(page, "s2")[:-1] + ',"countryCode":NaN}',
        line_json(page, "s3")[:-1] + ',"eventId":"s3b"}',  # a repeated key
        line_json(page, "s4", "2026-11-18"),  # a date, not an RFC 3339 time
        line_json(page, "s5", "2026-11-18 10:00:00"),
        line_json(page, "s6", " 2026-11-18T10:00:00Z"),
        line_json(page, "s7", "2026-11-18T11:00:00+01:00"),
        line_json(page, "s8", "2026-11-18T10:00:00.123456789Z"),
        # Text after a complete object (Spark's JSON parsers alone stop at the end of the object).
        line_json(page, "t1") + " trailing",
        line_json(page, "t2") + line_json(page, "t2b"),
        line_json(page, "t3") + "]",
        line_json(page, "t4") + "] x",
        line_json(page, "t5") + ", " + line_json(page, "t5b"),
        line_json(page, "t6") + '} {"x": 1}',
        " " + line_json(page, "t7") + " \r",  # blanks around one object are fine
    ]
    lines = spark.createDataFrame([("f", i + 1, t) for i, t in enumerate(texts)],
                                  "source_file string, line_number long, value string")
    events, rejects = transform.parse_events(lines, DAY)
    assert rows(rejects, "line_number", "reason", "detail") == [
        (1, "malformed_json", "not parseable as JSON"),
        (2, "malformed_json", "not parseable as JSON"),
        (3, "malformed_json", "not parseable as JSON"),
        (4, "invalid_timestamp", "eventTime=2026-11-18"),
        (5, "invalid_timestamp", "eventTime=2026-11-18 10:00:00"),
        (6, "invalid_timestamp", "eventTime= 2026-11-18T10:00:00Z"),
        (9, "truncated_json", "not parseable as JSON"),
        (10, "malformed_json", "not parseable as JSON"),
        (11, "truncated_json", "not parseable as JSON"),
        (12, "truncated_json", "not parseable as JSON"),
        (13, "malformed_json", "not parseable as JSON"),
        (14, "malformed_json", "not parseable as JSON"),
    ]
    assert rows(events, "line_number", "event_id", "event_time") == [
        (7, "s7", datetime.datetime(2026, 11, 18, 10, 0, 0)),
        (8, "s8", datetime.datetime(2026, 11, 18, 10, 0, 0, 123456)),
        (15, "t7", datetime.datetime(2026, 11, 18, 10, 0, 0)),
    ]


def test_parse_events_accepts_zero_amounts_omitted_by_proto3_json(spark):
    text = line_json({"productView": {"product": {"productId": "p9"}, "price": {"currencyCode": "EUR"}}}, "z1")
    lines = spark.createDataFrame([("f", 1, text)], "source_file string, line_number long, value string")
    events, rejects = transform.parse_events(lines, DAY)
    assert rejects.count() == 0
    assert rows(events, "event_id", "event_type", "product_id", "amount") == [("z1", "product_view", "p9", 0)]


# --- sessions and funnel --------------------------------------------------------------------------

def test_sessionize_cuts_at_gaps_longer_than_30_minutes(spark):
    data = [
        event("e1", 0, "page_view"),
        event("e2", 29, "product_view", product=("p1", "P", "c")),
        event("e3", 58, "add_to_cart", user_id="u1", product=("p1", "P", "c")),  # 29 min gap: same session
        event("e4", 89, "page_view"),  # 31 min gap: new session
        event("e5", 90, "checkout_started", user_id="u1"),
        event("e6", 91, "order_placed", user_id="u1", order_id="o1", amount=1500, currency="EUR",
              lines=[("p1", "P", "c", 1, 1500, "EUR")]),
        event("e7", 92, "order_placed", user_id="u1", order_id="o1", amount=1500, currency="EUR",
              lines=[("p1", "P", "c", 1, 1500, "EUR")]),  # the same order again: counted once
        event("b1", 5, "page_view", anonymous_id="b"),
    ]
    sessions = transform.sessionize(events_df(spark, data), DAY)
    got = rows(sessions, "anonymous_id", "user_id", "session_start_time", "session_end_time", "event_count",
               "page_view_count", "product_view_count", "funnel_stage", "converted", "order_total_amount_minor",
               "order_total_currency_code", order=["anonymous_id", "session_start_time"])
    assert got == [
        ("a1", "u1", at(0), at(58), 3, 1, 1, "FUNNEL_STAGE_CART", False, None, None),
        ("a1", "u1", at(89), at(92), 4, 1, 0, "FUNNEL_STAGE_PURCHASE", True, 1500, "EUR"),
        ("b", "", at(5), at(5), 1, 1, 0, "FUNNEL_STAGE_VISIT", False, None, None),
    ]
    ids = dict(((r.anonymous_id, r.session_start_time), r.session_id) for r in sessions.collect())
    import hashlib
    assert ids[("a1", at(0))] == hashlib.sha256(b"a1|e1").hexdigest()[:32]
    assert ids[("a1", at(89))] == hashlib.sha256(b"a1|e4").hexdigest()[:32]
    assert set(r.event_date for r in sessions.collect()) == {DAY}


def test_a_repeated_order_event_is_no_purchase(spark):
    data = [
        event("e1", 0, "order_placed", user_id="u1", order_id="o1", amount=1500, currency="EUR",
              lines=[("p1", "P", "c", 1, 1500, "EUR")]),
        event("e2", 60, "order_placed", user_id="u1", order_id="o1", amount=1500, currency="EUR",
              lines=[("p1", "P", "c", 1, 1500, "EUR")]),  # the order again, an hour later: a new session
    ]
    got = rows(transform.sessionize(events_df(spark, data), DAY), "session_start_time", "funnel_stage", "converted",
               "order_total_amount_minor", "order_total_currency_code")
    assert got == [
        (at(0), "FUNNEL_STAGE_PURCHASE", True, 1500, "EUR"),
        (at(60), "FUNNEL_STAGE_VISIT", False, None, None),
    ]


def test_funnel_counts_sessions_and_visitors_that_reached_at_least_each_stage(spark):
    sessions = spark.createDataFrame(
        [("u1", "a1", 5), ("u1", "a2", 3), ("", "a3", 3), ("", "a4", 1), ("", "a4", 2)],
        "user_id string, anonymous_id string, stage_number int")
    got = rows(transform.funnel(sessions, DAY), order=["stage_number"])
    assert got == [
        (DAY, "FUNNEL_STAGE_VISIT", 1, 5, 3, 1.0),
        (DAY, "FUNNEL_STAGE_PRODUCT_VIEW", 2, 4, 3, 0.8),
        (DAY, "FUNNEL_STAGE_CART", 3, 3, 2, 0.75),
        (DAY, "FUNNEL_STAGE_CHECKOUT", 4, 1, 1, 1 / 3),
        (DAY, "FUNNEL_STAGE_PURCHASE", 5, 1, 1, 1.0),
    ]


def test_funnel_has_all_stages_when_nobody_went_far(spark):
    sessions = spark.createDataFrame([("", "a1", 1)], "user_id string, anonymous_id string, stage_number int")
    got = rows(transform.funnel(sessions, DAY), "stage_number", "session_count", "conversion_rate_from_previous")
    assert got == [(1, 1, 1.0), (2, 0, 0.0), (3, 0, 0.0), (4, 0, 0.0), (5, 0, 0.0)]


# --- revenue and products -------------------------------------------------------------------------

ORDERS = [
    event("o1e", 1, "order_placed", user_id="u1", order_id="o1", amount=3300, currency="EUR", lines=[
        ("p1", "Phones", "audio/headphones", 2, 2000, "EUR"),
        ("p2", "Cable", "audio/cables", 1, 500, "EUR"),
        ("p3", "Mug", "home/kitchen", 1, 800, "EUR")]),
    event("o1dup", 2, "order_placed", user_id="u1", order_id="o1", amount=3300, currency="EUR", lines=[
        ("p1", "Phones", "audio/headphones", 2, 2000, "EUR")]),
    event("o2e", 3, "order_placed", user_id="u2", order_id="o2", amount=1000, currency="EUR", lines=[
        ("p1", "Phones v2", "audio/headphones", 1, 1000, "EUR")]),
    event("o3e", 4, "order_placed", user_id="", order_id="o3", amount=900, currency="USD", lines=[
        ("p3", "Mug", "home/kitchen", 1, 900, "USD")]),
    event("o4e", 5, "order_placed", user_id="u2", order_id="o4", amount=100, currency="EUR", lines=[
        ("p9", "Thing", "", 1, 100, "EUR")]),
    event("r1e", 6, "refund", user_id="u1", order_id="o0", refund_id="r1", amount=700, currency="EUR", lines=[
        ("p3", "Mug", "home/kitchen", 1, 700, "EUR")]),
    event("r1dup", 7, "refund", user_id="u1", order_id="o0", refund_id="r1", amount=700, currency="EUR", lines=[
        ("p3", "Mug", "home/kitchen", 1, 700, "EUR")]),
    event("r2e", 8, "refund", user_id="u3", order_id="o9", refund_id="r2", amount=300, currency="GBP", lines=[
        ("p5", "Pen", "office", 1, 300, "GBP")]),
    event("v1", 0, "product_view", product=("p1", "Phones", "audio/headphones"), amount=1000, currency="EUR"),
    event("v2", 0.5, "product_view", product=("p1", "Phones", "audio/headphones"), amount=1000, currency="EUR"),
    event("v3", 0.7, "product_view", product=("p3", "Mug", "home/kitchen"), amount=800, currency="EUR"),
]


def test_category_revenue_counts_each_order_once_and_nets_refunds(spark):
    got = rows(transform.category_revenue(events_df(spark, ORDERS), DAY),
               order=["gross_revenue_currency_code", "category"])
    assert got == [
        (DAY, "audio", 2, 4, 3500, "EUR", 0, "EUR", 3500, "EUR"),
        (DAY, "home", 1, 1, 800, "EUR", 700, "EUR", 100, "EUR"),
        (DAY, "uncategorized", 1, 1, 100, "EUR", 0, "EUR", 100, "EUR"),
        (DAY, "office", 0, 0, 0, "GBP", 300, "GBP", -300, "GBP"),
        (DAY, "home", 1, 1, 900, "USD", 0, "USD", 900, "USD"),
    ]


def test_top_products_rank_by_revenue_per_currency(spark):
    got = rows(transform.top_products(events_df(spark, ORDERS), DAY, limit=2),
               order=["revenue_currency_code", "rank"])
    assert got == [
        (DAY, 1, "p1", "Phones v2", "audio/headphones", 3, 3000, "EUR", 2),
        (DAY, 2, "p3", "Mug", "home/kitchen", 1, 800, "EUR", 1),
        (DAY, 1, "p3", "Mug", "home/kitchen", 1, 900, "USD", 1),
    ]


# --- customers ------------------------------------------------------------------------------------

def history_df(spark, data):
    return spark.createDataFrame(data, transform.CUSTOMER_HISTORY_SCHEMA)


def d(day_of_november: int) -> datetime.date:
    return datetime.date(2026, 11, day_of_november)


def test_customer_daily_orders_per_customer_and_currency(spark):
    got = rows(transform.customer_daily_orders(events_df(spark, ORDERS), DAY), order=["user_id", "currency_code"])
    assert got == [
        (DAY, "u1", "EUR", 1, 3300, 700),
        (DAY, "u2", "EUR", 2, 1100, 0),
        (DAY, "u3", "GBP", 0, 0, 300),
    ]


TODAY = [(DAY, "u1", "EUR", 1, 3300, 700), (DAY, "u2", "EUR", 2, 1100, 0), (DAY, "u3", "GBP", 0, 0, 300)]


def test_customer_types_new_when_today_is_the_first_order_day(spark):
    history = history_df(spark, [(d(10), "u1", "EUR", 1, 500, 0), (d(20), "u2", "EUR", 1, 500, 0)])
    got = rows(transform.customer_types(history_df(spark, TODAY), history, DAY))
    assert got == [
        (DAY, "NEW", "EUR", 1, 2, 1100),
        (DAY, "RETURNING", "EUR", 1, 1, 3300),
    ]


def test_cohort_retention_day_and_week_cells_of_the_run_day(spark):
    history = history_df(spark, [
        (d(11), "u1", "EUR", 1, 500, 0),   # u1: first order on the 11th (Wed), back today
        (d(11), "u4", "EUR", 1, 500, 0),   # u4: same cohort, not back
        (d(17), "u5", "EUR", 1, 500, 0),   # u5: first order yesterday (this week's Tuesday)
        (d(19), "u6", "EUR", 1, 500, 0),   # u6: tomorrow, already loaded: only in WEEK cells
        (d(19), "u4", "EUR", 1, 500, 0),   # u4 back tomorrow: retained for the week
        (d(3), "u7", "EUR", 0, 0, 100),    # a refund only: no order, no cohort
    ])
    got = rows(transform.cohort_retention(history_df(spark, TODAY), history, DAY))
    assert got == [
        ("COHORT_PERIOD_DAY", d(11), 7, 2, 1, 0.5, DAY),
        ("COHORT_PERIOD_DAY", d(17), 1, 1, 0, 0.0, DAY),
        ("COHORT_PERIOD_DAY", DAY, 0, 1, 1, 1.0, DAY),
        ("COHORT_PERIOD_WEEK", d(9), 1, 2, 2, 1.0, d(16)),
        ("COHORT_PERIOD_WEEK", d(16), 0, 3, 3, 1.0, d(16)),
    ]


def test_rfm_scores_and_segments(spark):
    history = history_df(spark, [
        (d(1), "u1", "EUR", 3, 9000, 0),
        (d(5), "u4", "EUR", 1, 100, 0),
        (d(17), "u5", "EUR", 2, 2000, 500),
        (d(19), "u5", "EUR", 5, 5000, 0),  # after the as-of day: ignored
    ])
    got = rows(transform.customer_rfm(history_df(spark, TODAY), history, DAY), order=["user_id"])
    # EUR customers: u1 (4 orders, 11600, last today), u2 (2, 1100, today), u4 (1, 100, 13 days
    # ago), u5 (2, 1500, yesterday); u3 only had a refund. Scores are ceil(5 * cume_dist):
    # recency desc u4 .25->2, u5 .5->3, u1/u2 1->5; frequency u4 .25->2, u2/u5 .75->4, u1 ->5;
    # monetary u4 ->2, u2 ->3, u5 ->4, u1 ->5.
    assert got == [
        (DAY, "u1", 0, 4, 11600, "EUR", 5, 5, 5, "RFM_SEGMENT_CHAMPION"),
        (DAY, "u2", 0, 2, 1100, "EUR", 5, 4, 3, "RFM_SEGMENT_LOYAL"),
        (DAY, "u4", 13, 1, 100, "EUR", 2, 2, 2, "RFM_SEGMENT_HIBERNATING"),
        (DAY, "u5", 1, 2, 1500, "EUR", 3, 4, 4, "RFM_SEGMENT_LOYAL"),
    ]


def test_rfm_segment_rules(spark):
    cases = [(5, 5, 5, 9, "RFM_SEGMENT_CHAMPION"), (3, 4, 1, 9, "RFM_SEGMENT_LOYAL"),
             (5, 1, 1, 1, "RFM_SEGMENT_NEW"), (3, 2, 5, 2, "RFM_SEGMENT_POTENTIAL_LOYALIST"),
             (2, 3, 5, 3, "RFM_SEGMENT_AT_RISK"), (1, 1, 1, 1, "RFM_SEGMENT_LOST"),
             (1, 2, 3, 2, "RFM_SEGMENT_HIBERNATING")]
    frame = spark.createDataFrame([c[:4] for c in cases], "r int, f int, m int, n long")
    got = [r.s for r in frame.select(
        transform.rfm_segment(F.col("r"), F.col("f"), F.col("m"), F.col("n")).alias("s")).collect()]
    assert got == [c[4] for c in cases]
