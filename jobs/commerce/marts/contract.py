"""The raw line contract the job validates against: CommerceEvent in protobuf's JSON mapping.

Plain Python (no pyspark, no protobuf) so both sides can import it: the job turns it into a
Spark schema, and `contract_test` (core set) checks it field by field against the generated
descriptor of proto/datapipelines/commerce/v1/commerce_event.proto, so a contract change that
the job does not follow fails the build.

Every scalar is read as a string: protobuf's JSON mapping writes int64 as strings and accepts
numbers or strings for every integer, so the job casts after reading and rejects what does not
cast. Field names are the JSON names protobuf's printer writes (lowerCamelCase).
"""

STRING = "string"

PRODUCT_REF = {"productId": STRING, "productName": STRING, "category": STRING}
MONEY = {"currencyCode": STRING, "amountMinor": STRING}
ORDER_LINE = {"product": PRODUCT_REF, "quantity": STRING, "unitPrice": MONEY, "lineTotal": MONEY}

# oneof payload: JSON name -> (event type as the job names it, message fields)
PAYLOADS = {
    "pageView": ("page_view", {"pageUrl": STRING, "pagePath": STRING, "pageTitle": STRING, "referrerUrl": STRING}),
    "productView": ("product_view", {"product": PRODUCT_REF, "price": MONEY}),
    "search": ("search", {"query": STRING, "resultCount": STRING, "categoryFilter": STRING}),
    "addToCart": ("add_to_cart", {"cartId": STRING, "product": PRODUCT_REF, "quantity": STRING, "unitPrice": MONEY}),
    "removeFromCart": ("remove_from_cart",
                       {"cartId": STRING, "product": PRODUCT_REF, "quantity": STRING, "unitPrice": MONEY}),
    "checkoutStarted": ("checkout_started",
                        {"checkoutId": STRING, "cartId": STRING, "itemCount": STRING, "cartTotal": MONEY}),
    "orderPlaced": ("order_placed", {
        "orderId": STRING, "checkoutId": STRING, "lines": [ORDER_LINE], "subtotal": MONEY, "discount": MONEY,
        "shipping": MONEY, "tax": MONEY, "total": MONEY, "couponCode": STRING,
    }),
    "payment": ("payment", {
        "paymentId": STRING, "orderId": STRING, "amount": MONEY, "method": STRING, "status": STRING,
        "failureReason": STRING,
    }),
    "refund": ("refund", {
        "refundId": STRING, "orderId": STRING, "paymentId": STRING, "amount": MONEY, "lines": [ORDER_LINE],
        "reason": STRING,
    }),
}

COMMON = {
    "eventId": STRING,
    "eventTime": STRING,
    "userId": STRING,
    "sessionId": STRING,
    "anonymousId": STRING,
    "countryCode": STRING,
}

# The whole CommerceEvent: common fields plus every payload field of the oneof.
COMMERCE_EVENT = dict(COMMON, **{name: fields for name, (_, fields) in PAYLOADS.items()})

# Enum value names of the mart contract (mart.proto, funnel.proto), by number.
FUNNEL_STAGES = {
    1: "FUNNEL_STAGE_VISIT",
    2: "FUNNEL_STAGE_PRODUCT_VIEW",
    3: "FUNNEL_STAGE_CART",
    4: "FUNNEL_STAGE_CHECKOUT",
    5: "FUNNEL_STAGE_PURCHASE",
}
COHORT_PERIODS = {1: "COHORT_PERIOD_DAY", 2: "COHORT_PERIOD_WEEK", 3: "COHORT_PERIOD_MONTH"}
RFM_SEGMENTS = {
    1: "RFM_SEGMENT_CHAMPION",
    2: "RFM_SEGMENT_LOYAL",
    3: "RFM_SEGMENT_POTENTIAL_LOYALIST",
    4: "RFM_SEGMENT_NEW",
    5: "RFM_SEGMENT_AT_RISK",
    6: "RFM_SEGMENT_HIBERNATING",
    7: "RFM_SEGMENT_LOST",
}
PAYMENT_STATUSES = ("PAYMENT_STATUS_AUTHORIZED", "PAYMENT_STATUS_CAPTURED", "PAYMENT_STATUS_FAILED")
