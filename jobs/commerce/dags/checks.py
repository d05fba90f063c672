"""Data-quality checks of one day of commerce marts: pure functions on plain rows.

The DAG's `check_quality` task reads the rows (PostgreSQL schema `mart`, and the raw partition
over WebHDFS for the independent figures) and hands them to these functions; nothing here does
I/O, so every rule is unit-tested on handmade rows (checks_test.py).

Each check returns a `CheckResult`; `failures()` keeps the failed ones and `report()` turns
them into the one message the failed task shows, naming the day, the table and the numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import json
import posixpath
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

# Funnel stages in contract order (proto/datapipelines/common/v1/funnel.proto numbers).
FUNNEL_STAGES = (
    "FUNNEL_STAGE_VISIT",
    "FUNNEL_STAGE_PRODUCT_VIEW",
    "FUNNEL_STAGE_CART",
    "FUNNEL_STAGE_CHECKOUT",
    "FUNNEL_STAGE_PURCHASE",
)

# Tables whose rows for day D the job's run log counts in `table_rows`, and the column that
# says which rows belong to D (deploy/postgres/migrations/0002_commerce_marts.sql).
DAY_COLUMN_BY_TABLE = {
    "daily_category_revenue": "event_date",
    "daily_funnel_step": "event_date",
    "daily_top_product": "event_date",
    "customer_rfm": "as_of_date",
    "session_summary": "event_date",
    "daily_customer_type": "event_date",
    "customer_daily_order": "order_date",
    "rejected_line": "event_date",
}
# mart.cohort_retention is left out: a run for D rewrites the week's cells too (keyed by the
# week's Monday), so "D's rows" of that table are not one predicate on one column.

RATE_TOLERANCE = 1e-9
LINE_BREAK = re.compile(rb"\r\n|\r|\n")
RFC3339 = re.compile(r"^(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d{1,9}))?(?P<zone>Z|[+-]\d\d:\d\d)$")


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One rule applied to one day: `passed`, and what was compared."""

    name: str
    passed: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class JobRun:
    """The job's own account of a successful run (a row of mart.job_run)."""

    run_id: str
    raw_lines: int
    valid_events: int
    rejected_lines: int
    table_rows: Mapping[str, int]


@dataclasses.dataclass
class RawTotals:
    """What the raw partition holds, counted independently of the job.

    `lines` counts every line of every data file (what the job must have read);
    `order_revenue` sums the line totals of each distinct order (first occurrence of an order
    id by event time, then event id) per currency, over lines the job did not reject;
    `unrejected_bad_lines` names order lines that are not parseable yet were not rejected.
    """

    files: int = 0
    lines: int = 0
    orders: int = 0
    order_revenue: Dict[str, int] = dataclasses.field(default_factory=dict)
    unrejected_bad_lines: List[str] = dataclasses.field(default_factory=list)


def _result(name: str, problems: List[str], ok_detail: str) -> CheckResult:
    if problems:
        return CheckResult(name, False, "; ".join(problems))
    return CheckResult(name, True, ok_detail)


# --- row counts ----------------------------------------------------------------------------------

def check_row_counts(run: JobRun, raw: RawTotals, table_counts: Mapping[str, int]) -> CheckResult:
    """The job read every raw line, accounted for each one, and the marts hold what it wrote.

    - raw lines counted over WebHDFS == the run's `raw_lines`;
    - `valid_events + rejected_lines == raw_lines` (each line is an event or a reject);
    - for each table in the run's `table_rows`, the rows now in PostgreSQL for the day equal
      what the run wrote (a partial or doubled write shows up here);
    - some events were valid and there are sessions and funnel rows when there were events.
    """
    problems = []
    if raw.lines != run.raw_lines:
        problems.append("raw partition has %d lines in %d files, the job read %d" % (raw.lines, raw.files, run.raw_lines))
    if raw.unrejected_bad_lines:
        problems.append("%d unparseable order lines are not in mart.rejected_line (first: %s)"
                        % (len(raw.unrejected_bad_lines), raw.unrejected_bad_lines[0]))
    if run.valid_events + run.rejected_lines != run.raw_lines:
        problems.append("job accounted for %d valid + %d rejected = %d lines of %d read"
                        % (run.valid_events, run.rejected_lines, run.valid_events + run.rejected_lines, run.raw_lines))
    for table, written in sorted(run.table_rows.items()):
        if table not in table_counts:
            continue
        if table_counts[table] != written:
            problems.append("mart.%s has %d rows for the day, the job wrote %d" % (table, table_counts[table], written))
    if "rejected_line" in table_counts and table_counts["rejected_line"] != run.rejected_lines:
        problems.append("mart.rejected_line has %d rows for the day, the job rejected %d lines"
                        % (table_counts["rejected_line"], run.rejected_lines))
    if run.valid_events > 0:
        for table in ("session_summary", "daily_funnel_step"):
            if table_counts.get(table, 0) == 0:
                problems.append("mart.%s is empty although %d events were valid" % (table, run.valid_events))
    return _result(
        "row_counts", problems,
        "%d raw lines = %d valid + %d rejected; %d tables match the run log"
        % (run.raw_lines, run.valid_events, run.rejected_lines, len(set(run.table_rows) & set(table_counts))),
    )


# --- money ---------------------------------------------------------------------------------------

def check_no_negative_revenue(category_rows: Sequence[Mapping], top_product_rows: Sequence[Mapping],
                              customer_type_rows: Sequence[Mapping] = ()) -> CheckResult:
    """No negative gross, refunded or product revenue; net = gross - refunded on every row.

    Net revenue of a category may legitimately be negative (refunds are booked on the refund
    day, against orders of earlier days), so only its arithmetic is checked.
    """
    problems = []
    for row in category_rows:
        key = "%s/%s" % (row["category"], row["currency_code"])
        gross, refunded, net = row["gross_revenue_amount_minor"], row["refunded_amount_minor"], row["net_revenue_amount_minor"]
        if gross < 0:
            problems.append("daily_category_revenue %s: gross %d < 0" % (key, gross))
        if refunded < 0:
            problems.append("daily_category_revenue %s: refunded %d < 0" % (key, refunded))
        if net != gross - refunded:
            problems.append("daily_category_revenue %s: net %d != gross %d - refunded %d" % (key, net, gross, refunded))
    for row in top_product_rows:
        if row["revenue_amount_minor"] < 0:
            problems.append("daily_top_product %s/%s: revenue %d < 0"
                            % (row["product_id"], row["currency_code"], row["revenue_amount_minor"]))
    for row in customer_type_rows:
        if row["gross_revenue_amount_minor"] < 0:
            problems.append("daily_customer_type %s/%s: gross %d < 0"
                            % (row["customer_type"], row["currency_code"], row["gross_revenue_amount_minor"]))
    return _result("no_negative_revenue", problems,
                   "%d category rows, %d top products, %d customer-type rows non-negative"
                   % (len(category_rows), len(top_product_rows), len(customer_type_rows)))


def check_revenue_reconciles(category_rows: Sequence[Mapping], raw: RawTotals,
                             top_product_rows: Sequence[Mapping] = ()) -> CheckResult:
    """Gross revenue by currency in the mart equals the raw orders' line totals, to the minor unit.

    Also: the top products of a currency never sell more than the whole currency.
    """
    mart: Dict[str, int] = {}
    for row in category_rows:
        mart[row["currency_code"]] = mart.get(row["currency_code"], 0) + row["gross_revenue_amount_minor"]
    problems = []
    for currency in sorted(set(mart) | set(raw.order_revenue)):
        in_mart, in_raw = mart.get(currency, 0), raw.order_revenue.get(currency, 0)
        if in_mart != in_raw:
            problems.append("%s: mart gross %d minor units, raw orders %d (difference %+d)"
                            % (currency, in_mart, in_raw, in_mart - in_raw))
    top: Dict[str, int] = {}
    for row in top_product_rows:
        top[row["currency_code"]] = top.get(row["currency_code"], 0) + row["revenue_amount_minor"]
    for currency, amount in sorted(top.items()):
        if amount > mart.get(currency, 0):
            problems.append("%s: top products sum to %d, more than the gross %d" % (currency, amount, mart.get(currency, 0)))
    summary = ", ".join("%s %d" % (c, a) for c, a in sorted(mart.items())) or "no revenue"
    return _result("revenue_reconciles", problems, "%d raw orders; gross by currency: %s" % (raw.orders, summary))


# --- funnel --------------------------------------------------------------------------------------

def check_funnel_monotone(funnel_rows: Sequence[Mapping]) -> CheckResult:
    """Stages visit → product view → cart → checkout → purchase never grow, and rates add up.

    With any sessions, all five stages are present; session and visitor counts are
    non-increasing along the funnel; each conversion rate is in [0, 1] and equals the
    session count over the previous stage's (1 for the first stage).
    """
    by_stage = {row["stage"]: row for row in funnel_rows}
    problems = []
    unknown = sorted(set(by_stage) - set(FUNNEL_STAGES))
    if unknown:
        problems.append("unknown stages %s" % ", ".join(unknown))
    if len(by_stage) != len(funnel_rows):
        problems.append("a stage appears more than once")
    if funnel_rows and set(by_stage) != set(FUNNEL_STAGES):
        problems.append("missing stages %s" % ", ".join(s for s in FUNNEL_STAGES if s not in by_stage))
    previous = None
    for stage in FUNNEL_STAGES:
        row = by_stage.get(stage)
        if row is None:
            continue
        rate = row["conversion_rate_from_previous"]
        if not 0.0 <= rate <= 1.0:
            problems.append("%s: conversion rate %r outside [0, 1]" % (stage, rate))
        if previous is None:
            expected = 1.0
        else:
            for column in ("session_count", "visitor_count"):
                if row[column] > previous[column]:
                    problems.append("%s: %s %d > %d at %s" % (stage, column, row[column], previous[column], previous["stage"]))
            expected = row["session_count"] / previous["session_count"] if previous["session_count"] else 0.0
        if abs(rate - expected) > RATE_TOLERANCE:
            problems.append("%s: conversion rate %.6f, expected %.6f" % (stage, rate, expected))
        previous = row
    counts = " > ".join(str(by_stage[s]["session_count"]) for s in FUNNEL_STAGES if s in by_stage)
    return _result("funnel_monotone", problems, "sessions per stage: %s" % (counts or "none"))


# --- raw partition -------------------------------------------------------------------------------

def _amount(money) -> Tuple[Optional[str], int]:
    """(currency, amount) of a Money in protobuf's JSON mapping (int64 as string or number)."""
    if not isinstance(money, dict):
        return None, 0
    return money.get("currencyCode"), int(money.get("amountMinor", 0) or 0)


def event_time_key(text) -> str:
    """An RFC 3339 time as a sortable UTC string with nanoseconds ("2026-01-05T10:00:00.500000000"),
    so "10:00:00.5Z" sorts before "10:00:01Z" whatever the offset or number of digits; the
    text itself when it does not parse (such a line was rejected by the job anyway)."""
    match = RFC3339.match(str(text or ""))
    if not match:
        return str(text or "")
    try:
        moment = datetime.datetime.fromisoformat(match["base"] + match["zone"].replace("Z", "+00:00"))
    except ValueError:
        return str(text)
    utc = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return "%s.%s" % (utc.isoformat(timespec="seconds"), (match["fraction"] or "").ljust(9, "0")[:9])


def scan_raw_file(name: str, lines: Iterable[bytes], rejected: Set[Tuple[str, int]],
                  totals: RawTotals, orders: Dict[str, Tuple[str, str, str, int]]) -> None:
    """Counts one data file's lines into `totals` and collects its orders into `orders`.

    `rejected` holds (file base name, line number) of the lines the job refused; those are not
    orders. `orders` maps order id -> (event time, event id, currency, sum of line totals) and
    keeps the first occurrence, as the mart's definition of an order says.
    """
    base = posixpath.basename(name)
    totals.files += 1
    for number, line in enumerate(lines, start=1):
        totals.lines += 1
        if b'"orderPlaced"' not in line or (base, number) in rejected:
            continue
        try:
            event = json.loads(line)
            order = event["orderPlaced"]
            order_id = order["orderId"]
        except (ValueError, TypeError, KeyError):
            # The job should have rejected this line; the row-count check reports it.
            totals.unrejected_bad_lines.append("%s:%d" % (base, number))
            continue
        currency = None
        revenue = 0
        for order_line in order.get("lines") or ():
            currency, amount = _amount(order_line.get("lineTotal"))
            revenue += amount
        key = (event_time_key(event.get("eventTime")), str(event.get("eventId", "")))
        seen = orders.get(order_id)
        if seen is None or key < seen[:2]:
            orders[order_id] = key + (currency or "", revenue)


def finish_raw_totals(totals: RawTotals, orders: Mapping[str, Tuple[str, str, str, int]]) -> RawTotals:
    """Folds the distinct orders into `totals.order_revenue` (per currency)."""
    totals.orders = len(orders)
    revenue: Dict[str, int] = {}
    for _time, _event, currency, amount in orders.values():
        revenue[currency] = revenue.get(currency, 0) + amount
    totals.order_revenue = revenue
    return totals


def split_lines(data: bytes, name: str) -> List[bytes]:
    """The lines of one raw file (gunzipped when the name ends in .gz), numbered as Hadoop's
    text reader numbers them: a line ends at LF, CR or CR LF; a final terminator adds no line."""
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    if not data:
        return []
    lines = LINE_BREAK.split(data)
    if lines[-1] == b"":
        lines.pop()
    return lines


def scan_raw(files: Iterable[Tuple[str, bytes]], rejected: Set[Tuple[str, int]]) -> RawTotals:
    """RawTotals of whole files given as (name, content) pairs."""
    totals = RawTotals()
    orders: Dict[str, Tuple[str, str, str, int]] = {}
    for name, data in files:
        scan_raw_file(name, split_lines(data, name), rejected, totals, orders)
    return finish_raw_totals(totals, orders)


# --- the report ----------------------------------------------------------------------------------

def failures(results: Iterable[CheckResult]) -> List[CheckResult]:
    return [r for r in results if not r.passed]


def report(day: str, results: Sequence[CheckResult]) -> str:
    """One line per check: `PASS name: detail` / `FAIL name: detail`, headed by the day."""
    failed = failures(results)
    head = "data quality of %s: %d of %d checks failed" % (day, len(failed), len(results)) if failed else \
        "data quality of %s: all %d checks passed" % (day, len(results))
    return "\n".join([head] + ["%s %s: %s" % ("PASS" if r.passed else "FAIL", r.name, r.detail) for r in results])
