"""The commerce marts computed by DuckDB: the baseline next to the Spark marts job.

`compute_marts(paths, day, history)` reads one day's raw part files (`part-*.jsonl.gz`, gzip
JSON lines as the shop simulator writes them, or plain `.jsonl`) and returns every table of
`tests/e2e/commerce_reference.TABLES`, rows in the reference's column order and Python types,
following the definitions of jobs/commerce/marts/README.md. All the work happens in DuckDB SQL:
reading and gunzipping (`read_csv` with no delimiter and no quoting, one VARCHAR per line),
line numbers, UTF-8 and strict-JSON validation, the contract checks with the job's reasons,
duplicates, sessions, revenue, funnel, top products, customers, cohorts and RFM. Python only
builds the statements and turns the result rows into tuples.

Where DuckDB cannot say what the reference says (the gaps are listed in tests/bench/README.md):
- `not_utf8` lines: DuckDB refuses to hold invalid UTF-8 in a VARCHAR and has no SQL gunzip, so
  such lines come from read_csv's rejects table (exact file and line number); their `raw_line`
  is DuckDB's rendering there (an invalid byte and the byte after it shown as `?`), not
  Python's `errors="replace"` decoding (one U+FFFD per invalid sequence).
- repeated keys are found in every object of the contract (event, payload, product, money,
  order line); a repeated key inside an object the contract does not know (the value of an
  unknown field, or an object given for a string field) is not seen: DuckDB's JSON parser keeps
  the first value and the line is valid, where the reference rejects it as `malformed_json`.

    python commerce_duckdb.py --day 2026-01-01 raw/commerce/events/dt=2026-01-01/part-*.jsonl.gz
"""

import argparse
import datetime
import json
import os
import pathlib
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import duckdb

TABLES = ("daily_category_revenue", "daily_funnel_step", "daily_top_product", "cohort_retention", "customer_rfm",
          "session_summary", "daily_customer_type", "customer_daily_order", "rejected_line")
TOP_PRODUCTS = 10
RAW_LINE_LIMIT = 4096
UTC = datetime.timezone.utc

# The contract in protobuf's JSON mapping: payload JSON name -> event type.
PAYLOADS = {"pageView": "page_view", "productView": "product_view", "search": "search",
            "addToCart": "add_to_cart", "removeFromCart": "remove_from_cart",
            "checkoutStarted": "checkout_started", "orderPlaced": "order_placed", "payment": "payment",
            "refund": "refund"}
EVENT_FIELDS = ("eventId", "eventTime", "userId", "sessionId", "anonymousId", "countryCode") + tuple(PAYLOADS)
# Money fields per payload, in the order the checks visit them: (field, required).
MONIES = {"productView": [("price", True)], "addToCart": [("unitPrice", True)],
          "removeFromCart": [("unitPrice", True)], "checkoutStarted": [("cartTotal", False)],
          "orderPlaced": [("total", True), ("subtotal", False), ("discount", False), ("shipping", False),
                          ("tax", False)],
          "payment": [("amount", True)], "refund": [("amount", True)]}
PRODUCT_OF = ("productView", "addToCart", "removeFromCart")
REQUIRED = {  # payload -> [(detail, JSON path of the text that must not be blank)]
    "productView": [("productView.product.productId", "productView.product.productId")],
    "addToCart": [("addToCart.product.productId", "addToCart.product.productId")],
    "removeFromCart": [("removeFromCart.product.productId", "removeFromCart.product.productId")],
    "checkoutStarted": [("checkoutStarted.checkoutId", "checkoutStarted.checkoutId")],
    "orderPlaced": [("orderPlaced.orderId", "orderPlaced.orderId")],
    "payment": [("payment.paymentId", "payment.paymentId"), ("payment.orderId", "payment.orderId")],
    "refund": [("refund.refundId", "refund.refundId"), ("refund.orderId", "refund.orderId")],
}
QUANTITIES = {"addToCart": "addToCart.quantity", "removeFromCart": "removeFromCart.quantity"}
INTEGERS = {"search": "search.resultCount", "checkoutStarted": "checkoutStarted.itemCount"}
MAIN_MONEY = {"orderPlaced": "total", "refund": "amount", "payment": "amount", "productView": "price",
              "addToCart": "unitPrice", "removeFromCart": "unitPrice", "checkoutStarted": "cartTotal"}
PAYMENT_STATUSES = ("PAYMENT_STATUS_AUTHORIZED", "PAYMENT_STATUS_CAPTURED", "PAYMENT_STATUS_FAILED")
STAGES = ("FUNNEL_STAGE_VISIT", "FUNNEL_STAGE_PRODUCT_VIEW", "FUNNEL_STAGE_CART", "FUNNEL_STAGE_CHECKOUT",
          "FUNNEL_STAGE_PURCHASE")

TOP_SCALARS = ("eventId", "eventTime", "userId", "anonymousId")
# Per payload: the scalars the checks and marts read (json_extract_string: strings as they are,
# other JSON values as JSON text), its message fields (their JSON type) and its order lines.
PAYLOAD_SCALARS = {
    "pageView": ["pageUrl", "pagePath"], "search": ["resultCount"],
    "checkoutStarted": ["checkoutId", "itemCount"], "orderPlaced": ["orderId"],
    "payment": ["paymentId", "orderId", "status"], "refund": ["refundId", "orderId"],
}
for _p in PRODUCT_OF:
    PAYLOAD_SCALARS.setdefault(_p, []).append("product.productId")
for _p in QUANTITIES:
    PAYLOAD_SCALARS[_p].append("quantity")
for _p, _monies in MONIES.items():
    PAYLOAD_SCALARS.setdefault(_p, []).extend(
        "%s.%s" % (m, f) for m, _ in _monies for f in ("currencyCode", "amountMinor"))
PAYLOAD_OBJECTS = {p: (["product"] if p in PRODUCT_OF else []) + [m for m, _ in MONIES.get(p, [])] for p in PAYLOADS}
WITH_LINES = ("orderPlaced", "refund")
TOP_SCHEMA = dict({k: "VARCHAR" for k in TOP_SCALARS}, **{p: "JSON" for p in PAYLOADS})
RFC3339 = (r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:[.]([0-9]{1,9}))?"
           r"(Z|[+-][0-9]{2}:[0-9]{2})$")
# The form the job's writers use (up to microseconds, offsets below a day): a plain cast.
FAST_RFC3339 = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:[.][0-9]{1,6})?"
                r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
INTEGER_SPACES = "' ' || chr(9) || chr(10) || chr(13) || chr(12) || chr(11)"


def json_dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def ty(path: str) -> str:
    """The JSON type of a message field of the set payload (`payload.field`)."""
    payload, field = path.split(".", 1)
    return "ty_%s[%d]" % (payload, PAYLOAD_OBJECTS[payload].index(field) + 1)


def sc(path: str) -> str:
    """A scalar of the event (`eventId`) or of the set payload (`payload.field.sub`), as text."""
    if path in TOP_SCALARS:
        return "t.%s" % path
    payload, field = path.split(".", 1)
    return "sc_%s[%d]" % (payload, PAYLOAD_SCALARS[payload].index(field) + 1)


MACROS = [
    "CREATE TEMP MACRO blank(x) AS x IS NULL OR trim(x, ' ') = ''",
    "CREATE TEMP MACRO int_of(x) AS CASE WHEN regexp_full_match(trim(x, %s), '[+-]?[0-9]+') "
    "THEN try_cast(trim(x, %s) AS BIGINT) END" % (INTEGER_SPACES, INTEGER_SPACES),
    "CREATE TEMP MACRO i32(x) AS CASE WHEN int_of(x) BETWEEN -2147483648 AND 2147483647 THEN int_of(x) END",
    # A money's minor units: absent money or amount is 0 (proto3 JSON omits zero).
    "CREATE TEMP MACRO amount(present, a) AS CASE WHEN present THEN coalesce(int_of(a), 0) ELSE 0 END",
    "CREATE TEMP MACRO bad_amount(present, a) AS present AND a IS NOT NULL AND int_of(a) IS NULL",
    # RFC 3339 parts (a regexp_extract struct) -> naive UTC timestamp, NULL when no such time.
    """CREATE TEMP MACRO rfc3339(tm) AS CASE
        WHEN tm.y <> '' AND try_cast(tm.h AS INT) < 24 AND try_cast(tm.mi AS INT) < 60
            AND try_cast(tm.s AS INT) < 60 AND try_cast(tm.y AS INT) >= 1
            AND coalesce(try_cast(substr(tm.z, 2, 2) AS INT) * 60 + try_cast(substr(tm.z, 5, 2) AS INT), 0) < 1440
        THEN try(make_timestamp(try_cast(tm.y AS BIGINT), try_cast(tm.mo AS BIGINT), try_cast(tm.d AS BIGINT),
                                try_cast(tm.h AS BIGINT), try_cast(tm.mi AS BIGINT), try_cast(tm.s AS DOUBLE))
                 + to_microseconds(try_cast(left(rpad(coalesce(tm.fr, ''), 6, '0'), 6) AS BIGINT))
                 - to_minutes(coalesce((CASE WHEN left(tm.z, 1) = '-' THEN -1 ELSE 1 END)
                       * (try_cast(substr(tm.z, 2, 2) AS BIGINT) * 60 + try_cast(substr(tm.z, 5, 2) AS BIGINT)), 0)))
        END""",
    "CREATE TEMP MACRO top_category(c) AS coalesce(nullif(trim(split_part(c, '/', 1), ' '), ''), 'uncategorized')",
]


def _payload_checks(p: str) -> List[tuple]:
    """(condition, reason, detail SQL) of payload `p`'s checks in the README's order: the first
    condition that holds names the line's reason. `ln` is the list of its order lines."""
    checks = []
    lp = _q("%s.lines" % p)

    def any_line(condition):
        return "list_bool_or(list_transform(ln, lambda l: %s))" % condition

    if p == "pageView":
        checks.append(("blank(coalesce(%s, %s))" % (sc("pageView.pageUrl"), sc("pageView.pagePath")),
                       "missing_field", "'pageView.pageUrl'"))
    for detail, path in REQUIRED.get(p, []):
        checks.append(("blank(%s)" % sc(path), "missing_field", _q(detail)))
    monies = ["%s.%s" % (p, m) for m, _ in MONIES.get(p, [])]
    for (m, needed), path in zip(MONIES.get(p, []), monies):
        if needed:
            checks.append(("%s IS DISTINCT FROM 'OBJECT'" % ty(path), "missing_field", _q(path)))
    if p == "orderPlaced":
        checks.append(("len(ln) = 0", "missing_field", "'orderPlaced.lines'"))
    if p in WITH_LINES:
        checks.append((any_line("blank(l.pid)"), "missing_field", _q("%s.lines.product.productId" % p)))
        checks.append((any_line("NOT l.lt"), "missing_field", _q("%s.lines.lineTotal" % p)))
    for path in [QUANTITIES.get(p), INTEGERS.get(p)]:
        if path:
            checks.append(("%s IS NOT NULL AND i32(%s) IS NULL" % (sc(path), sc(path)), "type_mismatch", _q(path)))
    for path in monies:
        checks.append(("bad_amount(%s = 'OBJECT', %s)" % (ty(path), sc(path + ".amountMinor")), "type_mismatch",
                       _q(path + ".amountMinor")))
    if p in WITH_LINES:
        checks.append((any_line("l.q IS NOT NULL AND i32(l.q) IS NULL"), "type_mismatch",
                       _q("%s.lines.quantity" % p)))
        checks.append((any_line("bad_amount(l.lt, l.la) OR bad_amount(l.up, l.ua)"), "type_mismatch",
                       _q("%s.lines.amountMinor" % p)))
    if p in QUANTITIES:
        checks.append(("coalesce(i32(%s), 0) < 1" % sc(QUANTITIES[p]), "invalid_quantity", _q(QUANTITIES[p])))
    if p in WITH_LINES:
        checks.append((any_line("coalesce(i32(l.q), 0) < 1"), "invalid_quantity", _q("%s.lines.quantity" % p)))
    for path in monies:
        checks.append(("amount(%s = 'OBJECT', %s) < 0" % (ty(path), sc(path + ".amountMinor")), "negative_amount",
                       _q(path)))
    if p in WITH_LINES:
        checks.append((any_line("amount(l.lt, l.la) < 0 OR amount(l.up, l.ua) < 0"), "negative_amount", lp))
    if p == "refund":
        checks.append(("amount(%s = 'OBJECT', %s) <= 0" % (ty("refund.amount"), sc("refund.amount.amountMinor")),
                       "invalid_amount", "'refund.amount must be positive'"))
    for path in monies:
        checks.append(("%s = 'OBJECT' AND NOT regexp_full_match(coalesce(%s, ''), '[A-Z]{3}')" % (
            ty(path), sc(path + ".currencyCode")), "invalid_currency", _q(path + ".currencyCode")))
    if p in WITH_LINES:
        checks.append((any_line("l.lt AND NOT regexp_full_match(coalesce(l.lc, ''), '[A-Z]{3}')"),
                       "invalid_currency", _q("%s.lines.lineTotal.currencyCode" % p)))
    if p == "payment":
        statuses = ", ".join(_q(x) for x in PAYMENT_STATUSES)
        checks.append(("coalesce(%s, '') NOT IN (%s)" % (sc("payment.status"), statuses),
                       "invalid_enum", "'payment.status'"))
    if p in WITH_LINES:
        checks.append((any_line("l.lc <> lines_currency"), "mixed_currency", lp))
    return checks


def _payload_verdict() -> str:
    """SQL: the first failing check of the set payload (`pn`) as {r: reason, d: detail}, or NULL."""
    arms = []
    for p in PAYLOADS:
        checks = _payload_checks(p)
        if checks:
            arms.append("WHEN %s THEN CASE %s END" % (_q(p), " ".join(
                "WHEN %s THEN {'r': %s, 'd': %s}" % (cond, _q(reason), detail) for cond, reason, detail in checks)))
    return "CASE pn %s END" % " ".join(arms)


def _shape_checks(p: str) -> str:
    """SQL: the set payload `t.<p>` (JSON text) has a wrong JSON type somewhere in the contract."""
    col = "t.%s" % p
    checks = ["left(%s, 1) <> '{'" % col]
    if PAYLOAD_OBJECTS[p]:
        checks.append("NOT list_has_all(['OBJECT', 'NULL'], json_type(%s, %s))"
                      % (col, _list(["$." + f for f in PAYLOAD_OBJECTS[p]])))
    if p in WITH_LINES:
        checks.append("coalesce(json_type(%s, '$.lines'), 'NULL') NOT IN ('ARRAY', 'NULL')" % col)
        checks.append("(json_type(%s, '$.lines') = 'ARRAY' AND NOT list_has_all(['OBJECT', 'NULL'], "
                      "json_type(%s, '$.lines[*]') || json_type(%s, '$.lines[*].product') || "
                      "json_type(%s, '$.lines[*].unitPrice') || json_type(%s, '$.lines[*].lineTotal')))"
                      % (col, col, col, col, col))
    return "CASE WHEN %s IS NOT NULL THEN %s END" % (col, " OR ".join(checks))


def _payload_keys(p: str) -> str:
    """SQL: the keys of every object of payload `t.<p>` (the payload, its product and monies)."""
    paths = ["$"] + ["$." + f for f in PAYLOAD_OBJECTS[p]]
    return "CASE WHEN left(t.%s, 1) = '{' THEN json_keys(t.%s, %s) END AS pk_%s" % (p, p, _list(paths), p)


def _repeated_keys(p: str) -> str:
    """SQL: an object of payload `t.<p>` repeats a key (DuckDB's parser would keep the first)."""
    col = "t.%s" % p
    expr = " OR ".join("len(pk_%s[%d]) <> list_unique(pk_%s[%d])" % (p, i, p, i)
                       for i in range(1, len(PAYLOAD_OBJECTS[p]) + 2))
    if p in WITH_LINES:
        expr += (" OR (json_type(%s, '$.lines') = 'ARRAY' AND list_bool_or(list_transform("
                 "json_keys(%s, '$.lines[*]') || json_keys(%s, '$.lines[*].product') || "
                 "json_keys(%s, '$.lines[*].unitPrice') || json_keys(%s, '$.lines[*].lineTotal'), "
                 "lambda k: len(k) <> list_unique(k))))" % (col, col, col, col, col))
    return "CASE WHEN pk_%s IS NOT NULL THEN %s END" % (p, expr)


def _validation_sql(day: datetime.date) -> str:
    """`checked`: every valid-UTF-8 line with its verdict (NULL = valid) and the event's fields."""
    payload_verdict = _payload_verdict()
    npay = " + ".join("(t.%s IS NOT NULL)::INT" % p for p in PAYLOADS)
    pn = " ".join("WHEN t.%s IS NOT NULL THEN %s" % (p, _q(p)) for p in PAYLOADS)
    shape_bad = " OR ".join("coalesce(%s, false)" % _shape_checks(p) for p in PAYLOADS)
    repeated = " OR ".join("coalesce(%s, false)" % _repeated_keys(p) for p in PAYLOADS)
    payload_keys = ",\n".join("        " + _payload_keys(p) for p in PAYLOADS)
    payload_key_columns = ", ".join("pk_" + p for p in PAYLOADS)
    per_payload = ",\n".join(
        "        CASE WHEN pn = %s THEN json_extract_string(t.%s, %s) END AS sc_%s" % (
            _q(p), p, _list(["$." + f for f in PAYLOAD_SCALARS[p]]), p) for p in PAYLOAD_SCALARS) + ",\n" + ",\n".join(
        "        CASE WHEN pn = %s THEN json_type(t.%s, %s) END AS ty_%s" % (
            _q(p), p, _list(["$." + f for f in PAYLOAD_OBJECTS[p]]), p) for p in PAYLOADS if PAYLOAD_OBJECTS[p])
    lines = " ".join("WHEN %s THEN t.%s" % (_q(p), p) for p in WITH_LINES)
    unknown = "list_filter(top_keys, lambda k: NOT list_contains(%s, k))" % _list(EVENT_FIELDS)
    product = " ".join("WHEN %s THEN %s" % (_q(p), sc(p + ".product.productId")) for p in PRODUCT_OF)
    money = " ".join("WHEN %s THEN %s = 'OBJECT'" % (_q(p), ty("%s.%s" % (p, m))) for p, m in MAIN_MONEY.items())
    amount = " ".join("WHEN %s THEN %s" % (_q(p), sc("%s.%s.amountMinor" % (p, m))) for p, m in MAIN_MONEY.items())
    currency = " ".join("WHEN %s THEN %s" % (_q(p), sc("%s.%s.currencyCode" % (p, m))) for p, m in MAIN_MONEY.items())
    event_type = " ".join("WHEN %s THEN %s" % (_q(p), _q(t)) for p, t in PAYLOADS.items())
    return f"""
CREATE TEMP TABLE checked AS
WITH parsed AS (
    SELECT f.file_no, r.rowid - f.first_row + 1 AS k, coalesce(r.line, '') AS text,
        coalesce(trim(r.line, ' '), '') = '' AS is_empty, json_valid(r.line) AS valid
    FROM raw r JOIN files f USING (path)
), strict AS (
    SELECT *,
        -- DuckDB's JSON parser also takes trailing commas, NaN and Infinity; strict JSON does not:
        -- outside strings, only true, false, null and exponents have letters.
        CASE WHEN NOT valid THEN true
             WHEN regexp_matches(text, ',[ \\t\\r\\n]*[\\]}}]') OR contains(lower(text), 'nan')
                  OR contains(lower(text), 'inf')
             THEN regexp_matches(regexp_replace(regexp_replace(text, '"(?:[^"\\\\]|\\\\.)*"', '', 'g'),
                                                'true|false|null', '', 'g'),
                                 ',[ \\t\\r\\n]*[\\]}}]|[a-df-zA-DF-Z]')
             ELSE false END AS not_json,
        CASE WHEN NOT valid OR right(text, 1) <> '}}'
             THEN starts_with(ltrim(text, ' '), '{{"') AND NOT ends_with(rtrim(text, ' '), '}}') ELSE false END
            AS looks_truncated
    FROM parsed
), top AS (
    SELECT file_no, k, is_empty, not_json, looks_truncated,
        NOT not_json AND left(ltrim(text, ' ' || chr(9) || chr(10) || chr(13)), 1) = '{{' AS is_object,
        CASE WHEN is_object THEN json_transform(text, {_q(json_dumps(TOP_SCHEMA))}) END AS t,
        CASE WHEN is_object THEN json_keys(text) END AS top_keys
    FROM strict
), shaped AS (
    SELECT *, {npay} AS npay, CASE {pn} END AS pn,
        is_object AND NOT ({shape_bad}) AS shape_ok,
{payload_keys}
    FROM top
), scalars AS (
    SELECT * EXCLUDE ({payload_key_columns}),
        len(top_keys) <> list_unique(top_keys) OR {repeated} AS repeated_key,
{per_payload},
        regexp_full_match(coalesce(t.eventTime, ''), '{FAST_RFC3339}') AND substr(t.eventTime, 12, 2) < '24'
            AND substr(t.eventTime, 15, 2) < '60' AND substr(t.eventTime, 18, 2) < '60'
            AND NOT starts_with(t.eventTime, '0000') AS fast_time
    FROM shaped
), parts AS (
    -- Other RFC 3339 forms (more fraction digits, odd offsets, invalid values) part by part.
    SELECT *, CASE WHEN NOT fast_time THEN regexp_extract(coalesce(t.eventTime, ''), '{RFC3339}',
        ['y', 'mo', 'd', 'h', 'mi', 's', 'fr', 'z']) END AS time_parts
    FROM scalars
), events AS (
    SELECT *,
        CASE WHEN fast_time THEN try_cast(t.eventTime AS TIMESTAMPTZ)::TIMESTAMP ELSE rfc3339(time_parts)
        END AS event_time,
        CASE WHEN pn IN ('orderPlaced', 'refund') THEN list_transform(
            CASE WHEN json_type(CASE pn {lines} END, '$.lines') = 'ARRAY'
                 THEN json_extract(CASE pn {lines} END, '$.lines[*]') ELSE [] END,
            lambda x: {{'pid': json_extract_string(x, '$.product.productId'),
                  'name': json_extract_string(x, '$.product.productName'),
                  'cat': json_extract_string(x, '$.product.category'),
                  'q': json_extract_string(x, '$.quantity'),
                  'up': json_type(x, '$.unitPrice') = 'OBJECT', 'ua': json_extract_string(x, '$.unitPrice.amountMinor'),
                  'lt': json_type(x, '$.lineTotal') = 'OBJECT',
                  'lc': json_extract_string(x, '$.lineTotal.currencyCode'),
                  'la': json_extract_string(x, '$.lineTotal.amountMinor')}}) END AS ln,
        CASE pn WHEN 'orderPlaced' THEN {sc('orderPlaced.total.currencyCode')}
                WHEN 'refund' THEN {sc('refund.amount.currencyCode')} END AS lines_currency
    FROM parts
), judged AS (
    SELECT *,
        CASE
            WHEN is_empty THEN {{'r': 'empty_line', 'd': ''}}
            WHEN not_json OR repeated_key THEN CASE
                WHEN looks_truncated THEN {{'r': 'truncated_json', 'd': 'not parseable as JSON'}}
                ELSE {{'r': 'malformed_json', 'd': 'not parseable as JSON'}} END
            WHEN NOT shape_ok THEN {{'r': 'type_mismatch',
                'd': 'a field has the wrong JSON type, or the line is not an object'}}
            WHEN npay = 0 THEN CASE WHEN len({unknown}) > 0
                THEN {{'r': 'unknown_event_type', 'd': 'unknown fields: ' || array_to_string({unknown}, ',')}}
                ELSE {{'r': 'missing_payload', 'd': 'no payload field is set'}} END
            WHEN npay > 1 THEN {{'r': 'multiple_payloads', 'd': 'more than one payload field is set'}}
            WHEN blank(t.eventId) THEN {{'r': 'missing_field', 'd': 'eventId'}}
            WHEN blank(t.eventTime) THEN {{'r': 'missing_field', 'd': 'eventTime'}}
            WHEN blank(t.anonymousId) THEN {{'r': 'missing_field', 'd': 'anonymousId'}}
            WHEN event_time IS NULL THEN {{'r': 'invalid_timestamp', 'd': 'eventTime=' || t.eventTime}}
            WHEN event_time::DATE <> DATE '{day.isoformat()}' THEN {{'r': 'outside_partition',
                'd': 'eventTime=' || t.eventTime || ' is not in dt={day.isoformat()}'}}
            ELSE {payload_verdict}
        END AS verdict
    FROM events
)
SELECT file_no, k, verdict, t.eventId AS event_id, event_time, coalesce(t.userId, '') AS user_id,
    t.anonymousId AS anonymous_id, CASE pn {event_type} END AS event_type,
    CASE pn {product} END AS product_id,
    CASE pn WHEN 'orderPlaced' THEN {sc('orderPlaced.orderId')} WHEN 'refund' THEN {sc('refund.orderId')}
            WHEN 'payment' THEN {sc('payment.orderId')} END AS order_id,
    CASE pn WHEN 'refund' THEN {sc('refund.refundId')} END AS refund_id,
    CASE WHEN CASE pn {money} ELSE false END THEN amount(true, CASE pn {amount} END) END AS amount,
    CASE WHEN CASE pn {money} ELSE false END THEN CASE pn {currency} END END AS currency,
    CASE WHEN ln IS NOT NULL THEN list_transform(ln, lambda l: {{
        'product_id': l.pid, 'product_name': coalesce(l.name, ''),
        'category': coalesce(l.cat, ''), 'quantity': i32(l.q), 'line_total': amount(l.lt, l.la),
        'currency': l.lc}}) END AS lines
FROM judged
"""


def _event_sql() -> str:
    """`events`: the valid, first-seen events of the day; `rejected`: every other line."""
    return """
CREATE TEMP TABLE repeated AS
SELECT file_no, k, event_id FROM checked WHERE verdict IS NULL
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY file_no, k) > 1;
CREATE TEMP TABLE events AS
SELECT c.* EXCLUDE (file_no, k, verdict) FROM checked c
ANTI JOIN repeated r USING (file_no, k) WHERE c.verdict IS NULL;
CREATE TEMP TABLE rejected AS
WITH bad AS (
    SELECT file_no, k, verdict.r AS reason, verdict.d AS detail FROM checked WHERE verdict IS NOT NULL
    UNION ALL
    SELECT file_no, k, 'duplicate_event_id', 'eventId=' || event_id FROM repeated
), numbered AS (
    SELECT bad.*, bad.k + coalesce(g.j, 0) AS line_number FROM bad ASOF LEFT JOIN gaps g
    ON bad.file_no = g.file_no AND bad.k > g.gap
)
SELECT f.source_file, b.line_number, b.reason, b.detail, coalesce(r.line, '') AS raw
FROM numbered b JOIN files f USING (file_no) JOIN raw r ON r.rowid = f.first_row + b.k - 1
UNION ALL
SELECT f.source_file, line_number, 'not_utf8', 'the line is not valid UTF-8', raw
FROM not_utf8 JOIN files f USING (file_no)
"""


MARTS_SQL = """
CREATE TEMP TABLE orders AS  -- one event per order id: the earliest by time, then event id
SELECT * FROM events WHERE event_type = 'order_placed'
QUALIFY row_number() OVER (PARTITION BY order_id ORDER BY event_time, event_id) = 1;
CREATE TEMP TABLE refunds AS
SELECT * FROM events WHERE event_type = 'refund'
QUALIFY row_number() OVER (PARTITION BY refund_id ORDER BY event_time, event_id) = 1;
CREATE TEMP TABLE order_lines AS
SELECT order_id, event_id, event_time, unnest(lines) AS l, generate_subscripts(lines, 1) AS i FROM orders;
CREATE TEMP TABLE session_events AS
WITH staged AS (
    SELECT e.*, CASE WHEN o.event_id IS NOT NULL THEN 5
                     WHEN e.event_type = 'product_view' THEN 2 WHEN e.event_type = 'add_to_cart' THEN 3
                     WHEN e.event_type = 'checkout_started' THEN 4 ELSE 1 END AS stage,
        o.event_id IS NOT NULL AS counted,
        CASE WHEN e.event_time - lag(e.event_time) OVER w <= INTERVAL 30 MINUTE THEN 0 ELSE 1 END AS starts
    FROM events e LEFT JOIN orders o ON o.event_id = e.event_id
    WINDOW w AS (PARTITION BY e.anonymous_id ORDER BY e.event_time, e.event_id)
)
SELECT *, sum(starts) OVER (PARTITION BY anonymous_id ORDER BY event_time, event_id
                            ROWS UNBOUNDED PRECEDING) AS session_no
FROM staged;
CREATE TEMP TABLE sessions AS
WITH s AS (
    SELECT anonymous_id, session_no,
        first(event_id ORDER BY event_time, event_id) AS first_event_id,
        coalesce(max(user_id) FILTER (WHERE user_id <> ''), '') AS user_id,
        min(event_time) AS started, max(event_time) AS ended, count(*) AS events,
        count(*) FILTER (WHERE event_type = 'page_view') AS page_views,
        count(*) FILTER (WHERE event_type = 'product_view') AS product_views,
        max(stage) AS stage, min(currency) FILTER (WHERE counted) AS order_currency,
        list({'c': currency, 'a': amount}) FILTER (WHERE counted) AS order_amounts
    FROM session_events GROUP BY anonymous_id, session_no
)
SELECT left(sha256(anonymous_id || '|' || first_event_id), 32) AS session_id, $day AS event_date, user_id,
    anonymous_id, started, ended, events, page_views, product_views,
    [%(stages)s][stage] AS funnel_stage, stage = 5 AS converted,
    CASE WHEN order_currency IS NOT NULL THEN list_sum(list_transform(
        list_filter(order_amounts, lambda o: o.c = order_currency), lambda o: o.a))::BIGINT END AS order_total,
    order_currency, stage
FROM s;
"""

QUERIES = {
    "session_summary": """
SELECT session_id, event_date, user_id, anonymous_id, started, ended, events, page_views, product_views,
    funnel_stage, converted, order_total, order_currency FROM sessions""",
    "daily_funnel_step": """
WITH steps AS (
    SELECT n, [%(stages)s][n] AS stage,
        (SELECT count(*) FROM sessions WHERE stage >= n) AS sessions,
        (SELECT count(DISTINCT CASE WHEN user_id <> '' THEN user_id ELSE anonymous_id END)
         FROM sessions WHERE stage >= n) AS visitors
    FROM range(1, 6) t(n)
)
SELECT $day, stage, n::INT, sessions, visitors,
    CASE WHEN n = 1 THEN 1.0::DOUBLE WHEN lag(sessions) OVER (ORDER BY n) = 0 THEN 0.0::DOUBLE
         ELSE (sessions / lag(sessions) OVER (ORDER BY n))::DOUBLE END
FROM steps ORDER BY n""",
    "daily_category_revenue": """
WITH sold AS (
    SELECT top_category(l.category) AS category, l.currency, count(DISTINCT o.order_id) AS orders,
        sum(l.quantity) AS units, sum(l.line_total) AS gross
    FROM order_lines o GROUP BY ALL
), back AS (
    SELECT top_category(l.category) AS category, l.currency, sum(l.line_total) AS refunded
    FROM (SELECT unnest(lines) AS l FROM refunds) GROUP BY ALL
)
SELECT $day, category, coalesce(orders, 0), coalesce(units, 0), coalesce(gross, 0), currency,
    coalesce(refunded, 0), currency, coalesce(gross, 0) - coalesce(refunded, 0), currency
FROM sold FULL OUTER JOIN back USING (category, currency)""",
    "daily_top_product": """
WITH sold AS (
    SELECT l.product_id, l.currency, sum(l.quantity) AS units, sum(l.line_total) AS revenue,
        first(l.product_name ORDER BY o.event_time DESC, o.event_id DESC, i DESC) AS name,
        first(l.category ORDER BY o.event_time DESC, o.event_id DESC, i DESC) AS category
    FROM order_lines o GROUP BY ALL
), views AS (
    SELECT product_id, count(*) AS views FROM events WHERE event_type = 'product_view' GROUP BY ALL
)
SELECT $day, rank, product_id, name, category, units, revenue, currency, coalesce(views, 0)
FROM (SELECT *, row_number() OVER (PARTITION BY currency ORDER BY revenue DESC, units DESC, product_id) AS rank
      FROM sold) LEFT JOIN views USING (product_id)
WHERE rank <= $top""",
    "customer_daily_order": "SELECT * FROM today",
    "daily_customer_type": """
WITH first_order AS (
    SELECT user_id, min(order_date) AS first_day FROM all_days WHERE orders > 0 GROUP BY ALL
)
SELECT $day, CASE WHEN f.first_day = $day THEN 'NEW' ELSE 'RETURNING' END AS kind, t.currency_code,
    count(DISTINCT t.user_id), sum(t.orders), sum(t.gross)
FROM today t JOIN first_order f USING (user_id) WHERE t.orders > 0 GROUP BY ALL""",
    "cohort_retention": """
WITH day_orders AS (
    SELECT order_date, user_id FROM all_days WHERE orders > 0
), day_members AS (
    SELECT user_id, min(order_date) AS start, bool_or(order_date = $day) AS active FROM day_orders GROUP BY ALL
), week_orders AS (
    SELECT order_date, user_id FROM history
    WHERE order_date <= $week_start + 6 AND order_date <> $day AND orders > 0
    UNION ALL SELECT order_date, user_id FROM today WHERE orders > 0
), week_members AS (
    SELECT user_id, date_trunc('week', min(order_date))::DATE AS start, bool_or(order_date >= $week_start) AS active
    FROM week_orders GROUP BY ALL
)
SELECT 'COHORT_PERIOD_DAY', start, ($day - start)::INT AS period_offset, count(*), count(*) FILTER (WHERE active),
    count(*) FILTER (WHERE active) / count(*), $day
FROM day_members GROUP BY start HAVING ($day - start) BETWEEN 0 AND 30
UNION ALL
SELECT 'COHORT_PERIOD_WEEK', start, (($week_start - start) // 7)::INT, count(*), count(*) FILTER (WHERE active),
    count(*) FILTER (WHERE active) / count(*), $week_start
FROM week_members GROUP BY start HAVING ($week_start - start) // 7 BETWEEN 0 AND 8""",
    "customer_rfm": """
WITH customers AS (
    SELECT user_id, currency_code, sum(orders) AS orders, sum(gross - refunded) AS monetary,
        ($day - max(order_date) FILTER (WHERE orders > 0))::INT AS recency
    FROM all_days GROUP BY ALL HAVING sum(orders) > 0
), scored AS (
    SELECT *,
        ceil(cume_dist() OVER (PARTITION BY currency_code ORDER BY recency DESC) * 5)::INT AS r,
        ceil(cume_dist() OVER (PARTITION BY currency_code ORDER BY orders) * 5)::INT AS f,
        ceil(cume_dist() OVER (PARTITION BY currency_code ORDER BY monetary) * 5)::INT AS m
    FROM customers
)
SELECT $day, user_id, recency, orders, monetary, currency_code, r, f, m,
    CASE WHEN r >= 4 AND f >= 4 AND m >= 4 THEN 'RFM_SEGMENT_CHAMPION'
         WHEN r >= 3 AND f >= 4 THEN 'RFM_SEGMENT_LOYAL'
         WHEN r >= 4 AND orders = 1 THEN 'RFM_SEGMENT_NEW'
         WHEN r >= 3 AND f >= 2 THEN 'RFM_SEGMENT_POTENTIAL_LOYALIST'
         WHEN r <= 2 AND f >= 3 THEN 'RFM_SEGMENT_AT_RISK'
         WHEN r = 1 AND f <= 2 AND m <= 2 THEN 'RFM_SEGMENT_LOST'
         ELSE 'RFM_SEGMENT_HIBERNATING' END
FROM scored""",
    "rejected_line": """
SELECT $day, source_file, line_number, reason, detail, substring(raw, 1, %(limit)d), length(raw) > %(limit)d
FROM rejected""",
}

CUSTOMERS_SQL = """
CREATE TEMP TABLE today AS
WITH placed AS (
    SELECT user_id, currency AS currency_code, count(*) AS orders, sum(amount) AS gross
    FROM orders WHERE user_id <> '' GROUP BY ALL
), back AS (
    SELECT user_id, currency AS currency_code, sum(amount) AS refunded FROM refunds WHERE user_id <> '' GROUP BY ALL
)
SELECT $day AS order_date, user_id, currency_code, coalesce(orders, 0)::BIGINT AS orders,
    coalesce(gross, 0)::BIGINT AS gross, coalesce(refunded, 0)::BIGINT AS refunded
FROM placed FULL OUTER JOIN back USING (user_id, currency_code);
CREATE TEMP TABLE all_days AS
SELECT * FROM history WHERE order_date < $day UNION ALL SELECT * FROM today;
"""


def _read_sql(paths: Sequence[str]) -> str:
    """`raw` (valid UTF-8 lines, numbered by `files` and `gaps`) and `not_utf8` (the other lines).

    read_csv with no delimiter, quote, escape or comment gives each line as one VARCHAR (empty
    lines as NULL), gunzipping `.gz` files; lines that are not UTF-8 go to its rejects table with
    their line number. The rows of a CREATE TABLE AS keep the files' order (insertion order is
    preserved), so a valid line's number is its rank in its file plus the rejected lines before it.
    """
    files = _list(list(paths))
    return f"""
CREATE TEMP TABLE raw AS
SELECT filename AS path, line FROM read_csv({files}, columns = {{'line': 'VARCHAR'}}, delim = '', quote = '',
    escape = '', comment = '', header = false, auto_detect = false, filename = true, compression = 'auto',
    max_line_size = 268435456, store_rejects = true, rejects_table = 'bad_lines', rejects_scan = 'bad_scans',
    rejects_limit = 0);
CREATE TEMP TABLE files AS
SELECT n.path, n.source_file, n.file_no, r.first_row FROM names n
LEFT JOIN (SELECT path, min(rowid) AS first_row FROM raw GROUP BY path) r USING (path);
CREATE TEMP TABLE not_utf8 AS
SELECT DISTINCT f.file_no, e.line::BIGINT AS line_number, e.csv_line AS raw, e.error_type, e.error_message
FROM bad_lines e JOIN bad_scans s USING (scan_id, file_id) JOIN files f ON f.path = s.file_path;
CREATE TEMP TABLE gaps AS  -- k-th valid line of a file: line k + (rejected lines before it)
SELECT file_no, gap, max(j) AS j FROM (
    SELECT file_no, line_number - row_number() OVER (PARTITION BY file_no ORDER BY line_number) AS gap,
        row_number() OVER (PARTITION BY file_no ORDER BY line_number) AS j
    FROM not_utf8) GROUP BY ALL
"""


def _statements(script: str) -> List[str]:
    return [s for s in script.split(";\n") if s.strip()]


def compute_marts(paths: Sequence[pathlib.Path], day: datetime.date, history: Sequence[tuple] = (),
                  threads: Optional[int] = None, source_name: Callable[[pathlib.Path], str] = str,
                  top_products: int = TOP_PRODUCTS,
                  progress: Optional[Callable[[str], None]] = None) -> Dict[str, List[tuple]]:
    """Every mart table's rows for one run of `day` over the part files `paths`.

    `history`: customer_daily_order rows (order_date, user_id, currency_code, orders, gross,
    refunded) of the other days, as `MartState.run_day` passes them to the reference.
    `source_name(path)`: the `source_file` reported for a file (e.g. the job's hdfs:// URI);
    lines are numbered per file and files are taken in `source_name` order.
    `progress(line)`: called with `step=NAME seconds=S` after each step (the CLI prints them).
    """
    paths = [pathlib.Path(p) for p in paths]
    if not paths:
        raise ValueError("no part files given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError("part files not found: %s" % ", ".join(missing))
    names = {str(p): source_name(p) for p in paths}
    ordered = sorted(names, key=lambda p: (names[p], p))
    week_start = day - datetime.timedelta(days=day.weekday())
    params = {"day": day, "week_start": week_start, "top": top_products}
    con = duckdb.connect(config={"preserve_insertion_order": True})
    clock = [time.monotonic()]

    def run(step: str, statement: str, args=None):
        result = con.execute(statement, args) if args else con.execute(statement)
        if progress:
            now = time.monotonic()
            progress("step=%s seconds=%.3f" % (step, now - clock[0]))
            clock[0] = now
        return result

    try:
        if threads:
            con.execute("SET threads = %d" % threads)
        con.execute("SET TimeZone = 'UTC'")
        for macro in MACROS:
            con.execute(macro)
        con.execute("CREATE TEMP TABLE names (path VARCHAR, source_file VARCHAR, file_no INT)")
        con.executemany("INSERT INTO names VALUES (?, ?, ?)", [(p, names[p], i) for i, p in enumerate(ordered)])
        con.execute("CREATE TEMP TABLE history (order_date DATE, user_id VARCHAR, currency_code VARCHAR, "
                    "orders BIGINT, gross BIGINT, refunded BIGINT)")
        other_days = [tuple(r) for r in history if r[0] != day]
        if other_days:
            con.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?)", other_days)
        for statement in _statements(_read_sql(ordered)):
            run(statement.split()[3], statement)
        odd = con.execute("SELECT DISTINCT error_type, error_message FROM not_utf8 "
                          "WHERE error_type <> 'INVALID ENCODING'").fetchall()
        if odd:
            raise ValueError("lines DuckDB could not read: %s" % odd)
        run("checked", _validation_sql(day))
        for statement in _statements(_event_sql()):
            run(statement.split()[3], statement)
        stages = ", ".join(_q(s) for s in STAGES)
        for statement in _statements(MARTS_SQL % {"stages": stages}) + _statements(CUSTOMERS_SQL):
            run(statement.split()[3], statement, _used(statement, params))
        out = {}
        for table in TABLES:
            query = QUERIES[table] % {"stages": stages, "limit": RAW_LINE_LIMIT}
            rows = run(table, query, _used(query, params)).fetchall()
            out[table] = [_python_row(table, r) for r in rows]
        return out
    finally:
        con.close()


def comparable_rows(table: str, rows: Sequence[tuple]) -> List[tuple]:
    """`rows` with the one documented difference to the job and the reference blanked: the raw
    text (raw_line, raw_line_truncated) of a rejected line that is not UTF-8, which DuckDB renders
    its own way (tests/bench/README.md)."""
    if table != "rejected_line":
        return list(rows)
    return [r[:5] + (None, None) + r[7:] if r[3] == "not_utf8" else r for r in rows]


def _used(statement: str, params: dict) -> dict:
    return {k: v for k, v in params.items() if "$" + k in statement}


def _python_row(table: str, row: tuple) -> tuple:
    """A DuckDB row as the reference writes it: aware UTC times."""
    if table == "session_summary":
        return row[:4] + (row[4].replace(tzinfo=UTC), row[5].replace(tzinfo=UTC)) + row[6:]
    return tuple(row)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="commerce_duckdb",
        description="Computes every commerce mart of one day with DuckDB from the raw part files "
                    "(gzip or plain JSON lines) and prints the rows per table and the seconds taken. "
                    "The DuckDB baseline of //tests/bench:commerce.")
    parser.add_argument("--day", required=True, type=datetime.date.fromisoformat,
                        help="the partition's UTC day, YYYY-MM-DD (events of other days are rejected)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("DP_DUCKDB_THREADS", "0")) or None,
                        help="DuckDB threads (env DP_DUCKDB_THREADS; default: all cores)")
    parser.add_argument("--top-products", type=int, default=TOP_PRODUCTS, help="products ranked per currency")
    parser.add_argument("files", nargs="+", type=pathlib.Path, help="the part files of the day")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        marts = compute_marts(args.files, args.day, threads=args.threads, top_products=args.top_products,
                              progress=lambda line: print(line, file=sys.stderr, flush=True))
    except (OSError, ValueError, duckdb.Error) as exc:
        print("commerce_duckdb: %s" % exc, file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    for table in TABLES:
        print("%s=%d" % (table, len(marts[table])))
    reasons: Dict[str, int] = {}
    for row in marts["rejected_line"]:
        reasons[row[3]] = reasons.get(row[3], 0) + 1
    print("rejected_by_reason=%s" % ",".join("%s:%d" % kv for kv in sorted(reasons.items())))
    valid = sum(row[6] for row in marts["session_summary"])  # every valid event is in one session
    lines = valid + len(marts["rejected_line"])
    print("lines=%d valid_events=%d" % (lines, valid))
    print("seconds=%.3f lines_per_second=%.0f" % (seconds, lines / seconds if seconds else 0.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
