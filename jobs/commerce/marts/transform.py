"""The pure transforms of the commerce marts job: DataFrames in, DataFrames out.

Only the DataFrame API that Spark Connect serves (no RDDs, no SparkContext, no UDFs), so the
same code runs in a local session and through a Spark Connect server. Each function is tested
on small handmade DataFrames in transform_test.py. The definitions of every mart column are in
README.md; the row shapes are proto/datapipelines/commerce/v1/mart.proto.
"""

from __future__ import annotations

import datetime
from functools import reduce
from typing import Dict, Tuple

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.commerce.marts import contract

SESSION_GAP_SECONDS = 30 * 60
DAY_COHORT_OFFSETS = 30  # day cohorts followed for 0..30 days (day-7 and day-30 retention)
WEEK_COHORT_OFFSETS = 8  # week cohorts followed for 0..8 weeks
CURRENCY_PATTERN = r"^[A-Z]{3}$"
RFC3339_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
RAW_LINE_LIMIT = 4096

# Funnel stage number reached by one event of each type (funnel.proto numbers); purchase (5) is
# reached by the order_placed event that counts its order (see sessionize).
STAGE_BY_EVENT_TYPE = {"product_view": 2, "add_to_cart": 3, "checkout_started": 4}

LINE_TYPE = T.StructType([
    T.StructField("product_id", T.StringType()),
    T.StructField("product_name", T.StringType()),
    T.StructField("category", T.StringType()),
    T.StructField("quantity", T.LongType()),
    T.StructField("line_total", T.LongType()),
    T.StructField("currency", T.StringType()),
])

# What parse_events returns for valid lines: one typed row per event.
EVENT_SCHEMA = T.StructType([
    T.StructField("source_file", T.StringType()),
    T.StructField("line_number", T.LongType()),
    T.StructField("event_id", T.StringType()),
    T.StructField("event_time", T.TimestampType()),
    T.StructField("user_id", T.StringType()),
    T.StructField("anonymous_id", T.StringType()),
    T.StructField("event_type", T.StringType()),
    T.StructField("product_id", T.StringType()),
    T.StructField("product_name", T.StringType()),
    T.StructField("category", T.StringType()),
    T.StructField("order_id", T.StringType()),
    T.StructField("refund_id", T.StringType()),
    T.StructField("amount", T.LongType()),
    T.StructField("currency", T.StringType()),
    T.StructField("lines", T.ArrayType(LINE_TYPE)),
])

REJECT_COLUMNS = ["source_file", "line_number", "reason", "detail", "raw_line", "raw_line_truncated"]


# --- contract -> Spark schema ------------------------------------------------------------------

def _spark_type(spec) -> T.DataType:
    if spec == contract.STRING:
        return T.StringType()
    if isinstance(spec, list):
        return T.ArrayType(_spark_type(spec[0]))
    return T.StructType([T.StructField(name, _spark_type(sub)) for name, sub in spec.items()])


def event_json_schema() -> T.StructType:
    """CommerceEvent as from_json reads it, plus `_corrupt` for lines that do not fit it."""
    schema = _spark_type(contract.COMMERCE_EVENT)
    return T.StructType(schema.fields + [T.StructField("_corrupt", T.StringType())])


# --- parsing and validation ----------------------------------------------------------------------

def _blank(col: Column) -> Column:
    return col.isNull() | (F.trim(col) == "")


def _money_amount(money: Column) -> Column:
    # proto3 JSON omits zero: an absent amount is 0.
    return F.coalesce(money["amountMinor"].try_cast("long"), F.lit(0).cast("long"))


def _item(path: str, active: Column, **fields) -> Column:
    return F.struct(F.lit(path).alias("path"), active.alias("active"), *[v.alias(k) for k, v in fields.items()])


def _first_path(items: Column, predicate) -> Column:
    """The path of the first active item that fails `predicate`, or NULL."""
    return F.get(F.filter(items, lambda x: x["active"] & F.coalesce(predicate(x), F.lit(False))), 0)["path"]


def _payload_checks(e: Column):
    """(condition, reason, detail) for the payload that is set, as a few checks over arrays of
    the payload fields (one expression per kind of check keeps the generated code small)."""
    pv, prv, atc, rfc = e["pageView"], e["productView"], e["addToCart"], e["removeFromCart"]
    chk, order, pay, ref = e["checkoutStarted"], e["orderPlaced"], e["payment"], e["refund"]
    required = F.array(
        _item("pageView.pageUrl", pv.isNotNull(), v=F.coalesce(pv["pageUrl"], pv["pagePath"])),
        _item("productView.product.productId", prv.isNotNull(), v=prv["product"]["productId"]),
        _item("addToCart.product.productId", atc.isNotNull(), v=atc["product"]["productId"]),
        _item("removeFromCart.product.productId", rfc.isNotNull(), v=rfc["product"]["productId"]),
        _item("checkoutStarted.checkoutId", chk.isNotNull(), v=chk["checkoutId"]),
        _item("orderPlaced.orderId", order.isNotNull(), v=order["orderId"]),
        _item("payment.paymentId", pay.isNotNull(), v=pay["paymentId"]),
        _item("payment.orderId", pay.isNotNull(), v=pay["orderId"]),
        _item("refund.refundId", ref.isNotNull(), v=ref["refundId"]),
        _item("refund.orderId", ref.isNotNull(), v=ref["orderId"]),
    )
    quantities = F.array(
        _item("addToCart.quantity", atc.isNotNull(), v=atc["quantity"]),
        _item("removeFromCart.quantity", rfc.isNotNull(), v=rfc["quantity"]),
    )
    integers = F.array(
        _item("search.resultCount", e["search"].isNotNull(), v=e["search"]["resultCount"]),
        _item("checkoutStarted.itemCount", chk.isNotNull(), v=chk["itemCount"]),
    )

    def money(path, payload, value, needed):
        return _item(path, payload.isNotNull(), m=value, required=F.lit(needed))

    monies = F.array(
        money("productView.price", prv, prv["price"], True),
        money("addToCart.unitPrice", atc, atc["unitPrice"], True),
        money("removeFromCart.unitPrice", rfc, rfc["unitPrice"], True),
        money("checkoutStarted.cartTotal", chk, chk["cartTotal"], False),
        money("orderPlaced.total", order, order["total"], True),
        money("orderPlaced.subtotal", order, order["subtotal"], False),
        money("orderPlaced.discount", order, order["discount"], False),
        money("orderPlaced.shipping", order, order["shipping"], False),
        money("orderPlaced.tax", order, order["tax"], False),
        money("payment.amount", pay, pay["amount"], True),
        money("refund.amount", ref, ref["amount"], True),
    )
    # The lines of an order or a refund (only one payload is ever set).
    lines_path = F.when(order.isNotNull(), F.lit("orderPlaced.lines")).otherwise(F.lit("refund.lines"))
    lines = F.coalesce(order["lines"], ref["lines"], F.array())
    lines_currency = F.coalesce(order["total"]["currencyCode"], ref["amount"]["currencyCode"])

    def bad_amount(m):
        return m.isNotNull() & m["amountMinor"].isNotNull() & m["amountMinor"].try_cast("long").isNull()

    def bad_currency(m):
        return m.isNotNull() & ~F.coalesce(m["currencyCode"].rlike(CURRENCY_PATTERN), F.lit(False))

    def line_check(predicate, suffix):
        return F.exists(lines, lambda l: F.coalesce(predicate(l), F.lit(False))), F.concat(lines_path, F.lit(suffix))

    missing_field = _first_path(required, lambda x: _blank(x["v"]))
    missing_money = _first_path(monies, lambda x: x["required"] & x["m"].isNull())
    quantity_type = _first_path(quantities, lambda x: x["v"].isNotNull() & x["v"].try_cast("int").isNull())
    integer_type = _first_path(integers, lambda x: x["v"].isNotNull() & x["v"].try_cast("int").isNull())
    quantity_range = _first_path(quantities, lambda x: F.coalesce(x["v"].try_cast("int"), F.lit(0)) < 1)
    amount_type = _first_path(monies, lambda x: bad_amount(x["m"]))
    negative = _first_path(monies, lambda x: x["m"].isNotNull() & (_money_amount(x["m"]) < 0))
    currency = _first_path(monies, lambda x: bad_currency(x["m"]))
    checks = [
        (missing_field.isNotNull(), "missing_field", missing_field),
        (missing_money.isNotNull(), "missing_field", missing_money),
        (order.isNotNull() & (F.coalesce(F.size(order["lines"]), F.lit(0)) < 1), "missing_field",
         F.lit("orderPlaced.lines")),
        (line_check(lambda l: _blank(l["product"]["productId"]), ".product.productId")[0], "missing_field",
         line_check(lambda l: _blank(l["product"]["productId"]), ".product.productId")[1]),
        (line_check(lambda l: l["lineTotal"].isNull(), ".lineTotal")[0], "missing_field",
         F.concat(lines_path, F.lit(".lineTotal"))),
        (quantity_type.isNotNull(), "type_mismatch", quantity_type),
        (integer_type.isNotNull(), "type_mismatch", integer_type),
        (amount_type.isNotNull(), "type_mismatch", F.concat(amount_type, F.lit(".amountMinor"))),
        (line_check(lambda l: l["quantity"].isNotNull() & l["quantity"].try_cast("int").isNull(), "")[0],
         "type_mismatch", F.concat(lines_path, F.lit(".quantity"))),
        (line_check(lambda l: bad_amount(l["lineTotal"]) | bad_amount(l["unitPrice"]), "")[0],
         "type_mismatch", F.concat(lines_path, F.lit(".amountMinor"))),
        (quantity_range.isNotNull(), "invalid_quantity", quantity_range),
        (line_check(lambda l: F.coalesce(l["quantity"].try_cast("int"), F.lit(0)) < 1, "")[0],
         "invalid_quantity", F.concat(lines_path, F.lit(".quantity"))),
        (negative.isNotNull(), "negative_amount", negative),
        (line_check(lambda l: (_money_amount(l["lineTotal"]) < 0) | (_money_amount(l["unitPrice"]) < 0), "")[0],
         "negative_amount", lines_path),
        (ref.isNotNull() & (_money_amount(ref["amount"]) <= 0), "invalid_amount", F.lit("refund.amount must be positive")),
        (currency.isNotNull(), "invalid_currency", F.concat(currency, F.lit(".currencyCode"))),
        (line_check(lambda l: bad_currency(l["lineTotal"]), "")[0], "invalid_currency",
         F.concat(lines_path, F.lit(".lineTotal.currencyCode"))),
        (pay.isNotNull() & ~F.coalesce(pay["status"].isin(*contract.PAYMENT_STATUSES), F.lit(False)),
         "invalid_enum", F.lit("payment.status")),
        (line_check(lambda l: l["lineTotal"]["currencyCode"] != lines_currency, "")[0], "mixed_currency",
         lines_path),
    ]
    return checks


def _typed_lines(lines: Column) -> Column:
    return F.transform(F.coalesce(lines, F.array()), lambda l: F.struct(
        l["product"]["productId"].alias("product_id"),
        F.coalesce(l["product"]["productName"], F.lit("")).alias("product_name"),
        F.coalesce(l["product"]["category"], F.lit("")).alias("category"),
        l["quantity"].try_cast("long").alias("quantity"),
        _money_amount(l["lineTotal"]).alias("line_total"),
        l["lineTotal"]["currencyCode"].alias("currency"),
    ))


def parse_events(lines: DataFrame, day: datetime.date) -> Tuple[DataFrame, DataFrame]:
    """Raw lines (source_file, line_number, value) -> (valid events, rejected lines).

    Both are views of one `validate_lines` frame; the job persists that frame once and splits
    it (`valid_events`, `rejected_lines`), so every raw line is parsed once per run.
    """
    checked = validate_lines(lines, day)
    return valid_events(checked), rejected_lines(checked)


def valid_events(checked: DataFrame) -> DataFrame:
    """The lines of `validate_lines` that passed, as EVENT_SCHEMA rows."""
    return checked.where(F.col("reason").isNull()).select(*EVENT_SCHEMA.fieldNames())


def rejected_lines(checked: DataFrame) -> DataFrame:
    """The lines of `validate_lines` that failed, as REJECT_COLUMNS rows."""
    return checked.where(F.col("reason").isNotNull()).select(*REJECT_COLUMNS)


def validate_lines(lines: DataFrame, day: datetime.date) -> DataFrame:
    """Every raw line (source_file, line_number, value) checked against the contract: one row per
    line with `reason`/`detail` (NULL for a valid line), the raw text of a rejected line
    (`raw_line`, `raw_line_truncated`) and the typed event columns of a valid one (EVENT_SCHEMA).

    Every line ends in exactly one of the two. Reasons, checked in this order: not_utf8,
    empty_line, truncated_json, malformed_json, type_mismatch, unknown_event_type,
    missing_payload, multiple_payloads, missing_field, invalid_timestamp, outside_partition,
    invalid_quantity, negative_amount, invalid_amount, invalid_currency, invalid_enum,
    mixed_currency, duplicate_event_id (the second and later line with one event id, in file
    and line order).
    """
    schema = event_json_schema()
    payload_names = list(contract.PAYLOADS)
    known_keys = list(contract.COMMERCE_EVENT)
    parsed = lines.select(
        "source_file", "line_number", "value",
        F.is_valid_utf8("value").alias("_utf8"),
        F.from_json("value", schema, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": "_corrupt"}).alias("e"),
    )
    e = F.col("e")
    value = F.col("value")
    # Strict JSON (RFC 8259: double quotes only, no NaN, no repeated key, as the contract's JSON
    # mapping requires); from_json alone is lenient (single quotes, NaN, the last of repeated
    # keys), so a line must pass both. Both stop at the end of the first value and ignore what
    # follows it, so the line must also be one whole value: inside "[...]" it is an array of one
    # element, and inside {"_": ...} an object with one key. Text after the value breaks one of
    # the two (to pass the array it must begin with "]", to pass the object with "}" or ",").
    whole_value = ((F.json_array_length(F.concat(F.lit("["), value, F.lit("]"))) == 1)
                   & (F.size(F.json_object_keys(F.concat(F.lit('{"_":'), value, F.lit("}")))) == 1))
    valid_json = F.try_parse_json(value).isNotNull() & F.coalesce(whole_value, F.lit(False))
    keys = F.json_object_keys(value)
    payload_count = reduce(lambda a, b: a + b, [e[name].isNotNull().cast("int") for name in payload_names])
    # RFC 3339 only (what the JSON mapping of google.protobuf.Timestamp writes): a cast alone
    # would also take "2026-01-01", "2026-01-01 10:00" or surrounding spaces.
    event_time = F.when(e["eventTime"].rlike(RFC3339_PATTERN), F.coalesce(
        e["eventTime"].try_cast("timestamp"), F.try_to_timestamp(e["eventTime"], F.lit("yyyy-MM-dd'T'HH:mm:ss.SSSSSSSSSX"))))
    unknown_keys = F.array_join(F.array_except(F.coalesce(keys, F.array()), F.array(*[F.lit(k) for k in known_keys])), ",")

    json_reason = (F.when(~valid_json & F.ltrim(value).startswith('{"') & ~F.rtrim(value).endswith("}"), "truncated_json")
                   .when(~valid_json, "malformed_json")
                   .otherwise("type_mismatch"))
    json_detail = (F.when(valid_json, F.lit("a field has the wrong JSON type, or the line is not an object"))
                   .otherwise(F.lit("not parseable as JSON")))
    payload_reason = F.when(unknown_keys != "", "unknown_event_type").otherwise("missing_payload")
    payload_detail = (F.when(unknown_keys != "", F.concat(F.lit("unknown fields: "), unknown_keys))
                      .otherwise(F.lit("no payload field is set")))

    # (condition, reason, detail), first match wins.
    checks = [
        (~F.col("_utf8"), F.lit("not_utf8"), F.lit("the line is not valid UTF-8")),
        (F.trim(value) == "", F.lit("empty_line"), F.lit("")),
        (e.isNull() | e["_corrupt"].isNotNull() | ~valid_json, json_reason, json_detail),
        (payload_count == 0, payload_reason, payload_detail),
        (payload_count > 1, F.lit("multiple_payloads"), F.lit("more than one payload field is set")),
        (_blank(e["eventId"]), F.lit("missing_field"), F.lit("eventId")),
        (_blank(e["eventTime"]), F.lit("missing_field"), F.lit("eventTime")),
        (_blank(e["anonymousId"]), F.lit("missing_field"), F.lit("anonymousId")),
        (event_time.isNull(), F.lit("invalid_timestamp"), F.concat(F.lit("eventTime="), e["eventTime"])),
        (F.to_date(event_time) != F.lit(day), F.lit("outside_partition"),
         F.concat(F.lit("eventTime="), e["eventTime"], F.lit(" is not in dt=" + day.isoformat()))),
    ] + [(condition, F.lit(why), what) for condition, why, what in _payload_checks(e)]

    verdict = None  # one CASE over all checks, yielding struct(reason, detail)
    for condition, why, what in checks:
        condition = F.coalesce(condition, F.lit(False))
        outcome = F.struct(why.alias("reason"), F.coalesce(what, F.lit("")).alias("detail"))
        verdict = F.when(condition, outcome) if verdict is None else verdict.when(condition, outcome)

    checked = parsed.select(
        "source_file", "line_number", "value", "e",
        event_time.alias("event_time"),
        verdict.alias("verdict"),
    ).select(
        "source_file", "line_number", "value", "e", "event_time",
        F.col("verdict.reason").alias("reason"),
        F.coalesce(F.col("verdict.detail"), F.lit("")).alias("detail"),
    )

    # Duplicates among otherwise valid lines: the first in (file, line) order wins.
    first_seen = Window.partitionBy(F.col("e")["eventId"], F.col("reason").isNull()).orderBy("source_file", "line_number")
    checked = checked.withColumn(
        "reason",
        F.when(F.col("reason").isNull() & (F.row_number().over(first_seen) > 1), F.lit("duplicate_event_id"))
        .otherwise(F.col("reason")))
    checked = checked.withColumn(
        "detail",
        F.when(F.col("reason") == "duplicate_event_id", F.concat(F.lit("eventId="), F.col("e")["eventId"]))
        .otherwise(F.col("detail")))

    rejected = F.col("reason").isNotNull()
    event_type = reduce(
        lambda acc, item: acc.when(e[item[0]].isNotNull(), F.lit(item[1][0])),
        list(contract.PAYLOADS.items())[1:],
        F.when(e[payload_names[0]].isNotNull(), F.lit(contract.PAYLOADS[payload_names[0]][0])),
    )
    product = F.coalesce(e["productView"]["product"], e["addToCart"]["product"], e["removeFromCart"]["product"])
    money = F.coalesce(e["orderPlaced"]["total"], e["refund"]["amount"], e["payment"]["amount"],
                       e["productView"]["price"], e["addToCart"]["unitPrice"], e["removeFromCart"]["unitPrice"],
                       e["checkoutStarted"]["cartTotal"])

    def if_valid(column: Column) -> Column:
        return F.when(~rejected, column)

    # Only narrow columns leave this function (never the raw text of a valid line, nor the
    # parsed struct): this is the frame the job keeps in memory.
    return checked.select(
        "source_file",
        "line_number",
        "reason",
        "detail",
        F.when(rejected, F.substring(F.make_valid_utf8("value"), 1, RAW_LINE_LIMIT)).alias("raw_line"),
        F.when(rejected, F.length(F.make_valid_utf8("value")) > RAW_LINE_LIMIT).alias("raw_line_truncated"),
        if_valid(e["eventId"]).alias("event_id"),
        if_valid(F.col("event_time")).alias("event_time"),
        if_valid(F.coalesce(e["userId"], F.lit(""))).alias("user_id"),
        if_valid(e["anonymousId"]).alias("anonymous_id"),
        if_valid(event_type).alias("event_type"),
        if_valid(product["productId"]).alias("product_id"),
        if_valid(F.coalesce(product["productName"], F.lit(""))).alias("product_name"),
        if_valid(F.coalesce(product["category"], F.lit(""))).alias("category"),
        if_valid(F.coalesce(e["orderPlaced"]["orderId"], e["refund"]["orderId"], e["payment"]["orderId"])).alias("order_id"),
        if_valid(e["refund"]["refundId"]).alias("refund_id"),
        if_valid(F.when(money.isNotNull(), _money_amount(money))).alias("amount"),
        if_valid(money["currencyCode"]).alias("currency"),
        if_valid(F.when(e["orderPlaced"].isNotNull(), _typed_lines(e["orderPlaced"]["lines"]))
                 .when(e["refund"].isNotNull(), _typed_lines(e["refund"]["lines"]))).alias("lines"),
    )


# --- sessions and funnel -------------------------------------------------------------------------

def _first_orders(events: DataFrame) -> DataFrame:
    """order_placed events, one per order id (the earliest)."""
    w = Window.partitionBy("order_id").orderBy("event_time", "event_id")
    return (events.where(F.col("event_type") == "order_placed")
            .withColumn("_n", F.row_number().over(w)).where(F.col("_n") == 1).drop("_n"))


def _first_refunds(events: DataFrame) -> DataFrame:
    w = Window.partitionBy("refund_id").orderBy("event_time", "event_id")
    return (events.where(F.col("event_type") == "refund")
            .withColumn("_n", F.row_number().over(w)).where(F.col("_n") == 1).drop("_n"))


def sessionize(events: DataFrame, day: datetime.date, gap_seconds: int = SESSION_GAP_SECONDS) -> DataFrame:
    """One row per session (mart.session_summary): a browser's (anonymous_id) events with no
    gap longer than `gap_seconds`. session_id = first 32 hex digits of
    sha256(anonymous_id + "|" + first event id), stable across re-runs."""
    w = Window.partitionBy("anonymous_id").orderBy("event_time", "event_id")
    gap = F.unix_micros("event_time") - F.lag(F.unix_micros("event_time")).over(w)
    marked = events.withColumn("_new", F.when(gap.isNull() | (gap > gap_seconds * 1_000_000), 1).otherwise(0))
    marked = marked.withColumn("_session", F.sum("_new").over(w.rowsBetween(Window.unboundedPreceding, 0)))
    orders = _first_orders(events).select("event_id", F.lit(True).alias("_first_order"))
    marked = marked.join(orders, "event_id", "left")
    is_order = F.coalesce(F.col("_first_order"), F.lit(False))
    # Purchase only for the event that counts the order (the earliest of its order id): a repeated
    # order_placed of an order already counted is no purchase (and has no order total).
    stage = reduce(lambda acc, kv: acc.when(F.col("event_type") == kv[0], F.lit(kv[1])),
                   list(STAGE_BY_EVENT_TYPE.items()), F.when(is_order, F.lit(5))).otherwise(F.lit(1))
    grouped = marked.groupBy("anonymous_id", "_session").agg(
        F.min_by("event_id", F.struct("event_time", "event_id")).alias("_first_event_id"),
        F.coalesce(F.max(F.when(F.col("user_id") != "", F.col("user_id"))), F.lit("")).alias("user_id"),
        F.min("event_time").alias("session_start_time"),
        F.max("event_time").alias("session_end_time"),
        F.count(F.lit(1)).alias("event_count"),
        F.sum(F.when(F.col("event_type") == "page_view", 1).otherwise(0)).cast("long").alias("page_view_count"),
        F.sum(F.when(F.col("event_type") == "product_view", 1).otherwise(0)).cast("long").alias("product_view_count"),
        F.max(stage).alias("stage_number"),
        F.min(F.when(is_order, F.col("currency"))).alias("_order_currency"),
        F.collect_list(F.when(is_order, F.struct("currency", "amount"))).alias("_orders"),
    )
    order_total = F.aggregate(
        F.filter("_orders", lambda o: o["currency"] == F.col("_order_currency")),
        F.lit(0).cast("long"), lambda acc, o: acc + o["amount"])
    stage_name = F.element_at(F.create_map(*[x for k, v in contract.FUNNEL_STAGES.items() for x in (F.lit(k), F.lit(v))]),
                              F.col("stage_number"))
    return grouped.select(
        F.substring(F.sha2(F.concat_ws("|", "anonymous_id", "_first_event_id"), 256), 1, 32).alias("session_id"),
        F.lit(day).alias("event_date"),
        "user_id",
        "anonymous_id",
        "session_start_time",
        "session_end_time",
        "event_count",
        "page_view_count",
        "product_view_count",
        stage_name.alias("funnel_stage"),
        (F.col("stage_number") == 5).alias("converted"),
        F.when(F.col("_order_currency").isNotNull(), order_total).alias("order_total_amount_minor"),
        F.col("_order_currency").alias("order_total_currency_code"),
        "stage_number",
    )


def funnel(sessions: DataFrame, day: datetime.date) -> DataFrame:
    """mart.daily_funnel_step: sessions (and visitors) that reached at least each stage; all five."""
    spark = sessions.sparkSession
    visitor = F.when(F.col("user_id") != "", F.col("user_id")).otherwise(F.col("anonymous_id"))
    reached = (sessions.select(visitor.alias("visitor"), F.explode(F.sequence(F.lit(1), "stage_number")).alias("s"))
               .groupBy("s").agg(F.count(F.lit(1)).alias("session_count"),
                                 F.count_distinct("visitor").alias("visitor_count")))
    stages = spark.createDataFrame([(k, v) for k, v in contract.FUNNEL_STAGES.items()], "s int, stage string")
    joined = stages.join(reached, "s", "left").na.fill(0, ["session_count", "visitor_count"])
    previous = F.lag("session_count").over(Window.orderBy("s"))
    rate = (F.when(previous.isNull(), F.lit(1.0))
            .when(previous == 0, F.lit(0.0))
            .otherwise(F.col("session_count") / previous))
    return joined.select(
        F.lit(day).alias("event_date"),
        "stage",
        F.col("s").cast("short").alias("stage_number"),
        F.col("session_count").cast("long").alias("session_count"),
        F.col("visitor_count").cast("long").alias("visitor_count"),
        rate.cast("double").alias("conversion_rate_from_previous"),
    )


# --- revenue and products ------------------------------------------------------------------------

def _top_category(category: Column) -> Column:
    top = F.split(category, "/").getItem(0)
    return F.when(F.coalesce(F.trim(top), F.lit("")) == "", F.lit("uncategorized")).otherwise(F.trim(top))


def _order_lines(orders: DataFrame) -> DataFrame:
    return orders.select("order_id", "event_time", "event_id", F.explode("lines").alias("l")).select(
        "order_id", "event_time", "event_id", "l.*")


def category_revenue(events: DataFrame, day: datetime.date) -> DataFrame:
    """mart.daily_category_revenue: order lines of the day's orders (each order once) by top-level
    category and currency, minus the refunded line totals of the day's refunds."""
    lines = _order_lines(_first_orders(events))
    gross = lines.groupBy(_top_category(F.col("category")).alias("category"), "currency").agg(
        F.count_distinct("order_id").alias("order_count"),
        F.sum("quantity").alias("units_sold"),
        F.sum("line_total").alias("gross"),
    )
    refund_lines = _first_refunds(events).select(F.explode("lines").alias("l")).select("l.*")
    refunded = refund_lines.groupBy(_top_category(F.col("category")).alias("category"), "currency").agg(
        F.sum("line_total").alias("refunded"))
    joined = gross.join(refunded, ["category", "currency"], "full").na.fill(0, ["order_count", "units_sold", "gross", "refunded"])
    return joined.select(
        F.lit(day).alias("event_date"),
        "category",
        F.col("order_count").cast("long").alias("order_count"),
        F.col("units_sold").cast("long").alias("units_sold"),
        F.col("gross").cast("long").alias("gross_revenue_amount_minor"),
        F.col("currency").alias("gross_revenue_currency_code"),
        F.col("refunded").cast("long").alias("refunded_amount_minor"),
        F.col("currency").alias("refunded_currency_code"),
        (F.col("gross") - F.col("refunded")).cast("long").alias("net_revenue_amount_minor"),
        F.col("currency").alias("net_revenue_currency_code"),
    )


def top_products(events: DataFrame, day: datetime.date, limit: int = 10) -> DataFrame:
    """mart.daily_top_product: the `limit` best sellers by revenue per currency (ties: more units,
    then product id); name and category as last seen in an order line that day."""
    lines = _order_lines(_first_orders(events))
    sold = lines.groupBy("product_id", "currency").agg(
        F.sum("quantity").alias("units_sold"),
        F.sum("line_total").alias("revenue"),
        F.max_by(F.struct("product_name", "category"), F.struct("event_time", "event_id")).alias("_last"),
    )
    views = (events.where(F.col("event_type") == "product_view").groupBy("product_id")
             .agg(F.count(F.lit(1)).alias("view_count")))
    ranked = sold.join(views, "product_id", "left").withColumn(
        "rank", F.row_number().over(Window.partitionBy("currency").orderBy(
            F.desc("revenue"), F.desc("units_sold"), F.asc("product_id"))))
    return ranked.where(F.col("rank") <= limit).select(
        F.lit(day).alias("event_date"),
        F.col("rank").cast("int").alias("rank"),
        "product_id",
        F.col("_last.product_name").alias("product_name"),
        F.col("_last.category").alias("category"),
        F.col("units_sold").cast("long").alias("units_sold"),
        F.col("revenue").cast("long").alias("revenue_amount_minor"),
        F.col("currency").alias("revenue_currency_code"),
        F.coalesce("view_count", F.lit(0)).cast("long").alias("view_count"),
    )


# --- customers: daily history, new vs returning, cohorts, RFM -------------------------------------

CUSTOMER_HISTORY_SCHEMA = T.StructType([
    T.StructField("order_date", T.DateType()),
    T.StructField("user_id", T.StringType()),
    T.StructField("currency_code", T.StringType()),
    T.StructField("order_count", T.LongType()),
    T.StructField("gross_amount_minor", T.LongType()),
    T.StructField("refunded_amount_minor", T.LongType()),
])


def customer_daily_orders(events: DataFrame, day: datetime.date) -> DataFrame:
    """mart.customer_daily_order for the day: per signed-in customer and currency, orders placed
    (each order once) and their totals, and refunds issued."""
    orders = (_first_orders(events).where(F.col("user_id") != "")
              .groupBy("user_id", F.col("currency").alias("currency_code"))
              .agg(F.count(F.lit(1)).alias("order_count"), F.sum("amount").alias("gross_amount_minor")))
    refunds = (_first_refunds(events).where(F.col("user_id") != "")
               .groupBy("user_id", F.col("currency").alias("currency_code"))
               .agg(F.sum("amount").alias("refunded_amount_minor")))
    joined = orders.join(refunds, ["user_id", "currency_code"], "full").na.fill(
        0, ["order_count", "gross_amount_minor", "refunded_amount_minor"])
    return joined.select(
        F.lit(day).alias("order_date"),
        "user_id",
        "currency_code",
        F.col("order_count").cast("long").alias("order_count"),
        F.col("gross_amount_minor").cast("long").alias("gross_amount_minor"),
        F.col("refunded_amount_minor").cast("long").alias("refunded_amount_minor"),
    )


def _history_through(history: DataFrame, today: DataFrame, day: datetime.date) -> DataFrame:
    """Earlier days' rows (order_date < day) plus today's, in CUSTOMER_HISTORY_SCHEMA order."""
    cols = [f.name for f in CUSTOMER_HISTORY_SCHEMA.fields]
    return history.where(F.col("order_date") < F.lit(day)).select(*cols).unionByName(today.select(*cols))


def _first_order_dates(all_days: DataFrame) -> DataFrame:
    return all_days.where(F.col("order_count") > 0).groupBy("user_id").agg(F.min("order_date").alias("first_order_date"))


def customer_types(today: DataFrame, history: DataFrame, day: datetime.date) -> DataFrame:
    """mart.daily_customer_type: today's ordering customers, NEW when today is their first order day."""
    first = _first_order_dates(_history_through(history, today, day))
    buyers = today.where(F.col("order_count") > 0).join(first, "user_id")
    kind = F.when(F.col("first_order_date") == F.lit(day), F.lit("NEW")).otherwise(F.lit("RETURNING"))
    return buyers.groupBy(kind.alias("customer_type"), "currency_code").agg(
        F.count_distinct("user_id").alias("customer_count"),
        F.sum("order_count").alias("order_count"),
        F.sum("gross_amount_minor").alias("gross_revenue_amount_minor"),
    ).select(
        F.lit(day).alias("event_date"), "customer_type", "currency_code",
        F.col("customer_count").cast("long").alias("customer_count"),
        F.col("order_count").cast("long").alias("order_count"),
        F.col("gross_revenue_amount_minor").cast("long").alias("gross_revenue_amount_minor"),
    )


def week_start(day: datetime.date) -> datetime.date:
    """Monday of the ISO week of `day`."""
    return day - datetime.timedelta(days=day.weekday())


def week_end(day: datetime.date) -> datetime.date:
    """Sunday of the ISO week of `day`: the last day whose history a run of `day` reads."""
    return week_start(day) + datetime.timedelta(days=6)


def cohort_retention(today: DataFrame, history: DataFrame, day: datetime.date) -> DataFrame:
    """mart.cohort_retention cells measuring the period that contains `day`.

    DAY cohorts (offsets 0..30): every order up to and including `day`. ISO-week cohorts
    (offsets 0..8): every order loaded up to the end of `day`'s week (history rows of later days
    of the week included), so any run within a week writes the same week cells.
    """
    cols = [f.name for f in CUSTOMER_HISTORY_SCHEMA.fields]
    monday, sunday = week_start(day), week_end(day)
    today_rows = today.select(*cols)
    through_day = _history_through(history, today, day).where(F.col("order_count") > 0)
    through_week = (history.where((F.col("order_date") <= F.lit(sunday)) & (F.col("order_date") != F.lit(day)))
                    .select(*cols).unionByName(today_rows).where(F.col("order_count") > 0))

    daily_users = through_day.groupBy("user_id").agg(
        F.min("order_date").alias("first_order_date"),
        F.max(F.when(F.col("order_date") == F.lit(day), 1).otherwise(0)).alias("active"),
    )
    daily = (daily_users.withColumn("period_offset", F.datediff(F.lit(day), F.col("first_order_date")))
             .where(F.col("period_offset").between(0, DAY_COHORT_OFFSETS))
             .groupBy(F.col("first_order_date").alias("cohort_start_date"), "period_offset")
             .agg(F.count(F.lit(1)).alias("cohort_size"), F.sum("active").alias("retained_count"))
             .select(F.lit(contract.COHORT_PERIODS[1]).alias("cohort_period"), "cohort_start_date", "period_offset",
                     "cohort_size", "retained_count", F.lit(day).alias("activity_period_start_date")))

    weekly_users = through_week.groupBy("user_id").agg(
        F.min("order_date").alias("first_order_date"),
        F.max(F.when(F.col("order_date") >= F.lit(monday), 1).otherwise(0)).alias("active"),
    ).withColumn("cohort_start_date", F.date_trunc("week", F.col("first_order_date")).cast("date"))
    weekly = (weekly_users
              .withColumn("period_offset", (F.datediff(F.lit(monday), F.col("cohort_start_date")) / 7).cast("int"))
              .where(F.col("period_offset").between(0, WEEK_COHORT_OFFSETS))
              .groupBy("cohort_start_date", "period_offset")
              .agg(F.count(F.lit(1)).alias("cohort_size"), F.sum("active").alias("retained_count"))
              .select(F.lit(contract.COHORT_PERIODS[2]).alias("cohort_period"), "cohort_start_date", "period_offset",
                      "cohort_size", "retained_count", F.lit(monday).alias("activity_period_start_date")))
    return daily.unionByName(weekly).select(
        "cohort_period",
        "cohort_start_date",
        F.col("period_offset").cast("int").alias("period_offset"),
        F.col("cohort_size").cast("long").alias("cohort_size"),
        F.col("retained_count").cast("long").alias("retained_count"),
        (F.col("retained_count") / F.col("cohort_size")).cast("double").alias("retention_rate"),
        "activity_period_start_date",
    )


def _score(order: Column) -> Column:
    """1..5 by cumulative distribution within the currency; ties share a score."""
    return F.ceil(F.cume_dist().over(Window.partitionBy("currency_code").orderBy(order)) * 5).cast("int")


def rfm_segment(r: Column, f: Column, m: Column, order_count: Column) -> Column:
    """The segment rules, first match wins (README.md lists them)."""
    names = contract.RFM_SEGMENTS
    return (F.when((r >= 4) & (f >= 4) & (m >= 4), names[1])
            .when((r >= 3) & (f >= 4), names[2])
            .when((r >= 4) & (order_count == 1), names[4])
            .when((r >= 3) & (f >= 2), names[3])
            .when((r <= 2) & (f >= 3), names[5])
            .when((r == 1) & (f <= 2) & (m <= 2), names[7])
            .otherwise(names[6]))


def customer_rfm(today: DataFrame, history: DataFrame, day: datetime.date) -> DataFrame:
    """mart.customer_rfm as of `day`: every customer with an order up to `day`, per currency."""
    all_days = _history_through(history, today, day)
    per_customer = all_days.groupBy("user_id", "currency_code").agg(
        F.max(F.when(F.col("order_count") > 0, F.col("order_date"))).alias("last_order_date"),
        F.sum("order_count").alias("order_count"),
        F.sum(F.col("gross_amount_minor") - F.col("refunded_amount_minor")).alias("monetary"),
    ).where(F.col("order_count") > 0)
    scored = per_customer.select(
        "user_id", "currency_code", "order_count", "monetary",
        F.datediff(F.lit(day), F.col("last_order_date")).alias("recency_days"),
    ).select(
        "*",
        _score(F.desc("recency_days")).alias("recency_score"),
        _score(F.asc("order_count")).alias("frequency_score"),
        _score(F.asc("monetary")).alias("monetary_score"),
    )
    return scored.select(
        F.lit(day).alias("as_of_date"),
        "user_id",
        F.col("recency_days").cast("int").alias("recency_days"),
        F.col("order_count").cast("long").alias("order_count"),
        F.col("monetary").cast("long").alias("monetary_amount_minor"),
        F.col("currency_code").alias("monetary_currency_code"),
        "recency_score",
        "frequency_score",
        "monetary_score",
        rfm_segment(F.col("recency_score"), F.col("frequency_score"), F.col("monetary_score"),
                    F.col("order_count")).alias("segment"),
    )


def all_marts(events: DataFrame, history: DataFrame, day: datetime.date, top_limit: int = 10) -> Dict[str, DataFrame]:
    """Every mart table of one day, by table name (without the `mart.` schema)."""
    sessions = sessionize(events, day)
    today = customer_daily_orders(events, day)
    return {
        "session_summary": sessions.drop("stage_number"),
        "daily_funnel_step": funnel(sessions, day),
        "daily_category_revenue": category_revenue(events, day),
        "daily_top_product": top_products(events, day, top_limit),
        "customer_daily_order": today,
        "daily_customer_type": customer_types(today, history, day),
        "cohort_retention": cohort_retention(today, history, day),
        "customer_rfm": customer_rfm(today, history, day),
    }
