"""An independent recomputation of every commerce mart from the raw partition files.

Plain Python (standard library only): it never imports the job (jobs/commerce/marts) and never
runs Spark, so the end-to-end test (commerce_test.py) can compare every row the job wrote into
PostgreSQL with what the definitions in jobs/commerce/marts/README.md give for the same raw
bytes. The definitions are re-implemented here from that README and the contract
(proto/datapipelines/commerce/v1/commerce_event.proto in protobuf's JSON mapping):

    files = [(source_file, raw_bytes_of_the_part_file), ...]    # .gz decoded here
    state = MartState()
    state.run_day(day, files)       # what one run of the job for `day` leaves in schema mart
    state.rows("daily_funnel_step") # every row of a table, in the job's column order

`MartState` keeps every table's rows as the job's one-transaction "replace day D" leaves them,
including the cumulative ones (customer_daily_order history, cohort cells, RFM), computed from
its own history, never from the job's. Times are aware UTC datetimes, dates `datetime.date`,
money integers of minor units; the two float columns (funnel conversion, retention rate) are
plain quotients.
"""

from __future__ import annotations

import collections
import datetime
import gzip
import hashlib
import json
import math
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

SESSION_GAP = datetime.timedelta(minutes=30)
DAY_COHORT_OFFSETS = 30
WEEK_COHORT_OFFSETS = 8
TOP_PRODUCTS = 10
RAW_LINE_LIMIT = 4096
UTC = datetime.timezone.utc

# The mart tables; each row is a tuple in the table's column order in migration 0002
# (deploy/postgres/migrations/0002_commerce_marts.sql), generated columns left out.
TABLES = ("daily_category_revenue", "daily_funnel_step", "daily_top_product", "cohort_retention", "customer_rfm",
          "session_summary", "daily_customer_type", "customer_daily_order", "rejected_line")
# Their columns in that order (commerce_test checks them against the migrated database).
COLUMNS = {
    "daily_category_revenue": ("event_date", "category", "order_count", "units_sold", "gross_revenue_amount_minor",
                               "gross_revenue_currency_code", "refunded_amount_minor", "refunded_currency_code",
                               "net_revenue_amount_minor", "net_revenue_currency_code"),
    "daily_funnel_step": ("event_date", "stage", "stage_number", "session_count", "visitor_count",
                          "conversion_rate_from_previous"),
    "daily_top_product": ("event_date", "rank", "product_id", "product_name", "category", "units_sold",
                          "revenue_amount_minor", "revenue_currency_code", "view_count"),
    "cohort_retention": ("cohort_period", "cohort_start_date", "period_offset", "cohort_size", "retained_count",
                         "retention_rate", "activity_period_start_date"),
    "customer_rfm": ("as_of_date", "user_id", "recency_days", "order_count", "monetary_amount_minor",
                     "monetary_currency_code", "recency_score", "frequency_score", "monetary_score", "segment"),
    "session_summary": ("session_id", "event_date", "user_id", "anonymous_id", "session_start_time",
                        "session_end_time", "event_count", "page_view_count", "product_view_count", "funnel_stage",
                        "converted", "order_total_amount_minor", "order_total_currency_code"),
    "daily_customer_type": ("event_date", "customer_type", "currency_code", "customer_count", "order_count",
                            "gross_revenue_amount_minor"),
    "customer_daily_order": ("order_date", "user_id", "currency_code", "order_count", "gross_amount_minor",
                             "refunded_amount_minor"),
    "rejected_line": ("event_date", "source_file", "line_number", "reason", "detail", "raw_line",
                      "raw_line_truncated"),
}
FLOAT_COLUMNS = {"daily_funnel_step": "conversion_rate_from_previous", "cohort_retention": "retention_rate"}
FLOAT_TOLERANCE = 1e-12  # absolute, on the two float columns only

STAGES = ("FUNNEL_STAGE_VISIT", "FUNNEL_STAGE_PRODUCT_VIEW", "FUNNEL_STAGE_CART", "FUNNEL_STAGE_CHECKOUT",
          "FUNNEL_STAGE_PURCHASE")
PAYMENT_STATUSES = ("PAYMENT_STATUS_AUTHORIZED", "PAYMENT_STATUS_CAPTURED", "PAYMENT_STATUS_FAILED")

# The contract's JSON shape: "s" a scalar (string, or an integer written as a number or a
# string), a dict a message, a one-element list a repeated message.
S = "s"
PRODUCT = {"productId": S, "productName": S, "category": S}
MONEY = {"currencyCode": S, "amountMinor": S}
LINE = {"product": PRODUCT, "quantity": S, "unitPrice": MONEY, "lineTotal": MONEY}
PAYLOADS = {  # JSON name -> (event type, fields)
    "pageView": ("page_view", {"pageUrl": S, "pagePath": S, "pageTitle": S, "referrerUrl": S}),
    "productView": ("product_view", {"product": PRODUCT, "price": MONEY}),
    "search": ("search", {"query": S, "resultCount": S, "categoryFilter": S}),
    "addToCart": ("add_to_cart", {"cartId": S, "product": PRODUCT, "quantity": S, "unitPrice": MONEY}),
    "removeFromCart": ("remove_from_cart", {"cartId": S, "product": PRODUCT, "quantity": S, "unitPrice": MONEY}),
    "checkoutStarted": ("checkout_started", {"checkoutId": S, "cartId": S, "itemCount": S, "cartTotal": MONEY}),
    "orderPlaced": ("order_placed", {"orderId": S, "checkoutId": S, "lines": [LINE], "subtotal": MONEY,
                                     "discount": MONEY, "shipping": MONEY, "tax": MONEY, "total": MONEY,
                                     "couponCode": S}),
    "payment": ("payment", {"paymentId": S, "orderId": S, "amount": MONEY, "method": S, "status": S,
                            "failureReason": S}),
    "refund": ("refund", {"refundId": S, "orderId": S, "paymentId": S, "amount": MONEY, "lines": [LINE],
                          "reason": S}),
}
EVENT = dict({"eventId": S, "eventTime": S, "userId": S, "sessionId": S, "anonymousId": S, "countryCode": S},
             **{name: fields for name, (_, fields) in PAYLOADS.items()})
STAGE_OF = {"product_view": 2, "add_to_cart": 3, "checkout_started": 4}  # order_placed: 5 when counted

RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
INTEGER = re.compile(r"[+-]?[0-9]+")
CURRENCY = re.compile(r"[A-Z]{3}")
SPACES = " "  # what counts as blank around a value: spaces only


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


# --- reading -------------------------------------------------------------------------------------

def file_lines(data: bytes, gzipped: bool) -> List[bytes]:
    """The lines of one part file (LF, CRLF or CR ends a line; a last line without one counts)."""
    if gzipped:
        data = gzip.decompress(data)
    return data.splitlines()


def read_partition(webhdfs, root: str, day: datetime.date, name_prefix: str) -> List[Tuple[str, bytes]]:
    """(source_file, bytes) of every part file of the published partition, read over WebHDFS;
    `name_prefix` + path is the source file name (the job's is the hdfs:// URI)."""
    folder = "%s/dt=%s" % (root.rstrip("/"), day.isoformat())
    return [(name_prefix + folder + "/" + entry["pathSuffix"], webhdfs.read(folder + "/" + entry["pathSuffix"]))
            for entry in sorted(webhdfs.list(folder), key=lambda e: e["pathSuffix"])
            if entry["pathSuffix"].startswith("part-") and entry["type"] == "FILE"]


# --- validation ----------------------------------------------------------------------------------

def _reject_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constants(name):
    raise ValueError("not JSON: %s" % name)


def _scalar_text(value) -> Optional[str]:
    """A scalar field as text: strings as they are, numbers and booleans as JSON writes them,
    objects and arrays as compact JSON (a string field accepts any JSON value)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _shape(value, spec):
    """`value` conformed to `spec` (scalars as text, unknown fields dropped); raises TypeError
    when a message field holds a non-object or a repeated field a non-array."""
    if value is None:
        return None
    if spec == S:
        return _scalar_text(value)
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise TypeError("not an array")
        return [_shape(item, spec[0]) for item in value]
    if not isinstance(value, dict):
        raise TypeError("not an object")
    return {name: _shape(value.get(name), sub) for name, sub in spec.items()}


def _blank(text: Optional[str]) -> bool:
    return text is None or text.strip(SPACES) == ""


def _integer(text: Optional[str], bits: int) -> Optional[int]:
    """The integer a scalar holds (surrounding whitespace allowed), or None when it holds none."""
    if text is None:
        return None
    text = text.strip(" \t\n\r\f\v")
    if not INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if -(1 << (bits - 1)) <= value < (1 << (bits - 1)) else None


def _amount(money: Optional[dict]) -> int:
    """A Money's minor units; absent (proto3 JSON omits zero) is 0."""
    if money is None:
        return 0
    value = _integer(money["amountMinor"], 64)
    return 0 if value is None else value


def parse_time(text: str) -> Optional[datetime.datetime]:
    """RFC 3339 (what the JSON mapping of Timestamp writes) -> aware UTC datetime, cut to
    microseconds; None when the text is no such time."""
    match = RFC3339.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        offset = datetime.timedelta(0) if zone == "Z" else (
            (1 if zone[0] == "+" else -1) * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        moment = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                                   int((fraction or "0").ljust(6, "0")[:6]), tzinfo=datetime.timezone(offset))
    except ValueError:
        return None
    return moment.astimezone(UTC)


def _first(paths: Iterable[Tuple[str, bool]]) -> Optional[str]:
    for path, failed in paths:
        if failed:
            return path
    return None


def _payload_verdict(e: dict) -> None:
    """The checks of the payload that is set, in README order; raises Rejected."""
    pv, prv, atc, rfc = e["pageView"], e["productView"], e["addToCart"], e["removeFromCart"]
    chk, order, pay, ref = e["checkoutStarted"], e["orderPlaced"], e["payment"], e["refund"]

    def get(message, *path):
        for name in path:
            if message is None:
                return None
            message = message[name]
        return message

    required = [
        ("pageView.pageUrl", pv, get(pv, "pageUrl") if get(pv, "pageUrl") is not None else get(pv, "pagePath")),
        ("productView.product.productId", prv, get(prv, "product", "productId")),
        ("addToCart.product.productId", atc, get(atc, "product", "productId")),
        ("removeFromCart.product.productId", rfc, get(rfc, "product", "productId")),
        ("checkoutStarted.checkoutId", chk, get(chk, "checkoutId")),
        ("orderPlaced.orderId", order, get(order, "orderId")),
        ("payment.paymentId", pay, get(pay, "paymentId")),
        ("payment.orderId", pay, get(pay, "orderId")),
        ("refund.refundId", ref, get(ref, "refundId")),
        ("refund.orderId", ref, get(ref, "orderId")),
    ]
    monies = [  # (path, payload, money, required)
        ("productView.price", prv, get(prv, "price"), True),
        ("addToCart.unitPrice", atc, get(atc, "unitPrice"), True),
        ("removeFromCart.unitPrice", rfc, get(rfc, "unitPrice"), True),
        ("checkoutStarted.cartTotal", chk, get(chk, "cartTotal"), False),
        ("orderPlaced.total", order, get(order, "total"), True),
        ("orderPlaced.subtotal", order, get(order, "subtotal"), False),
        ("orderPlaced.discount", order, get(order, "discount"), False),
        ("orderPlaced.shipping", order, get(order, "shipping"), False),
        ("orderPlaced.tax", order, get(order, "tax"), False),
        ("payment.amount", pay, get(pay, "amount"), True),
        ("refund.amount", ref, get(ref, "amount"), True),
    ]
    monies = [(path, money, needed) for path, payload, money, needed in monies if payload is not None]
    quantities = [(p, get(x, "quantity")) for p, x in (("addToCart.quantity", atc), ("removeFromCart.quantity", rfc))
                  if x is not None]
    integers = [(p, v) for p, x, v in (("search.resultCount", e["search"], get(e["search"], "resultCount")),
                                       ("checkoutStarted.itemCount", chk, get(chk, "itemCount"))) if x is not None]
    lines_path = "orderPlaced.lines" if order is not None else "refund.lines"
    lines = [line or {"product": None, "quantity": None, "unitPrice": None, "lineTotal": None}
             for line in (get(order, "lines") or get(ref, "lines") or [])]
    lines_currency = get(order, "total", "currencyCode")
    if lines_currency is None:
        lines_currency = get(ref, "amount", "currencyCode")

    def bad_amount(money):
        return money is not None and money["amountMinor"] is not None and _integer(money["amountMinor"], 64) is None

    def bad_currency(money):
        return money is not None and not (money["currencyCode"] is not None
                                          and CURRENCY.fullmatch(money["currencyCode"]))

    def int32(text):
        return _integer(text, 32)

    checks = [
        ("missing_field", lambda: _first((p, x is not None and _blank(v)) for p, x, v in required)),
        ("missing_field", lambda: _first((p, needed and m is None) for p, m, needed in monies)),
        ("missing_field", lambda: "orderPlaced.lines" if order is not None and not get(order, "lines") else None),
        ("missing_field", lambda: lines_path + ".product.productId"
         if any(_blank(get(l, "product", "productId")) for l in lines) else None),
        ("missing_field", lambda: lines_path + ".lineTotal" if any(l["lineTotal"] is None for l in lines) else None),
        ("type_mismatch", lambda: _first((p, v is not None and int32(v) is None) for p, v in quantities)),
        ("type_mismatch", lambda: _first((p, v is not None and int32(v) is None) for p, v in integers)),
        ("type_mismatch", lambda: _first((p + ".amountMinor", bad_amount(m)) for p, m, _ in monies)),
        ("type_mismatch", lambda: lines_path + ".quantity"
         if any(l["quantity"] is not None and int32(l["quantity"]) is None for l in lines) else None),
        ("type_mismatch", lambda: lines_path + ".amountMinor"
         if any(bad_amount(l["lineTotal"]) or bad_amount(l["unitPrice"]) for l in lines) else None),
        ("invalid_quantity", lambda: _first((p, (int32(v) or 0) < 1) for p, v in quantities)),
        ("invalid_quantity", lambda: lines_path + ".quantity"
         if any((int32(l["quantity"]) or 0) < 1 for l in lines) else None),
        ("negative_amount", lambda: _first((p, m is not None and _amount(m) < 0) for p, m, _ in monies)),
        ("negative_amount", lambda: lines_path
         if any(_amount(l["lineTotal"]) < 0 or _amount(l["unitPrice"]) < 0 for l in lines) else None),
        ("invalid_amount", lambda: "refund.amount must be positive"
         if ref is not None and _amount(get(ref, "amount")) <= 0 else None),
        ("invalid_currency", lambda: _first((p + ".currencyCode", bad_currency(m)) for p, m, _ in monies)),
        ("invalid_currency", lambda: lines_path + ".lineTotal.currencyCode"
         if any(bad_currency(l["lineTotal"]) for l in lines) else None),
        ("invalid_enum", lambda: "payment.status"
         if pay is not None and get(pay, "status") not in PAYMENT_STATUSES else None),
        ("mixed_currency", lambda: lines_path if any(
            lines_currency is not None and get(l, "lineTotal", "currencyCode") is not None
            and get(l, "lineTotal", "currencyCode") != lines_currency for l in lines) else None),
    ]
    for reason, check in checks:
        detail = check()
        if detail is not None:
            raise Rejected(reason, detail)


def parse_line(raw: bytes, day: datetime.date) -> dict:
    """One raw line -> the event (a dict) or raises Rejected(reason, detail); the order of the
    checks is the README's, the first failing one wins. Duplicate event ids are left to
    `validate_partition` (they need every line)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("not_utf8", "the line is not valid UTF-8") from None
    if text.strip(SPACES) == "":
        raise Rejected("empty_line", "")
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicate_keys, parse_constant=_no_constants)
    except ValueError:
        if text.lstrip(SPACES).startswith('{"') and not text.rstrip(SPACES).endswith("}"):
            raise Rejected("truncated_json", "not parseable as JSON") from None
        raise Rejected("malformed_json", "not parseable as JSON") from None
    try:
        if not isinstance(doc, dict):
            raise TypeError("not an object")
        e = _shape(doc, EVENT)
    except TypeError:
        raise Rejected("type_mismatch", "a field has the wrong JSON type, or the line is not an object") from None
    payloads = [name for name in PAYLOADS if e[name] is not None]
    if not payloads:
        unknown = [key for key in doc if key not in EVENT]
        if unknown:
            raise Rejected("unknown_event_type", "unknown fields: " + ",".join(unknown))
        raise Rejected("missing_payload", "no payload field is set")
    if len(payloads) > 1:
        raise Rejected("multiple_payloads", "more than one payload field is set")
    for name in ("eventId", "eventTime", "anonymousId"):
        if _blank(e[name]):
            raise Rejected("missing_field", name)
    moment = parse_time(e["eventTime"])
    if moment is None:
        raise Rejected("invalid_timestamp", "eventTime=" + e["eventTime"])
    if moment.date() != day:
        raise Rejected("outside_partition", "eventTime=%s is not in dt=%s" % (e["eventTime"], day.isoformat()))
    _payload_verdict(e)
    return _event(e, payloads[0], moment)


def _event(e: dict, payload: str, moment: datetime.datetime) -> dict:
    body = e[payload]
    product = body.get("product") if payload in ("productView", "addToCart", "removeFromCart") else None
    money = {"orderPlaced": "total", "refund": "amount", "payment": "amount", "productView": "price",
             "addToCart": "unitPrice", "removeFromCart": "unitPrice", "checkoutStarted": "cartTotal"}.get(payload)
    money = body.get(money) if money else None
    lines = None
    if payload in ("orderPlaced", "refund"):
        lines = [{"product_id": l["product"]["productId"], "product_name": l["product"]["productName"] or "",
                  "category": l["product"]["category"] or "", "quantity": _integer(l["quantity"], 32),
                  "line_total": _amount(l["lineTotal"]), "currency": l["lineTotal"]["currencyCode"]}
                 for l in body["lines"] or []]
    return {
        "event_id": e["eventId"],
        "event_time": moment,
        "user_id": e["userId"] or "",
        "anonymous_id": e["anonymousId"],
        "event_type": PAYLOADS[payload][0],
        "product_id": product["productId"] if product else None,
        "order_id": body.get("orderId") if payload in ("orderPlaced", "refund", "payment") else None,
        "refund_id": body.get("refundId") if payload == "refund" else None,
        "amount": _amount(money) if money is not None else None,
        "currency": money["currencyCode"] if money is not None else None,
        "lines": lines,
    }


def _raw_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def validate_partition(files: Sequence[Tuple[str, bytes]], day: datetime.date):
    """(events, rejected rows) of one partition: every line ends in exactly one of the two.
    Later valid lines repeating a valid line's event id (by file, then line) are duplicates."""
    events, rejected = [], []
    seen = set()
    for source_file, data in sorted(files):
        for number, raw in enumerate(file_lines(data, source_file.endswith(".gz")), start=1):
            try:
                event = parse_line(raw, day)
                if event["event_id"] in seen:
                    raise Rejected("duplicate_event_id", "eventId=" + event["event_id"])
            except Rejected as rejection:
                text = _raw_text(raw)
                rejected.append((day, source_file, number, rejection.reason, rejection.detail,
                                 text[:RAW_LINE_LIMIT], len(text) > RAW_LINE_LIMIT))
                continue
            seen.add(event["event_id"])
            events.append(event)
    return events, rejected


# --- the marts of one day --------------------------------------------------------------------------

def _earliest(events: Sequence[dict], event_type: str, key: str) -> List[dict]:
    """One event per `key` (order or refund id): the earliest by time, then event id."""
    first: Dict[str, dict] = {}
    for event in sorted((e for e in events if e["event_type"] == event_type),
                        key=lambda e: (e["event_time"], e["event_id"])):
        first.setdefault(event[key], event)
    return list(first.values())


def _top_category(category: str) -> str:
    top = category.split("/")[0].strip(SPACES)
    return top or "uncategorized"


def sessions(events: Sequence[dict], day: datetime.date) -> List[tuple]:
    """session_summary rows, plus the stage number last (dropped before comparing)."""
    counted = {e["event_id"] for e in _earliest(events, "order_placed", "order_id")}
    by_browser = collections.defaultdict(list)
    for event in events:
        by_browser[event["anonymous_id"]].append(event)
    out = []
    for anonymous_id, browser_events in by_browser.items():
        browser_events.sort(key=lambda e: (e["event_time"], e["event_id"]))
        groups: List[List[dict]] = []
        for event in browser_events:
            if groups and event["event_time"] - groups[-1][-1]["event_time"] <= SESSION_GAP:
                groups[-1].append(event)
            else:
                groups.append([event])
        for group in groups:
            users = [e["user_id"] for e in group if e["user_id"] != ""]
            stage = max(5 if e["event_id"] in counted else STAGE_OF.get(e["event_type"], 1) for e in group)
            orders = [e for e in group if e["event_id"] in counted]
            currency = min(e["currency"] for e in orders) if orders else None
            total = sum(e["amount"] for e in orders if e["currency"] == currency) if orders else None
            out.append((
                hashlib.sha256(("%s|%s" % (anonymous_id, group[0]["event_id"])).encode()).hexdigest()[:32],
                day, max(users) if users else "", anonymous_id, group[0]["event_time"], group[-1]["event_time"],
                len(group), sum(e["event_type"] == "page_view" for e in group),
                sum(e["event_type"] == "product_view" for e in group),
                STAGES[stage - 1], stage == 5, total, currency, stage))
    return out


def funnel(session_rows: Sequence[tuple], day: datetime.date) -> List[tuple]:
    out = []
    previous = None
    for number, stage in enumerate(STAGES, start=1):
        reached = [s for s in session_rows if s[-1] >= number]
        count = len(reached)
        visitors = len({s[2] if s[2] != "" else s[3] for s in reached})
        rate = 1.0 if previous is None else (0.0 if previous == 0 else count / previous)
        out.append((day, stage, number, count, visitors, rate))
        previous = count
    return out


def category_revenue(events: Sequence[dict], day: datetime.date) -> List[tuple]:
    cells = collections.defaultdict(lambda: {"orders": set(), "units": 0, "gross": 0, "refunded": 0})
    for order in _earliest(events, "order_placed", "order_id"):
        for line in order["lines"]:
            cell = cells[(_top_category(line["category"]), line["currency"])]
            cell["orders"].add(order["order_id"])
            cell["units"] += line["quantity"]
            cell["gross"] += line["line_total"]
    for refund in _earliest(events, "refund", "refund_id"):
        for line in refund["lines"]:
            cells[(_top_category(line["category"]), line["currency"])]["refunded"] += line["line_total"]
    return [(day, category, len(c["orders"]), c["units"], c["gross"], currency, c["refunded"], currency,
             c["gross"] - c["refunded"], currency) for (category, currency), c in cells.items()]


def top_products(events: Sequence[dict], day: datetime.date, limit: int = TOP_PRODUCTS) -> List[tuple]:
    sold = {}
    for order in _earliest(events, "order_placed", "order_id"):
        for line in order["lines"]:
            cell = sold.setdefault((line["product_id"], line["currency"]),
                                   {"units": 0, "revenue": 0, "latest": None, "name": "", "category": ""})
            cell["units"] += line["quantity"]
            cell["revenue"] += line["line_total"]
            stamp = (order["event_time"], order["event_id"])
            if cell["latest"] is None or stamp >= cell["latest"]:
                cell.update(latest=stamp, name=line["product_name"], category=line["category"])
    views = collections.Counter(e["product_id"] for e in events if e["event_type"] == "product_view")
    out = []
    for currency in sorted({c for _, c in sold}):
        ranked = sorted(((p, c) for p, c in sold if c == currency),
                        key=lambda k: (-sold[k]["revenue"], -sold[k]["units"], k[0]))
        for rank, key in enumerate(ranked[:limit], start=1):
            cell = sold[key]
            out.append((day, rank, key[0], cell["name"], cell["category"], cell["units"], cell["revenue"],
                        currency, views.get(key[0], 0)))
    return out


def customer_daily_orders(events: Sequence[dict], day: datetime.date) -> List[tuple]:
    cells = collections.defaultdict(lambda: [0, 0, 0])
    for order in _earliest(events, "order_placed", "order_id"):
        if order["user_id"] != "":
            cell = cells[(order["user_id"], order["currency"])]
            cell[0] += 1
            cell[1] += order["amount"]
    for refund in _earliest(events, "refund", "refund_id"):
        if refund["user_id"] != "":
            cells[(refund["user_id"], refund["currency"])][2] += refund["amount"]
    return [(day, user, currency, n, gross, refunded) for (user, currency), (n, gross, refunded) in cells.items()]


def customer_types(history: Sequence[tuple], today: Sequence[tuple], day: datetime.date) -> List[tuple]:
    """`history`: customer_daily_order rows of other days; today's are `today`."""
    rows = [r for r in history if r[0] < day] + list(today)
    first = {}
    for order_date, user, _, count, _, _ in rows:
        if count > 0:
            first[user] = min(first.get(user, order_date), order_date)
    cells = collections.defaultdict(lambda: [set(), 0, 0])
    for _, user, currency, count, gross, _ in today:
        if count > 0:
            cell = cells[("NEW" if first[user] == day else "RETURNING", currency)]
            cell[0].add(user)
            cell[1] += count
            cell[2] += gross
    return [(day, kind, currency, len(users), n, gross) for (kind, currency), (users, n, gross) in cells.items()]


def monday(day: datetime.date) -> datetime.date:
    return day - datetime.timedelta(days=day.weekday())


def cohort_retention(history: Sequence[tuple], today: Sequence[tuple], day: datetime.date) -> List[tuple]:
    """The DAY cells measuring `day` (orders up to `day`) and the ISO-WEEK cells measuring its
    week (every order loaded up to the week's Sunday, `history` included)."""
    week_start = monday(day)
    week_end = week_start + datetime.timedelta(days=6)
    out = []
    # DAY: first order day per customer (over orders up to `day`) and whether they ordered on `day`.
    orders = [r for r in history if r[0] < day and r[3] > 0] + [r for r in today if r[3] > 0]
    first, active = {}, set()
    for order_date, user, *_ in orders:
        first[user] = min(first.get(user, order_date), order_date)
        if order_date == day:
            active.add(user)
    cohorts = collections.defaultdict(lambda: [0, 0])
    for user, start in first.items():
        cohorts[start][0] += 1
        cohorts[start][1] += user in active
    for start, (size, retained) in cohorts.items():
        offset = (day - start).days
        if 0 <= offset <= DAY_COHORT_OFFSETS:
            out.append(("COHORT_PERIOD_DAY", start, offset, size, retained, retained / size, day))
    # WEEK
    orders = [r for r in history if r[0] <= week_end and r[0] != day and r[3] > 0] + [r for r in today if r[3] > 0]
    first, active = {}, set()
    for order_date, user, *_ in orders:
        first[user] = min(first.get(user, order_date), order_date)
        if order_date >= week_start:
            active.add(user)
    cohorts = collections.defaultdict(lambda: [0, 0])
    for user, start in first.items():
        cohorts[monday(start)][0] += 1
        cohorts[monday(start)][1] += user in active
    for start, (size, retained) in cohorts.items():
        offset = (week_start - start).days // 7
        if 0 <= offset <= WEEK_COHORT_OFFSETS:
            out.append(("COHORT_PERIOD_WEEK", start, offset, size, retained, retained / size, week_start))
    return out


def _scores(values: Dict[tuple, int], higher_is_better: bool) -> Dict[tuple, int]:
    """1..5 = ceil(5 x the share of customers whose value is no better than this one's)."""
    n = len(values)
    out = {}
    for key, value in values.items():
        not_better = sum(1 for v in values.values() if (v <= value if higher_is_better else v >= value))
        out[key] = math.ceil(not_better / n * 5)
    return out


def segment(r: int, f: int, m: int, orders: int) -> str:
    if r >= 4 and f >= 4 and m >= 4:
        return "RFM_SEGMENT_CHAMPION"
    if r >= 3 and f >= 4:
        return "RFM_SEGMENT_LOYAL"
    if r >= 4 and orders == 1:
        return "RFM_SEGMENT_NEW"
    if r >= 3 and f >= 2:
        return "RFM_SEGMENT_POTENTIAL_LOYALIST"
    if r <= 2 and f >= 3:
        return "RFM_SEGMENT_AT_RISK"
    if r == 1 and f <= 2 and m <= 2:
        return "RFM_SEGMENT_LOST"
    return "RFM_SEGMENT_HIBERNATING"


def customer_rfm(history: Sequence[tuple], today: Sequence[tuple], day: datetime.date) -> List[tuple]:
    rows = [r for r in history if r[0] < day] + list(today)
    customers = collections.defaultdict(lambda: {"last": None, "orders": 0, "monetary": 0})
    for order_date, user, currency, count, gross, refunded in rows:
        c = customers[(user, currency)]
        c["orders"] += count
        c["monetary"] += gross - refunded
        if count > 0 and (c["last"] is None or order_date > c["last"]):
            c["last"] = order_date
    customers = {k: c for k, c in customers.items() if c["orders"] > 0}
    out = []
    for currency in {k[1] for k in customers}:
        mine = {k: c for k, c in customers.items() if k[1] == currency}
        recency = {k: (day - c["last"]).days for k, c in mine.items()}
        r = _scores({k: -v for k, v in recency.items()}, higher_is_better=True)
        f = _scores({k: c["orders"] for k, c in mine.items()}, higher_is_better=True)
        m = _scores({k: c["monetary"] for k, c in mine.items()}, higher_is_better=True)
        for key, c in mine.items():
            out.append((day, key[0], recency[key], c["orders"], c["monetary"], currency, r[key], f[key], m[key],
                        segment(r[key], f[key], m[key], c["orders"])))
    return out


def day_marts(events: Sequence[dict], history: Sequence[tuple], day: datetime.date,
              top_limit: int = TOP_PRODUCTS) -> Dict[str, List[tuple]]:
    """Every mart's rows of one run of `day` (not rejected_line), from the day's valid events and
    the customer_daily_order rows of the other loaded days."""
    session_rows = sessions(events, day)
    today = customer_daily_orders(events, day)
    return {
        "session_summary": [s[:-1] for s in session_rows],
        "daily_funnel_step": funnel(session_rows, day),
        "daily_category_revenue": category_revenue(events, day),
        "daily_top_product": top_products(events, day, top_limit),
        "customer_daily_order": today,
        "daily_customer_type": customer_types(history, today, day),
        "cohort_retention": cohort_retention(history, today, day),
        "customer_rfm": customer_rfm(history, today, day),
    }


# --- what the runs leave in schema mart ------------------------------------------------------------

def belongs_to_run(table: str, row: tuple, day: datetime.date) -> bool:
    """Is `row` one of the rows a run of `day` replaces (migration 0002, per table)?"""
    if table == "cohort_retention":
        period, activity = row[0], row[6]
        return activity == (day if period == "COHORT_PERIOD_DAY" else monday(day))
    if table == "session_summary":
        return row[1] == day
    return row[0] == day


class MartState:
    """Schema mart as a sequence of job runs leaves it, recomputed from the raw files."""

    def __init__(self, top_limit: int = TOP_PRODUCTS):
        self.top_limit = top_limit
        self.tables: Dict[str, List[tuple]] = {table: [] for table in TABLES}
        self.last_run: Dict[datetime.date, dict] = {}

    def run_day(self, day: datetime.date, files: Sequence[Tuple[str, bytes]]) -> dict:
        """Replace `day` like one run of the job; returns the run's counts."""
        events, rejected = validate_partition(files, day)
        history = [r for r in self.tables["customer_daily_order"] if r[0] != day]
        marts = day_marts(events, history, day, self.top_limit)
        marts["rejected_line"] = rejected
        for table, rows in marts.items():
            kept = [r for r in self.tables[table] if not belongs_to_run(table, r, day)]
            self.tables[table] = kept + list(rows)
        reasons = collections.Counter(r[3] for r in rejected)
        self.last_run[day] = {"raw_lines": len(events) + len(rejected), "valid_events": len(events),
                              "rejected_lines": len(rejected), "rejected_by_reason": dict(reasons)}
        return self.last_run[day]

    def rows(self, table: str) -> List[tuple]:
        return sorted(self.tables[table], key=repr)


def differences(table: str, got: Sequence[tuple], want: Sequence[tuple],
                tolerance: float = FLOAT_TOLERANCE) -> List[str]:
    """What differs between two row sets of one table (rows in COLUMNS order): rows only in
    `got`, rows only in `want`, float cells further apart than `tolerance`, repeated rows. Every
    other column must be equal exactly."""
    float_at = COLUMNS[table].index(FLOAT_COLUMNS[table]) if table in FLOAT_COLUMNS else None

    def key(row):
        return tuple(v for i, v in enumerate(row) if i != float_at)

    got_by_key = {key(r): r for r in got}
    want_by_key = {key(r): r for r in want}
    problems = ["%s: repeated rows" % table] if len(got_by_key) != len(got) or len(want_by_key) != len(want) else []
    problems += ["only in the result: %r" % (got_by_key[k],) for k in sorted(set(got_by_key) - set(want_by_key), key=repr)]
    problems += ["only in the expected: %r" % (want_by_key[k],)
                 for k in sorted(set(want_by_key) - set(got_by_key), key=repr)]
    if float_at is not None:
        problems += ["%s differs: result %r, expected %r" % (table, got_by_key[k], want_by_key[k])
                     for k in sorted(set(got_by_key) & set(want_by_key), key=repr)
                     if not math.isclose(got_by_key[k][float_at], want_by_key[k][float_at],
                                         rel_tol=0, abs_tol=tolerance)]
    return problems
