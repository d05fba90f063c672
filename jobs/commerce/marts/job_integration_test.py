"""The marts job binary end to end on real services: HDFS (raw partitions written over WebHDFS),
a Spark Connect server (the job runs its plans there) and PostgreSQL (migrated schema `mart`).

The raw lines are real protobuf JSON (json_format of CommerceEvent messages), gzip-compressed,
plus bad lines of every kind the job must reject. Expected mart rows are worked out by hand
from the events below (the comments say how), never by the job's own code.
"""

import datetime
import gzip
import json
import os
import subprocess

import psycopg
import pytest
from google.protobuf import json_format

from datapipelines.commerce.v1 import commerce_event_pb2 as pb
from datapipelines.common.v1 import money_pb2
from deploy.common.service import runfile
from deploy.hdfs.webhdfs import WebHdfsClient
from tests.fixtures.hdfs_cluster import hdfs_cluster  # noqa: F401 (a fixture)
from tests.fixtures.postgres_server import postgres_server  # noqa: F401 (a fixture)
from tests.fixtures.spark_connect import spark_connect_server  # noqa: F401 (a fixture)

RAW = "/raw/commerce/events"
DAY0 = datetime.date(2026, 11, 17)
DAY = datetime.date(2026, 11, 18)
JOB_TIMEOUT = 600
MART_TABLES = ("daily_category_revenue", "daily_funnel_step", "daily_top_product", "cohort_retention",
               "customer_rfm", "session_summary", "daily_customer_type", "customer_daily_order", "rejected_line")


def ts(day, hh, mm):
    return datetime.datetime(day.year, day.month, day.day, hh, mm, tzinfo=datetime.timezone.utc)


class Events:
    def __init__(self):
        self.lines = []
        self.count = 0

    def add(self, when, anonymous_id, user_id="", **payload):
        self.count += 1
        event = pb.CommerceEvent(event_id="ev-%03d-%s" % (self.count, anonymous_id), user_id=user_id,
                                 session_id="hint", anonymous_id=anonymous_id, country_code="DE")
        event.event_time.FromDatetime(when)
        for name, value in payload.items():
            getattr(event, name).CopyFrom(value)
        self.lines.append(json_format.MessageToJson(event, indent=None).encode())
        return event


def money(amount):
    return money_pb2.Money(currency_code="EUR", amount_minor=amount)


P1 = pb.ProductRef(product_id="p1", product_name="Headphones", category="audio/headphones")
P2 = pb.ProductRef(product_id="p2", product_name="Cable", category="audio/cables")
P3 = pb.ProductRef(product_id="p3", product_name="Mug", category="home/kitchen")


def line(product, quantity, unit, total):
    return pb.OrderLine(product=product, quantity=quantity, unit_price=money(unit), line_total=money(total))


def day0_part():
    events = Events()
    events.add(ts(DAY0, 9, 0), "a9", "u1", order_placed=pb.OrderPlaced(
        order_id="o0", lines=[line(P3, 1, 1200, 1200)], subtotal=money(1200), total=money(1200)))
    return events.lines


def day_parts():
    """Two part files of DAY: the valid events and, in the second file, five bad lines."""
    a1 = Events()
    a1.add(ts(DAY, 10, 0), "a1", "u1", page_view=pb.PageView(page_url="https://shop/", page_path="/"))
    a1.add(ts(DAY, 10, 5), "a1", "u1", product_view=pb.ProductView(product=P1, price=money(5000)))
    a1.add(ts(DAY, 10, 6), "a1", "u1", add_to_cart=pb.AddToCart(cart_id="c1", product=P1, quantity=1,
                                                               unit_price=money(5000)))
    a1.add(ts(DAY, 10, 10), "a1", "u1", checkout_started=pb.CheckoutStarted(checkout_id="k1", cart_id="c1",
                                                                           item_count=3, cart_total=money(6000)))
    a1.add(ts(DAY, 10, 12), "a1", "u1", order_placed=pb.OrderPlaced(
        order_id="o1", checkout_id="k1", lines=[line(P1, 1, 5000, 5000), line(P2, 2, 500, 1000)],
        subtotal=money(6000), shipping=money(500), total=money(6500)))
    a1.add(ts(DAY, 10, 13), "a1", "u1", payment=pb.Payment(payment_id="y1", order_id="o1", amount=money(6500),
                                                          method=pb.PAYMENT_METHOD_CARD,
                                                          status=pb.PAYMENT_STATUS_CAPTURED))
    # 48 minutes later: a new session.
    a1.add(ts(DAY, 11, 0), "a1", "u1", page_view=pb.PageView(page_url="https://shop/orders", page_path="/orders"))
    a1.add(ts(DAY, 11, 5), "a1", "u1", refund=pb.Refund(refund_id="r1", order_id="o1", payment_id="y1",
                                                       amount=money(500), lines=[line(P2, 1, 500, 500)],
                                                       reason="damaged"))
    other = Events()
    other.count = 100
    other.add(ts(DAY, 12, 0), "a2", page_view=pb.PageView(page_url="https://shop/", page_path="/"))
    other.add(ts(DAY, 12, 1), "a2", product_view=pb.ProductView(product=P1, price=money(5000)))
    other.add(ts(DAY, 12, 2), "a2", search=pb.Search(query="mug", result_count=3))
    other.add(ts(DAY, 13, 0), "a3", "u2", product_view=pb.ProductView(product=P3, price=money(1200)))
    other.add(ts(DAY, 13, 1), "a3", "u2", add_to_cart=pb.AddToCart(cart_id="c3", product=P3, quantity=1,
                                                                  unit_price=money(1200)))
    other.add(ts(DAY, 13, 2), "a3", "u2", checkout_started=pb.CheckoutStarted(checkout_id="k3", cart_id="c3",
                                                                             item_count=1, cart_total=money(1200)))
    other.add(ts(DAY, 13, 3), "a3", "u2", order_placed=pb.OrderPlaced(
        order_id="o2", lines=[line(P3, 1, 1200, 1200)], subtotal=money(1200), total=money(1200)))
    negative = json.loads(other.lines[1])
    negative["eventId"] = "ev-neg"
    negative["productView"]["price"]["amountMinor"] = "-100"
    bad = [
        (b"{not json at all", "malformed_json"),
        (other.lines[0][: len(other.lines[0]) // 2], "truncated_json"),
        (b'{"eventId": "ev-\xff\xfe", "pageView": {}}', "not_utf8"),
        (json.dumps({"eventId": "ev-wish", "eventTime": "2026-11-18T14:00:00Z", "anonymousId": "a2",
                     "wishlistAdd": {"productId": "p1"}}).encode(), "unknown_event_type"),
        (json.dumps(negative).encode(), "negative_amount"),
    ]
    second = list(other.lines)
    expected_rejects = {}
    for position, (text, reason) in zip((1, 3, 5, 7, 11), bad):
        second.insert(position - 1, text)
    for number, text in enumerate(second, start=1):
        for bad_text, reason in bad:
            if text is bad_text:
                expected_rejects[number] = reason
    return a1.lines, second, expected_rejects


def put_partition(client, day, parts):
    folder = "%s/dt=%s" % (RAW, day.isoformat())
    client.mkdirs(folder)
    for index, lines in enumerate(parts):
        client.create("%s/part-%05d.jsonl.gz" % (folder, index), gzip.compress(b"\n".join(lines) + b"\n"))
    client.create(folder + "/_SUCCESS", b"")


def run_job(day, hdfs, spark, dsn):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the job's stub sets the spark set
    return subprocess.run(
        [str(runfile("jobs/commerce/marts/job")), "--day", day.isoformat(), "--raw-root", hdfs + RAW,
         "--postgres-dsn", dsn, "--spark-remote", spark.url],
        capture_output=True, text=True, timeout=JOB_TIMEOUT, env=env)


def snapshot(dsn):
    with psycopg.connect(dsn) as conn:
        return {t: sorted(map(repr, conn.execute("SELECT * FROM mart.%s" % t).fetchall())) for t in MART_TABLES}


def query(dsn, text, *params):
    with psycopg.connect(dsn) as conn:
        return conn.execute(text, params).fetchall()


@pytest.fixture(scope="module")
def loaded(hdfs_cluster, spark_connect_server, postgres_server):  # noqa: F811
    client = WebHdfsClient(hdfs_cluster.webhdfs_url, user="shop")
    put_partition(client, DAY0, [day0_part()])
    first, second, expected_rejects = day_parts()
    put_partition(client, DAY, [first, second])
    dsn = postgres_server.app_dsn
    runs = {}
    for day in (DAY0, DAY):
        result = run_job(day, hdfs_cluster.hdfs_url, spark_connect_server, dsn)
        assert result.returncode == 0, "job for %s failed:\n%s\n%s" % (day, result.stdout, result.stderr[-5000:])
        runs[day] = json.loads(result.stdout.strip().splitlines()[-1])
    return {"dsn": dsn, "runs": runs, "expected_rejects": expected_rejects, "hdfs": hdfs_cluster.hdfs_url,
            "spark": spark_connect_server}


def test_summary_counts_every_raw_line(loaded):
    summary = loaded["runs"][DAY]
    assert summary["day"] == "2026-11-18"
    assert (summary["raw_lines"], summary["valid_events"], summary["rejected_lines"]) == (20, 15, 5)
    assert summary["gross_revenue_minor"] == {"EUR": 7200}  # line totals 5000 + 1000 + 1200
    assert summary["net_revenue_minor"] == {"EUR": 6700}  # minus the refunded cable line, 500
    assert summary["rows"]["session_summary"] == 4
    assert summary["rows"]["rejected_line"] == 5


def test_bad_lines_land_in_rejects_with_reason_file_and_line(loaded):
    got = query(loaded["dsn"], "SELECT source_file, line_number, reason FROM mart.rejected_line "
                               "WHERE event_date = %s ORDER BY line_number", DAY)
    assert [(f.rsplit("/", 1)[1], n, r) for f, n, r in got] == [
        ("part-00001.jsonl.gz", n, r) for n, r in sorted(loaded["expected_rejects"].items())]
    assert all(f.startswith(loaded["hdfs"]) for f, _, _ in got)


def test_revenue_by_category_net_of_refunds(loaded):
    got = query(loaded["dsn"], "SELECT category, order_count, units_sold, gross_revenue_amount_minor, "
                               "refunded_amount_minor, net_revenue_amount_minor, currency_code "
                               "FROM mart.daily_category_revenue WHERE event_date = %s ORDER BY category", DAY)
    # o1: headphones 1 x 5000 + cables 2 x 500 (audio), refund of one cable (500); o2: mug 1200.
    assert got == [("audio", 1, 3, 6000, 500, 5500, "EUR"), ("home", 1, 1, 1200, 0, 1200, "EUR")]


def test_funnel_sessions_and_products(loaded):
    dsn = loaded["dsn"]
    funnel = query(dsn, "SELECT stage, session_count, visitor_count, conversion_rate_from_previous "
                        "FROM mart.daily_funnel_step WHERE event_date = %s ORDER BY stage_number", DAY)
    # Sessions: a1 purchase, a1 again 48 min later (visit), a2 product view, a3 purchase.
    assert funnel == [("FUNNEL_STAGE_VISIT", 4, 3, 1.0), ("FUNNEL_STAGE_PRODUCT_VIEW", 3, 3, 0.75),
                      ("FUNNEL_STAGE_CART", 2, 2, 2 / 3), ("FUNNEL_STAGE_CHECKOUT", 2, 2, 1.0),
                      ("FUNNEL_STAGE_PURCHASE", 2, 2, 1.0)]
    sessions = query(dsn, "SELECT anonymous_id, user_id, event_count, funnel_stage, converted, "
                          "order_total_amount_minor FROM mart.session_summary WHERE event_date = %s "
                          "ORDER BY anonymous_id, session_start_time", DAY)
    assert sessions == [("a1", "u1", 6, "FUNNEL_STAGE_PURCHASE", True, 6500),
                        ("a1", "u1", 2, "FUNNEL_STAGE_VISIT", False, None),
                        ("a2", "", 3, "FUNNEL_STAGE_PRODUCT_VIEW", False, None),
                        ("a3", "u2", 4, "FUNNEL_STAGE_PURCHASE", True, 1200)]
    top = query(dsn, "SELECT rank, product_id, units_sold, revenue_amount_minor, view_count FROM "
                     "mart.daily_top_product WHERE event_date = %s ORDER BY rank", DAY)
    assert top == [(1, "p1", 1, 5000, 2), (2, "p3", 1, 1200, 1), (3, "p2", 2, 1000, 0)]


def test_customers_cohorts_and_rfm_use_the_previous_day(loaded):
    dsn = loaded["dsn"]
    assert query(dsn, "SELECT customer_type, customer_count, order_count, gross_revenue_amount_minor "
                      "FROM mart.daily_customer_type WHERE event_date = %s ORDER BY 1", DAY) == [
        ("NEW", 1, 1, 1200), ("RETURNING", 1, 1, 6500)]
    assert query(dsn, "SELECT cohort_period, cohort_start_date, period_offset, cohort_size, retained_count "
                      "FROM mart.cohort_retention WHERE activity_period_start_date IN (%s, %s) ORDER BY 1, 2",
                 DAY, datetime.date(2026, 11, 16)) == [
        ("COHORT_PERIOD_DAY", DAY0, 1, 1, 1), ("COHORT_PERIOD_DAY", DAY, 0, 1, 1),
        ("COHORT_PERIOD_WEEK", datetime.date(2026, 11, 16), 0, 2, 2)]
    # u1: o0 1200 + o1 6500 - refund 500 = 7200; u2: o2 1200. Both ordered today (recency 0).
    assert query(dsn, "SELECT user_id, recency_days, order_count, monetary_amount_minor, recency_score, "
                      "frequency_score, monetary_score, segment FROM mart.customer_rfm WHERE as_of_date = %s "
                      "ORDER BY 1", DAY) == [
        ("u1", 0, 2, 7200, 5, 5, 5, "RFM_SEGMENT_CHAMPION"), ("u2", 0, 1, 1200, 5, 3, 3, "RFM_SEGMENT_NEW")]


def test_rerunning_a_day_changes_nothing(loaded):
    dsn = loaded["dsn"]
    before = snapshot(dsn)
    result = run_job(DAY, loaded["hdfs"], loaded["spark"], dsn)
    assert result.returncode == 0, result.stderr[-5000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["rows"] == loaded["runs"][DAY]["rows"]
    assert snapshot(dsn) == before
    assert query(dsn, "SELECT status, count(*) FROM mart.job_run WHERE event_date = %s GROUP BY 1", DAY) == [
        ("SUCCEEDED", 2)]


def test_a_missing_partition_fails_clearly_and_writes_nothing(loaded):
    dsn = loaded["dsn"]
    before = snapshot(dsn)
    missing = DAY + datetime.timedelta(days=1)
    result = run_job(missing, loaded["hdfs"], loaded["spark"], dsn)
    assert result.returncode == 1
    assert "dt=2026-11-19" in result.stderr and "_SUCCESS" in result.stderr
    assert snapshot(dsn) == before
    assert query(dsn, "SELECT status FROM mart.job_run WHERE event_date = %s", missing) == [("FAILED",)]
