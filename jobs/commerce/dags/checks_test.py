"""The data-quality rules on handmade rows: each passes on consistent data and names what is wrong otherwise."""

import gzip
import json

import pytest

from jobs.commerce.dags import checks


def order_line(order_id, lines, event_id="e1", time="2026-01-05T10:00:00Z"):
    return json.dumps({
        "eventId": event_id, "eventTime": time, "anonymousId": "a1",
        "orderPlaced": {"orderId": order_id, "lines": [
            {"product": {"productId": p}, "quantity": 1, "lineTotal": {"currencyCode": c, "amountMinor": str(a)}}
            for p, c, a in lines]},
    }).encode()


def page_view(event_id="p1"):
    return json.dumps({"eventId": event_id, "eventTime": "2026-01-05T09:00:00Z", "anonymousId": "a1",
                       "pageView": {"pageUrl": "https://shop.example/"}}).encode()


def category(name, currency, gross, refunded, net=None):
    return {"category": name, "currency_code": currency, "gross_revenue_amount_minor": gross,
            "refunded_amount_minor": refunded, "net_revenue_amount_minor": gross - refunded if net is None else net}


def funnel(*counts, visitors=None, rates=None):
    rows = []
    for i, (stage, count) in enumerate(zip(checks.FUNNEL_STAGES, counts)):
        rate = 1.0 if i == 0 else (count / counts[i - 1] if counts[i - 1] else 0.0)
        rows.append({"stage": stage, "session_count": count,
                     "visitor_count": (visitors or counts)[i],
                     "conversion_rate_from_previous": rates[i] if rates else rate})
    return rows


# --- raw scanning --------------------------------------------------------------------------------

def test_lines_are_split_like_hadoop_text_input():
    data = b"a\nb\r\nc\rd\n"
    assert checks.split_lines(data, "part-0.jsonl") == [b"a", b"b", b"c", b"d"]
    assert checks.split_lines(b"a\nlast-without-newline", "x") == [b"a", b"last-without-newline"]
    assert checks.split_lines(b"", "x") == []
    assert checks.split_lines(gzip.compress(b"x\n\ny\n"), "part-1.jsonl.gz") == [b"x", b"", b"y"]


def test_scan_counts_every_line_and_sums_each_distinct_order_once():
    file_a = b"\n".join([
        page_view(),
        order_line("o1", [("p1", "EUR", 1000), ("p2", "EUR", 250)], event_id="e1"),
        b"{not json",                                                   # rejected by the job
        order_line("o1", [("p1", "EUR", 1000)], event_id="e0", time="2026-01-05T09:59:00Z"),  # earlier copy wins
        order_line("o2", [("p3", "USD", 700)], event_id="e3"),
    ]) + b"\n"
    file_b = gzip.compress(order_line("o3", [("p1", "EUR", -5)], event_id="e4") + b"\n")  # rejected line 1
    rejected = {("part-0.jsonl", 3), ("part-1.jsonl.gz", 1)}
    totals = checks.scan_raw([("/raw/dt=2026-01-05/part-0.jsonl", file_a),
                              ("/raw/dt=2026-01-05/part-1.jsonl.gz", file_b)], rejected)
    assert (totals.files, totals.lines, totals.orders) == (2, 6, 2)
    assert totals.order_revenue == {"EUR": 1000, "USD": 700}
    assert totals.unrejected_bad_lines == []


def test_an_unparseable_order_line_the_job_kept_is_reported():
    totals = checks.scan_raw([("part-0.jsonl", b'{"orderPlaced": {"orderId": "o1", \n')], set())
    assert totals.unrejected_bad_lines == ["part-0.jsonl:1"]
    run = checks.JobRun("r", raw_lines=1, valid_events=1, rejected_lines=0, table_rows={})
    result = checks.check_row_counts(run, totals, {"session_summary": 1, "daily_funnel_step": 5})
    assert not result.passed and "part-0.jsonl:1" in result.detail


# --- row counts ----------------------------------------------------------------------------------

def run_and_raw(raw_lines=10, valid=8, rejected=2, table_rows=None):
    run = checks.JobRun("run-1", raw_lines, valid, rejected, table_rows or {"session_summary": 3, "rejected_line": 2})
    return run, checks.RawTotals(files=2, lines=raw_lines)


def test_row_counts_pass_when_raw_run_log_and_tables_agree():
    run, raw = run_and_raw()
    counts = {"session_summary": 3, "rejected_line": 2, "daily_funnel_step": 5}
    result = checks.check_row_counts(run, raw, counts)
    assert result.passed, result.detail
    assert result.name == "row_counts"


@pytest.mark.parametrize("change, expected", [
    (dict(raw_lines_seen=11), "raw partition has 11 lines in 2 files, the job read 10"),
    (dict(valid=7), "job accounted for 7 valid + 2 rejected = 9 lines of 10"),
    (dict(session_rows=6), "mart.session_summary has 6 rows for the day, the job wrote 3"),
    (dict(reject_rows=1), "mart.rejected_line has 1 rows for the day, the job wrote 2"),
    (dict(funnel_rows=0), "mart.daily_funnel_step is empty although 8 events were valid"),
])
def test_row_counts_name_each_mismatch(change, expected):
    run, raw = run_and_raw(valid=change.get("valid", 8))
    raw.lines = change.get("raw_lines_seen", raw.lines)
    counts = {"session_summary": change.get("session_rows", 3), "rejected_line": change.get("reject_rows", 2),
              "daily_funnel_step": change.get("funnel_rows", 5)}
    result = checks.check_row_counts(run, raw, counts)
    assert not result.passed
    assert expected in result.detail


def test_tables_the_run_log_does_not_count_are_not_compared():
    run, raw = run_and_raw(table_rows={"session_summary": 3})
    result = checks.check_row_counts(run, raw, {"session_summary": 3, "daily_funnel_step": 5, "rejected_line": 2,
                                                "customer_rfm": 999})
    assert result.passed, result.detail


# --- money ---------------------------------------------------------------------------------------

def test_non_negative_revenue_passes_and_allows_negative_net():
    rows = [category("books", "EUR", 1000, 200), category("toys", "EUR", 0, 300)]  # refunds of older orders
    result = checks.check_no_negative_revenue(rows, [{"product_id": "p1", "currency_code": "EUR",
                                                      "revenue_amount_minor": 900}])
    assert result.passed, result.detail


@pytest.mark.parametrize("rows, top, types, expected", [
    ([category("books", "EUR", -1, 0)], [], [], "daily_category_revenue books/EUR: gross -1 < 0"),
    ([category("books", "EUR", 10, -3)], [], [], "refunded -3 < 0"),
    ([category("books", "EUR", 10, 3, net=8)], [], [], "net 8 != gross 10 - refunded 3"),
    ([], [{"product_id": "p9", "currency_code": "USD", "revenue_amount_minor": -50}], [],
     "daily_top_product p9/USD: revenue -50 < 0"),
    ([], [], [{"customer_type": "NEW", "currency_code": "EUR", "gross_revenue_amount_minor": -2}],
     "daily_customer_type NEW/EUR: gross -2 < 0"),
])
def test_negative_revenue_is_reported(rows, top, types, expected):
    result = checks.check_no_negative_revenue(rows, top, types)
    assert not result.passed
    assert expected in result.detail


def test_revenue_reconciles_per_currency_to_the_minor_unit():
    raw = checks.RawTotals(orders=3, order_revenue={"EUR": 1300, "USD": 700})
    rows = [category("books", "EUR", 1000, 0), category("toys", "EUR", 300, 50), category("books", "USD", 700, 0)]
    top = [{"product_id": "p1", "currency_code": "EUR", "revenue_amount_minor": 1000}]
    result = checks.check_revenue_reconciles(rows, raw, top)
    assert result.passed, result.detail
    assert "EUR 1300" in result.detail and "USD 700" in result.detail


def test_revenue_mismatches_are_reported_with_the_difference():
    raw = checks.RawTotals(orders=2, order_revenue={"EUR": 1300, "GBP": 10})
    rows = [category("books", "EUR", 1301, 0)]
    result = checks.check_revenue_reconciles(rows, raw)
    assert not result.passed
    assert "EUR: mart gross 1301 minor units, raw orders 1300 (difference +1)" in result.detail
    assert "GBP: mart gross 0 minor units, raw orders 10 (difference -10)" in result.detail


def test_top_products_cannot_exceed_the_currency_gross():
    raw = checks.RawTotals(orders=1, order_revenue={"EUR": 100})
    top = [{"product_id": "p1", "currency_code": "EUR", "revenue_amount_minor": 150}]
    result = checks.check_revenue_reconciles([category("a", "EUR", 100, 0)], raw, top)
    assert not result.passed and "top products sum to 150, more than the gross 100" in result.detail


# --- funnel --------------------------------------------------------------------------------------

def test_monotone_funnel_passes():
    result = checks.check_funnel_monotone(funnel(100, 60, 20, 10, 7))
    assert result.passed, result.detail
    assert "100 > 60 > 20 > 10 > 7" in result.detail


def test_a_day_without_sessions_has_no_funnel_rows_and_passes():
    assert checks.check_funnel_monotone([]).passed


@pytest.mark.parametrize("rows, expected", [
    (funnel(100, 60, 70, 10, 7), "FUNNEL_STAGE_CART: session_count 70 > 60 at FUNNEL_STAGE_PRODUCT_VIEW"),
    (funnel(100, 60, 20, 10, 7, visitors=[50, 40, 45, 5, 3]), "visitor_count 45 > 40"),
    (funnel(100, 60, 20, 10, 7, rates=[1.0, 0.6, 0.5, 0.5, 0.7]), "FUNNEL_STAGE_CART: conversion rate 0.500000, expected 0.333333"),
    (funnel(100, 60, 20, 10, 7, rates=[1.0, 0.6, 1 / 3, 0.5, 1.4]), "conversion rate 1.4 outside [0, 1]"),
    (funnel(100, 60, 20, 10, 7)[:4], "missing stages FUNNEL_STAGE_PURCHASE"),
    (funnel(100, 60, 20, 10, 7) + [{"stage": "FUNNEL_STAGE_REFUND", "session_count": 1, "visitor_count": 1,
                                    "conversion_rate_from_previous": 0.0}], "unknown stages FUNNEL_STAGE_REFUND"),
])
def test_funnel_violations_are_named(rows, expected):
    result = checks.check_funnel_monotone(rows)
    assert not result.passed
    assert expected in result.detail


# --- report --------------------------------------------------------------------------------------

def test_report_lists_every_check_and_leads_with_the_failures():
    results = [checks.CheckResult("row_counts", True, "ok"), checks.CheckResult("funnel_monotone", False, "bad")]
    text = checks.report("2026-01-05", results)
    assert text.splitlines() == [
        "data quality of 2026-01-05: 1 of 2 checks failed",
        "PASS row_counts: ok",
        "FAIL funnel_monotone: bad",
    ]
    assert checks.report("2026-01-05", results[:1]).startswith("data quality of 2026-01-05: all 1 checks passed")


def test_event_times_sort_by_instant_not_by_text():
    key = checks.event_time_key
    assert key("2026-01-05T10:00:00.5Z") < key("2026-01-05T10:00:01Z")
    assert key("2026-01-05T10:00:00.5Z") > key("2026-01-05T10:00:00Z")  # as text it would sort first
    assert key("2026-01-05T10:00:00Z") < key("2026-01-05T10:00:00.000000001Z")
    assert key("2026-01-05T11:00:00+01:00") == key("2026-01-05T10:00:00Z")
    assert key("not a time") == "not a time"


def test_the_earliest_copy_of_an_order_counts_even_with_fractional_seconds():
    data = b"\n".join([
        order_line("o1", [("p1", "EUR", 100)], event_id="e2", time="2026-01-05T10:00:00Z"),
        order_line("o1", [("p1", "EUR", 999)], event_id="e1", time="2026-01-05T10:00:00.5Z"),
    ])
    assert checks.scan_raw([("part-0.jsonl", data)], set()).order_revenue == {"EUR": 100}
