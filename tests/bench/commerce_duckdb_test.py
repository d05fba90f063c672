"""The DuckDB baseline computes the same marts as the reference recomputation, row for row.

The shop simulator writes two small days as local part files (several per day, its default
rates of bad and duplicate lines); day 2 gets one more part file of hand-made lines (every
rejection reason, strict-JSON and timestamp edges, a line longer than the raw_line limit, an
order logged twice). `compute_marts` runs for day 1, then for day 2 with day 1's
customer_daily_order rows as history, exactly as `commerce_reference.MartState.run_day` does,
and every row of every table must equal the reference's: integers, text, dates and times
exactly, the two float columns within 1e-12, and the same Python types.

The one documented difference (tests/bench/README.md): a `not_utf8` line's raw_line is DuckDB's
rendering of the invalid bytes, so raw_line and raw_line_truncated of those rows are left out.
"""

import datetime
import json
import os
import pathlib
import subprocess

import pytest

from deploy.common.service import runfile
from tests.bench import commerce_duckdb as duck
from tests.e2e import commerce_reference as reference

DAY1, DAY2 = datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)
SHOP = ["--users", "300", "--products", "60", "--events-per-day", "6000", "--part-lines", "2500"]
PREFIX = "hdfs://127.0.0.1:8020"  # the job reports hdfs:// URIs; the reference is given the same names


def _event(event_id, time, payload, anonymous="extra-anon", user=None, **extra):
    doc = {"eventId": event_id, "eventTime": time, "anonymousId": anonymous}
    if user:
        doc["userId"] = user
    doc.update(payload)
    doc.update(extra)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _at(clock):
    return "2026-01-02T%sZ" % clock


PRODUCT = {"productId": "SKU-EXTRA", "productName": "Extra Lamp", "category": "home/lighting/lamps"}
EUR = {"currencyCode": "EUR", "amountMinor": "4999"}
ORDER = {"orderPlaced": {"orderId": "extra-order-1", "total": EUR, "shipping": {"currencyCode": "EUR"},
                         "lines": [{"product": PRODUCT, "quantity": 1, "unitPrice": EUR, "lineTotal": EUR}]}}
PAGE = {"pageView": {"pageUrl": "https://shop.example/", "pagePath": "/"}}
VALID_PAGE = _event("extra-page-1", _at("08:00:00"), PAGE, anonymous="extra-page-anon")
# Day 2's hand-made part file: the bad-line kinds of tests/e2e/commerce_test.py and more edges.
BAD_PART = [
    _event("extra-bad-1", _at("08:01:00"), PAGE)[:-1] + b",}",  # trailing comma
    _event("extra-bad-1b", _at("08:01:00"), PAGE)[:-1] + b" ,\t}",
    _event("extra-bad-2", _at("08:02:00"), PAGE).replace(b'"eventId":', b"eventId:"),
    _event("extra-bad-3", _at("08:03:00"), PAGE).replace(b'"', b"'"),  # single quotes
    _event("extra-bad-3b", _at("08:03:00"), PAGE, score=float("nan")),  # NaN (json.dumps writes it)
    _event("extra-bad-3c", _at("08:03:00"), PAGE)[:-1] + b',"score":-inf}',
    _event("extra-bad-3d", _at("08:03:00"), PAGE)[:-1] + b',"eventId":"again"}',  # a repeated key
    _event("extra-bad-3e", _at("08:03:00"), {"pageView": {"pageUrl": "/a", "pageUrl": "/b"}}
           ).replace(b'"pageUrl":"/b"', b'"pageUrl":"/a","pageUrl":"/b"'),
    _event("extra-bad-4", _at("08:04:00"), PAGE)[:70],  # truncated
    _event("extra-bad-5", _at("08:05:00"), {"search": {"query": "caf\u00e9"}}).decode().encode("latin-1"),
    _event("extra-bad-6", _at("08:06:00"), {"search": {"query": "lamp"}}).replace(b"lamp", b"la\xffmp"),
    _event("extra-bad-7", _at("08:07:00"), {"wishlistAdd": {"productId": "SKU-EXTRA"}}),
    _event("extra-bad-8", _at("08:08:00"), {"newsletterSignup": {"email": "someone@example.com"}, "x": 1}),
    _event("extra-bad-8b", _at("08:08:00"), {}),  # missing payload
    _event("extra-bad-8c", _at("08:08:00"), dict(PAGE, search={"query": "x"})),  # two payloads
    _event("extra-bad-8d", _at("08:08:00"), {"pageView": "/x"}),  # type mismatch
    _event("extra-bad-8e", _at("08:08:00"), {"orderPlaced": dict(ORDER["orderPlaced"], lines=[3])}),
    b"[1, 2]",
    _event("extra-bad-9", _at("08:09:00"), {"productView": {
        "product": PRODUCT, "price": {"currencyCode": "EUR", "amountMinor": "-4999"}}}),
    _event("extra-bad-10", _at("08:10:00"), {"addToCart": {
        "product": PRODUCT, "quantity": 1, "unitPrice": {"currencyCode": "EUR", "amountMinor": "-1"}}}),
    _event("extra-bad-10b", _at("08:10:00"), {"addToCart": {"product": PRODUCT, "unitPrice": EUR}}),
    _event("extra-bad-10c", _at("08:10:00"), {"addToCart": {"product": PRODUCT, "quantity": "x", "unitPrice": EUR}}),
    _event("extra-bad-11", _at("08:11:00"), {"orderPlaced": dict(ORDER["orderPlaced"], lines=[
        dict(ORDER["orderPlaced"]["lines"][0], lineTotal={"currencyCode": "EUR", "amountMinor": "-4999"})])},
        user="extra-user"),
    _event("extra-bad-11b", _at("08:11:00"), {"orderPlaced": dict(ORDER["orderPlaced"], lines=[
        dict(ORDER["orderPlaced"]["lines"][0], lineTotal={"currencyCode": "GBP", "amountMinor": "4999"})])}),
    _event("extra-bad-11c", _at("08:11:00"), {"orderPlaced": dict(ORDER["orderPlaced"], lines=[])}),
    _event("extra-bad-11d", _at("08:11:00"), {"refund": {"refundId": "r0", "orderId": "o", "amount": {
        "currencyCode": "EUR"}}}),
    _event("extra-bad-11e", _at("08:11:00"), {"productView": {"product": PRODUCT, "price": {
        "currencyCode": "eur", "amountMinor": "1"}}}),
    _event("extra-bad-11f", _at("08:11:00"), {"payment": {"paymentId": "p", "orderId": "o", "amount": EUR,
                                                          "status": "PAID"}}),
    _event("", _at("08:12:00"), PAGE),  # missing event id
    b"",
    b"   ",
    _event("extra-bad-13", "2026-01-03T00:00:01Z", PAGE),
    _event("extra-bad-13b", "2026-01-02T00:30:00+01:00", PAGE),  # 23:30 UTC the day before
    _event("extra-bad-14", "2026-01-02", PAGE),
    _event("extra-bad-14b", "2026-01-02T24:00:00Z", PAGE),
    _event("extra-bad-14c", "2026-02-30T10:00:00Z", PAGE),
    _event("extra-bad-15", _at("08:15:00"), {"note": "x" * 5000}),  # longer than the raw_line limit
    VALID_PAGE,
    VALID_PAGE,  # the same line logged twice
    _event("extra-late", "2026-01-02T23:30:00.1234567-00:20", PAGE),  # 23:50 UTC, digits past microseconds
    _event("extra-order-event-1", _at("09:00:00"), ORDER, user="extra-user"),
    # The same order again 90 minutes later with a new event id: a new session, counted once.
    _event("extra-order-event-2", _at("10:30:00"), ORDER, user="extra-user"),
    _event("extra-refund-1", _at("11:00:00"), {"refund": {
        "refundId": "extra-refund-1", "orderId": "extra-order-1", "amount": EUR,
        "lines": [{"product": PRODUCT, "quantity": "1", "lineTotal": EUR}]}}, user="extra-user"),
    _event("extra-bad-4b", _at("08:04:00"), PAGE) + b" trailing",  # text after a complete object
    _event("extra-bad-4c", _at("08:04:00"), PAGE) + b"] x",
    _event("extra-bad-4d", _at("08:04:00"), PAGE) + b", " + _event("extra-bad-4e", _at("08:04:00"), PAGE),
]


def clean_env():
    """Our environment without this test's Python path and runfiles: the child finds its own."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE", "PYTHONSAFEPATH")}


def generate(out, day, *extra):
    done = subprocess.run(
        [str(runfile("services/shop_simulator/shop_simulator")), "--start-date", day.isoformat(), "--days", "1",
         *SHOP, "--output-dir", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, env=clean_env())
    assert done.returncode == 0, done.stdout[-5000:]


def source_name(path: pathlib.Path) -> str:
    return PREFIX + "/raw/commerce/events/%s/%s" % (path.parent.name, path.name)


@pytest.fixture(scope="module")
def partitions(tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    bad = root / "bad-lines.jsonl"
    bad.write_bytes(b"\n".join(BAD_PART) + b"\n")
    generate(root, DAY1)
    generate(root, DAY2, "--extra-part", str(bad))
    days = {}
    for day in (DAY1, DAY2):
        folder = root / "raw" / "commerce" / "events" / ("dt=%s" % day.isoformat())
        days[day] = sorted(folder.glob("part-*"))
        assert len(days[day]) >= 2, days[day]
    return days


@pytest.fixture(scope="module")
def runs(partitions):
    """(day, DuckDB's tables, the reference's rows of that run) for day 1, then day 2."""
    state = reference.MartState()
    out = []
    for day in (DAY1, DAY2):
        paths = partitions[day]
        state.run_day(day, [(source_name(p), p.read_bytes()) for p in paths])
        history = [r for r in state.tables["customer_daily_order"] if r[0] != day]
        got = duck.compute_marts(paths, day, history, threads=2, source_name=source_name)
        want = {t: [r for r in state.tables[t] if reference.belongs_to_run(t, r, day)] for t in reference.TABLES}
        out.append((day, got, want))
    return out


def column_types(rows):
    return [sorted({type(r[i]).__name__ for r in rows}) for i in range(len(rows[0]))] if rows else []


@pytest.mark.parametrize("run", [0, 1], ids=["day1", "day2"])
@pytest.mark.parametrize("table", reference.TABLES)
def test_every_row_equals_the_reference(runs, run, table):
    day, got, want = runs[run]
    assert want[table] or table in ("cohort_retention", "daily_customer_type"), "the reference has no rows"
    problems = reference.differences(table, duck.comparable_rows(table, got[table]),
                                     duck.comparable_rows(table, want[table]))
    assert problems == [], "%s %s:\n%s" % (day, table, "\n".join(problems[:20]))
    assert column_types(got[table]) == column_types(want[table])


def test_the_comparison_sees_a_changed_cell(runs):
    day, got, want = runs[1]
    rows = list(got["daily_category_revenue"])
    changed = rows[0][:3] + (rows[0][3] + 1,) + rows[0][4:]
    assert reference.differences("daily_category_revenue", [changed] + rows[1:], want["daily_category_revenue"])
    funnel = list(got["daily_funnel_step"])
    moved = funnel[1][:5] + (funnel[1][5] + 1e-9,)
    assert reference.differences("daily_funnel_step", [funnel[0], moved] + funnel[2:], want["daily_funnel_step"])


def test_hand_made_lines_end_with_their_reasons(runs, partitions):
    _, got, _ = runs[1]
    bad_file = source_name(partitions[DAY2][-1])  # the simulator publishes the extra part last
    by_line = {r[2]: r[3:] for r in got["rejected_line"] if r[1] == bad_file}
    malformed = ("malformed_json", "not parseable as JSON")
    for number in (1, 2, 3, 4, 5, 6, 7, 8):  # trailing commas, NaN, -inf, repeated keys: strict JSON
        assert by_line[number][:2] == malformed, number
    assert by_line[9][:2] == ("truncated_json", "not parseable as JSON")
    assert by_line[10][:2] == by_line[11][:2] == ("not_utf8", "the line is not valid UTF-8")
    assert by_line[10][2] and by_line[11][2]  # DuckDB's rendering of the line, not empty
    assert by_line[13][:2] == ("unknown_event_type", "unknown fields: newsletterSignup,x")
    assert by_line[33][0] == "outside_partition" and by_line[36][0] == "invalid_timestamp"
    assert by_line[37][0] == "unknown_event_type"
    assert len(by_line[37][2]) == duck.RAW_LINE_LIMIT and by_line[37][3] is True
    assert by_line[39][:2] == ("duplicate_event_id", "eventId=extra-page-1")
    assert not {38, 40, 41, 42, 43} & set(by_line)
    # Text after a complete object (the last three lines).
    assert [by_line[n][0] for n in (44, 45, 46)] == ["truncated_json", "truncated_json", "malformed_json"]


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="part files not found"):
        duck.compute_marts([tmp_path / "part-00000.jsonl.gz"], DAY1)
    with pytest.raises(ValueError, match="no part files"):
        duck.compute_marts([], DAY1)
