"""The shop's visitors and what they do on one day, as JSON lines; free of any I/O.

`DayGenerator(config, day).lines()` yields every line of the day's partition in order: valid
events in the protobuf JSON mapping of `datapipelines.commerce.v1.CommerceEvent` (camelCase
names, int64 as strings, RFC 3339 times, defaults omitted: exactly what `json_format` prints),
exact duplicates of some of them, and bad lines of five kinds.

How a day is made, so that each day depends only on the settings and its date (re-running one
day gives the same bytes as that day in a longer run):
- a day has S sessions (S calibrated from the settings so the day has about `events_per_day`
  lines); session i starts at a stratified, diurnally weighted time, so starts are in order;
- the kind of session i (crawler, anonymous, signed-in) and how far it goes (browse, cart,
  checkout, purchase) come from the day's plan stream; everything else from the session's own
  random stream, so any one session can be regenerated alone;
- purchases plan their refunds (0-5 days later) when the order is placed, from a stream of
  their own; the refunds of day D for orders of day D-k are found by regenerating only the
  refunded purchase sessions of day D-k;
- the sessions of a day are cut into blocks, one per part file, each with its own random
  streams, so blocks can be generated in parallel and still give the same bytes.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from services.shop_simulator.catalogue import (
    COUNTRIES,
    Catalogue,
    Customer,
    Customers,
    Product,
    currency_of,
    search_terms,
    stable_seed,
    uuid_from,
)
from services.shop_simulator.config import ShopConfig

DAY_MS = 86_400_000
MAX_REFUND_DELAY_DAYS = 5

VALID = "valid"
DUPLICATE = "duplicate"
MALFORMED = "malformed_json"
TRUNCATED = "truncated"
NON_UTF8 = "non_utf8"
UNKNOWN_TYPE = "unknown_event_type"
NEGATIVE_PRICE = "negative_price"
BAD_KINDS = (MALFORMED, TRUNCATED, NON_UTF8, UNKNOWN_TYPE, NEGATIVE_PRICE)

# Session kinds and how far a human session goes.
BOT, ANONYMOUS, SIGNED_IN = "bot", "anonymous", "signed_in"
BROWSE, CART, CHECKOUT, PURCHASE = 1, 2, 3, 4

# Visits per hour of the (UTC) day, relative: quiet nights, a lunch bump, a busy evening.
HOURLY_WEIGHTS = (1.5, 1.0, 0.7, 0.5, 0.5, 0.7, 1.5, 2.5, 3.5, 4.0, 4.2, 4.5,
                  5.0, 4.8, 4.5, 4.5, 4.8, 5.5, 6.5, 7.5, 8.0, 7.0, 5.0, 3.0)
_HOURLY_CUMULATIVE = list(itertools.accumulate(HOURLY_WEIGHTS))

ANONYMOUS_SHARE = 0.4  # of human sessions
# (intent, cumulative probability) for signed-in and anonymous sessions. Only signed-in
# customers can pay; anonymous carts and checkouts are abandoned.
SIGNED_IN_INTENT = ((PURCHASE, 0.07), (CHECKOUT, 0.11), (CART, 0.23), (BROWSE, 1.0))
ANONYMOUS_INTENT = ((CHECKOUT, 0.01), (CART, 0.09), (BROWSE, 1.0))
BOT_MEAN_EVENTS = 80
REFUND_PROBABILITY = 0.08  # of purchases (refunded only when the payment was captured)

VAT_PERCENT = {"DE": 19, "FR": 20, "GB": 20, "ES": 21, "IT": 22, "NL": 21, "AT": 20, "BE": 21, "PL": 23}
COUPONS = (("WELCOME10", 10), ("SPRING5", 5), ("LOYAL15", 15))
PAYMENT_METHODS = (("PAYMENT_METHOD_CARD", 55), ("PAYMENT_METHOD_WALLET", 25), ("PAYMENT_METHOD_BANK_TRANSFER", 8),
                   ("PAYMENT_METHOD_INVOICE", 7), ("PAYMENT_METHOD_GIFT_CARD", 5))
FAILURE_REASONS = ("card_declined", "insufficient_funds", "authentication_failed", "provider_timeout")
REFUND_REASONS = ("damaged", "wrong_size", "not_as_described", "changed_mind", "arrived_late")
REFERRERS = ("", "", "https://www.google.com/", "https://duckduckgo.com/", "https://newsletter.example-shop.eu/",
             "https://www.instagram.com/", "https://www.bing.com/")
SITE = "https://shop.example.eu"
# Queries with non-ASCII letters: valid UTF-8 that a reader must keep intact.
LOCAL_QUERIES = ("kopfhörer", "café lamp", "größe 42", "chaussures été", "sacs à dos", "żelazko")


# -- the protobuf JSON mapping ----------------------------------------------------------------

def timestamp(ms: int) -> str:
    """RFC 3339 in UTC as json_format prints a Timestamp with millisecond precision."""
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return base + (".%03dZ" % (ms % 1000) if ms % 1000 else "Z")


def money(currency: str, minor: int) -> dict:
    value = {"currencyCode": currency}
    if minor:
        value["amountMinor"] = str(minor)
    return value


def product_ref(product: Product) -> dict:
    return {"productId": product.product_id, "productName": product.name, "category": product.category}


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def encode(event: dict) -> bytes:
    return _ENCODER.encode(event).encode("utf-8")


@dataclass(frozen=True)
class Line:
    """One line of a partition (without the newline) and what it is (VALID, DUPLICATE or a bad kind)."""

    data: bytes
    kind: str


@dataclass
class OrderLine:
    product: Product
    quantity: int
    unit_minor: int
    total_minor: int

    def as_json(self, currency: str) -> dict:
        line = {"product": product_ref(self.product), "quantity": self.quantity,
                "unitPrice": money(currency, self.unit_minor), "lineTotal": money(currency, self.total_minor)}
        return line


@dataclass
class PlannedRefund:
    delay_days: int
    refund_id: str
    amount_minor: int
    lines: List[OrderLine]
    reason: str
    time_of_day_ms: int  # when on its day (for delay 0: an absolute time, see Session)


@dataclass
class Session:
    """What one session produced: its events (dicts) and, for a purchase, the order's refunds."""

    events: List[dict]
    refunds: List[Tuple[int, dict]] = field(default_factory=list)  # (delay_days, refund event)


class ShopModel:
    """The catalogue, customers and calibration shared by every day of one configuration."""

    def __init__(self, config: ShopConfig):
        self.config = config
        self.catalogue = Catalogue(config.seed, config.products)
        self.customers = Customers(config.seed, config.users)
        human_mean, self._bot_probability = self._calibrate()
        noise = 1.0 + self.bad_probability + config.duplicate_rate
        mean = (1 - self._bot_probability) * human_mean + self._bot_probability * BOT_MEAN_EVENTS
        self.sessions_per_day = max(1, round(config.events_per_day / (mean * noise)))
        self._refund_cache: Dict[dt.date, List[Tuple[int, dict]]] = {}

    @property
    def bad_probability(self) -> float:
        """Chance of a bad line after each valid event, so that bad / all lines = bad_line_rate."""
        rate = self.config.bad_line_rate
        return rate / (1.0 - rate) * (1.0 + self.config.duplicate_rate)

    def _calibrate(self) -> Tuple[float, float]:
        """Mean events of a human session (measured), and the share of crawler sessions that makes
        crawlers produce `bot_event_share` of the events."""
        rng = random.Random(stable_seed(self.config.seed, "calibration"))
        day = dt.date(2026, 6, 1)
        total = 0
        samples = 4000
        for index in range(samples):
            kind, intent = _human_kind(rng.random(), rng.random())
            session = generate_session(self, day, index, kind, intent, 12 * 3_600_000, rng_seed=rng.getrandbits(64))
            total += len(session.events)
        human_mean = total / samples
        share = self.config.bot_event_share
        # p*B / (p*B + (1-p)*H) = share  =>  p = share*H / (B - share*(B - H))
        bot_probability = share * human_mean / (BOT_MEAN_EVENTS - share * (BOT_MEAN_EVENTS - human_mean))
        return human_mean, bot_probability

    def refunds_from(self, day: dt.date) -> List[Tuple[int, dict]]:
        """(delay in days, refund event) of every refund of the orders placed on `day`.

        Only purchases whose refund stream says "refund" are regenerated. Cached: consecutive days
        share most of their look-back."""
        cached = self._refund_cache.get(day)
        if cached is None:
            cached = []
            for index, start, kind, intent in self.plan(day):
                if intent != PURCHASE or refund_stream(self.config.seed, day, index).random() >= REFUND_PROBABILITY:
                    continue
                session = generate_session(self, day, index, kind, intent, start)
                cached.extend(session.refunds)
            if len(self._refund_cache) >= 2 * (MAX_REFUND_DELAY_DAYS + 1):
                self._refund_cache.pop(next(iter(self._refund_cache)))
            self._refund_cache[day] = cached
        return cached

    @property
    def parts_per_day(self) -> int:
        """A day's sessions are cut into this many blocks, one part file each (independent of workers)."""
        return max(1, math.ceil(self.config.events_per_day / self.config.part_lines))

    def block_range(self, block: int) -> Tuple[int, int]:
        """The session indexes [first, end) of a block."""
        count, parts = self.sessions_per_day, self.parts_per_day
        return block * count // parts, (block + 1) * count // parts

    def block_start_ms(self, day: dt.date, block: int) -> int:
        """No session of `block` starts earlier; every session of the next block starts at or after
        the next block's value (the day's end for the last)."""
        if block >= self.parts_per_day:
            return _midnight_ms(day) + DAY_MS
        first, _ = self.block_range(block)
        return _midnight_ms(day) + _diurnal_offset_ms(first / self.sessions_per_day)

    def plan(self, day: dt.date, block: Optional[int] = None) -> Iterator[Tuple[int, int, str, int]]:
        """(index, start ms since the epoch, kind, intent) of each session of `day` (or of one
        block of it), in start order. Each block has its own random stream."""
        midnight = _midnight_ms(day)
        count = self.sessions_per_day
        bot_probability = self._bot_probability
        blocks = range(self.parts_per_day) if block is None else (block,)
        for number in blocks:
            rng = random.Random(stable_seed(self.config.seed, day.isoformat(), "plan", number))
            first, end = self.block_range(number)
            for index in range(first, end):
                start = midnight + _diurnal_offset_ms((index + rng.random()) / count)
                kind_draw, intent_draw = rng.random(), rng.random()
                if kind_draw < bot_probability:
                    yield index, start, BOT, BROWSE
                else:
                    kind, intent = _human_kind((kind_draw - bot_probability) / (1 - bot_probability), intent_draw)
                    yield index, start, kind, intent


def _human_kind(kind_draw: float, intent_draw: float) -> Tuple[str, int]:
    kind = ANONYMOUS if kind_draw < ANONYMOUS_SHARE else SIGNED_IN
    table = ANONYMOUS_INTENT if kind == ANONYMOUS else SIGNED_IN_INTENT
    for intent, cumulative in table:
        if intent_draw < cumulative:
            return kind, intent
    return kind, BROWSE


def _midnight_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp()) * 1000


def _diurnal_offset_ms(fraction: float) -> int:
    """Inverse of the diurnal distribution: a time of day (ms) for a quantile in [0, 1)."""
    target = fraction * _HOURLY_CUMULATIVE[-1]
    hour = bisect.bisect_right(_HOURLY_CUMULATIVE, target)
    hour = min(hour, 23)
    below = _HOURLY_CUMULATIVE[hour - 1] if hour else 0.0
    within = (target - below) / HOURLY_WEIGHTS[hour]
    return int((hour + min(max(within, 0.0), 0.999999)) * 3_600_000)


def _weighted(rng: random.Random, table) -> str:
    total = sum(weight for _, weight in table)
    draw = rng.random() * total
    for value, weight in table:
        draw -= weight
        if draw < 0:
            return value
    return table[-1][0]


class _Builder:
    """Accumulates one session's events with a running clock."""

    def __init__(self, rng: random.Random, start_ms: int, user_id: str, session_id: str, anonymous_id: str,
                 country: str, bot: bool):
        self.rng = rng
        self.now = start_ms
        self.bot = bot
        self.envelope = {}
        if user_id:
            self.envelope["userId"] = user_id
        if session_id:
            self.envelope["sessionId"] = session_id
        self.envelope["anonymousId"] = anonymous_id
        self.envelope["countryCode"] = country
        self.events: List[dict] = []

    def tick(self) -> None:
        if self.bot:
            self.now += self.rng.randint(300, 2_500)
        else:
            self.now += int(min(self.rng.lognormvariate(9.9, 0.9), 600_000))  # median ~20 s, at most 10 min

    def emit(self, payload_name: str, payload: dict, advance: bool = True) -> dict:
        if advance and self.events:
            self.tick()
        event = {"eventId": uuid_from(self.rng), "eventTime": self.now}
        event.update(self.envelope)
        event[payload_name] = payload
        self.events.append(event)
        return event

    def page(self, path: str, title: str, referrer: str = "") -> None:
        payload = {"pageUrl": SITE + path, "pagePath": path.split("?", 1)[0], "pageTitle": title}
        if referrer:
            payload["referrerUrl"] = referrer
        self.emit("pageView", payload)


def generate_session(model: ShopModel, day: dt.date, index: int, kind: str, intent: int, start_ms: int,
                     rng_seed: Optional[int] = None) -> Session:
    """Session `index` of `day`: the same arguments always give the same events.

    Event times stay integer milliseconds in "eventTime" until `DayGenerator._emit` formats them.
    """
    config = model.config
    rng = random.Random(rng_seed if rng_seed is not None else stable_seed(config.seed, day.isoformat(), index))
    catalogue = model.catalogue
    customer: Optional[Customer] = model.customers.pick(rng, day) if kind == SIGNED_IN else None
    if customer is not None:
        country, anonymous_id = customer.country, customer.anonymous_id
    else:
        country = _weighted(rng, COUNTRIES)
        anonymous_id = uuid_from(rng)
    currency = currency_of(country)
    session_id = uuid_from(rng)
    build = _Builder(rng, start_ms, customer.user_id if customer else "", session_id, anonymous_id, country,
                     bot=kind == BOT)

    if kind == BOT:
        _crawl(build, catalogue, currency)
        return _finish(build, day, [])

    # Landing page, then a few product views with searches and category pages in between.
    landing_category = rng.choice(catalogue.categories)
    if rng.random() < 0.5:
        build.page("/", "Home", rng.choice(REFERRERS))
    else:
        build.page("/c/" + landing_category, landing_category.rsplit("/", 1)[1].title(), rng.choice(REFERRERS))
    viewed: List[Product] = []
    views = 1 + min(int(rng.expovariate(1 / 3.0)), 25)
    for _ in range(views):
        step = rng.random()
        if step < 0.25:
            product = catalogue.pick(rng)
            query = rng.choice(LOCAL_QUERIES) if rng.random() < 0.05 else rng.choice(search_terms(product))
            search = {"query": query, "resultCount": rng.randint(0, 120)}
            if rng.random() < 0.2:
                search["categoryFilter"] = product.category.split("/", 1)[0]
            if search["resultCount"] == 0:
                del search["resultCount"]
            build.emit("search", search)
        elif step < 0.4:
            category = rng.choice(catalogue.categories)
            build.page("/c/" + category, category.rsplit("/", 1)[1].title())
            product = catalogue.pick_in(rng, category)
        else:
            product = catalogue.pick_in(rng, landing_category) if rng.random() < 0.3 else catalogue.pick(rng)
        build.emit("productView", {"product": product_ref(product), "price": money(currency, product.price_minor(currency))})
        viewed.append(product)

    if intent == BROWSE:
        return _finish(build, day, [])

    # The cart: one to three of the viewed products, sometimes one taken out again.
    cart_id = uuid_from(rng)
    cart: Dict[str, List] = {}  # product id -> [product, quantity]
    for product in rng.sample(viewed, min(len(viewed), 1 + int(rng.random() < 0.35) + int(rng.random() < 0.15))):
        quantity = 1 if rng.random() < 0.8 else rng.randint(2, 3)
        build.emit("addToCart", {"cartId": cart_id, "product": product_ref(product), "quantity": quantity,
                                 "unitPrice": money(currency, product.price_minor(currency))})
        if product.product_id in cart:
            cart[product.product_id][1] += quantity
        else:
            cart[product.product_id] = [product, quantity]
    if len(cart) > 1 and rng.random() < 0.2:
        product, quantity = cart.pop(rng.choice(sorted(cart)))
        build.emit("removeFromCart", {"cartId": cart_id, "product": product_ref(product), "quantity": quantity,
                                      "unitPrice": money(currency, product.price_minor(currency))})
    build.page("/cart", "Your cart")
    if intent == CART:
        return _finish(build, day, [])

    lines = []
    for product_id in sorted(cart):
        product, quantity = cart[product_id]
        unit = product.price_minor(currency)
        gross = unit * quantity
        lines.append(OrderLine(product, quantity, unit, gross - (gross // 10 if rng.random() < 0.1 else 0)))
    subtotal = sum(line.total_minor for line in lines)
    checkout_id = uuid_from(rng)
    build.emit("checkoutStarted", {"checkoutId": checkout_id, "cartId": cart_id,
                                   "itemCount": sum(line.quantity for line in lines),
                                   "cartTotal": money(currency, subtotal)})
    build.page("/checkout", "Checkout")
    if intent == CHECKOUT or customer is None:
        return _finish(build, day, [])

    coupon, percent = (rng.choice(COUPONS) if rng.random() < 0.15 else ("", 0))
    discount = subtotal * percent // 100
    shipping = 0 if subtotal - discount >= 5_000 else (399 if currency == "GBP" else 499)
    tax = (subtotal - discount) * VAT_PERCENT[country] // 100
    total = subtotal - discount + shipping + tax
    order_id = uuid_from(rng)
    order = {"orderId": order_id, "checkoutId": checkout_id,
             "lines": [line.as_json(currency) for line in lines],
             "subtotal": money(currency, subtotal), "discount": money(currency, discount),
             "shipping": money(currency, shipping), "tax": money(currency, tax), "total": money(currency, total)}
    if coupon:
        order["couponCode"] = coupon
    build.emit("orderPlaced", order)

    captured_payment = _pay(build, order_id, currency, total)
    build.page("/order/%s/confirmation" % order_id, "Thank you for your order")
    refunds = []
    refund_rng = refund_stream(config.seed, day, index)
    if captured_payment and refund_rng.random() < REFUND_PROBABILITY:
        refunds = _plan_refunds(refund_rng, lines, shipping, total)
    return _finish(build, day, refunds, order_id=order_id, payment_id=captured_payment, currency=currency,
                   customer=customer)


def refund_stream(seed: int, day: dt.date, index: int) -> random.Random:
    """The random stream that decides a purchase's refunds. Its first draw says whether there are
    any, so the days after can find the refunded orders without regenerating every purchase."""
    return random.Random(stable_seed(seed, day.isoformat(), index, "refund"))


def _crawl(build: _Builder, catalogue: Catalogue, currency: str) -> None:
    rng = build.rng
    pages = max(10, min(int(rng.expovariate(1 / BOT_MEAN_EVENTS)), 400))
    build.page("/robots.txt", "robots")
    for _ in range(pages - 1):
        if rng.random() < 0.3:
            category = rng.choice(catalogue.categories)
            build.page("/c/%s?page=%d" % (category, rng.randint(1, 20)), category.rsplit("/", 1)[1].title())
        else:
            product = rng.choice(catalogue.products)  # crawlers walk the whole catalogue, not the best sellers
            build.emit("productView", {"product": product_ref(product),
                                       "price": money(currency, product.price_minor(currency))})


def _pay(build: _Builder, order_id: str, currency: str, total: int) -> str:
    """Payment events for an order; returns the captured payment's id, or "" if it stayed unpaid."""
    rng = build.rng
    outcome = rng.random()
    method = _weighted(rng, PAYMENT_METHODS)
    if outcome >= 0.88:
        failed = {"paymentId": uuid_from(rng), "orderId": order_id, "amount": money(currency, total),
                  "method": method, "status": "PAYMENT_STATUS_FAILED", "failureReason": rng.choice(FAILURE_REASONS)}
        build.emit("payment", failed)
        if outcome >= 0.96:
            return ""
        method = _weighted(rng, PAYMENT_METHODS)
    payment_id = uuid_from(rng)
    attempt = {"paymentId": payment_id, "orderId": order_id, "amount": money(currency, total), "method": method}
    build.emit("payment", dict(attempt, status="PAYMENT_STATUS_AUTHORIZED"))
    build.now += rng.randint(500, 8_000)
    build.emit("payment", dict(attempt, status="PAYMENT_STATUS_CAPTURED"), advance=False)
    return payment_id


def _plan_refunds(rng: random.Random, lines: List[OrderLine], shipping: int, total: int) -> List[PlannedRefund]:
    """One or two refunds of a captured order; together never more than the order total, and never
    more units of a line than were ordered."""

    def delay() -> int:
        return 0 if rng.random() < 0.15 else rng.randint(1, MAX_REFUND_DELAY_DAYS)

    kind = rng.random()
    if kind < 0.3:
        refunds = [PlannedRefund(delay(), uuid_from(rng), total, list(lines), rng.choice(REFUND_REASONS),
                                 rng.randrange(DAY_MS))]
    elif kind < 0.35 and shipping:
        refunds = [PlannedRefund(delay(), uuid_from(rng), shipping, [], "arrived_late", rng.randrange(DAY_MS))]
    else:
        refunds = []
        candidates = list(lines)
        rng.shuffle(candidates)
        first_delay = delay()
        for number, line in enumerate(candidates[:2]):
            if number == 1 and rng.random() >= 0.25:
                break
            quantity = rng.randint(1, line.quantity)
            amount = line.total_minor * quantity // line.quantity
            if amount <= 0:
                continue
            refund_line = OrderLine(line.product, quantity, line.unit_minor, amount)
            refunds.append(PlannedRefund(min(first_delay + number, MAX_REFUND_DELAY_DAYS), uuid_from(rng), amount, [refund_line],
                                         rng.choice(REFUND_REASONS), rng.randrange(DAY_MS)))
    assert sum(refund.amount_minor for refund in refunds) <= total
    return refunds


def _finish(build: _Builder, day: dt.date, refunds: List[PlannedRefund], order_id: str = "", payment_id: str = "",
            currency: str = "", customer: Optional[Customer] = None) -> Session:
    """Keep the session inside its day (shift it earlier if it would run past midnight), format
    the times, and turn the planned refunds into events."""
    events = build.events
    midnight = _midnight_ms(day)
    overrun = events[-1]["eventTime"] - (midnight + DAY_MS - 1)
    if overrun > 0:
        shift = min(overrun, events[0]["eventTime"] - midnight)
        for event in events:
            event["eventTime"] -= shift
        build.now -= shift
    session = Session(events=events)
    for refund in refunds:
        delay_days = refund.delay_days
        when = midnight + delay_days * DAY_MS + refund.time_of_day_ms
        if delay_days == 0:
            # Same day: between the payment and midnight, or tomorrow when the day is over.
            room = midnight + DAY_MS - 1 - build.now
            if room < 60_000:
                delay_days, when = 1, midnight + DAY_MS + refund.time_of_day_ms
            else:
                when = build.now + 60_000 + refund.time_of_day_ms % (room - 59_999)
        assert customer is not None
        payload = {"refundId": refund.refund_id, "orderId": order_id, "paymentId": payment_id,
                   "amount": money(currency, refund.amount_minor), "reason": refund.reason}
        if refund.lines:
            payload["lines"] = [line.as_json(currency) for line in refund.lines]
        # A back-office event: the customer's, but not part of a browsing session.
        event = {"eventId": refund.refund_id, "eventTime": when, "userId": customer.user_id,
                 "anonymousId": customer.anonymous_id, "countryCode": customer.country, "refund": payload}
        session.refunds.append((delay_days, event))
    return session


class DayGenerator:
    """Every line of one day's partition, block by block; `counts` tallies them by kind as they go.

    `refunds_due()` is computed once per day; `block_lines(block, refunds)` may then run for
    different blocks in different processes: a block's lines depend only on the settings, the
    day, the block and the refunds that fall into its time range.
    """

    def __init__(self, model: ShopModel, day: dt.date):
        self.model = model
        self.day = day
        self.counts: Dict[str, int] = {kind: 0 for kind in (VALID, DUPLICATE) + BAD_KINDS}
        self.event_types: Dict[str, int] = {}

    def refunds_due(self) -> List[dict]:
        """Refunds that happen today, for orders of today and of the previous MAX_REFUND_DELAY_DAYS
        days, ordered by time."""
        due = []
        for delay_days in range(0, MAX_REFUND_DELAY_DAYS + 1):
            earlier = self.day - dt.timedelta(days=delay_days)
            due.extend(dict(event) for days, event in self.model.refunds_from(earlier) if days == delay_days)
        return sorted(due, key=lambda event: (event["eventTime"], event["eventId"]))

    def refunds_of_block(self, refunds: List[dict], block: int) -> List[dict]:
        low, high = self.model.block_start_ms(self.day, block), self.model.block_start_ms(self.day, block + 1)
        if block == 0:
            low = -1
        return [event for event in refunds if low <= event["eventTime"] < high]

    def block_lines(self, block: int, refunds: List[dict]) -> Iterator[Line]:
        """The lines of one block: its sessions in start order, with `refunds` (those of this
        block's time range) merged in by time."""
        config = self.model.config
        noise = random.Random(stable_seed(config.seed, self.day.isoformat(), "noise", block))
        bad_probability = self.model.bad_probability
        duplicate_probability = config.duplicate_rate
        pending = [dict(event) for event in refunds]
        cursor = 0
        for index, start, kind, intent in self.model.plan(self.day, block):
            events = generate_session(self.model, self.day, index, kind, intent, start).events
            while cursor < len(pending) and pending[cursor]["eventTime"] <= events[0]["eventTime"]:
                yield from self._emit(pending[cursor], noise, 0.0, 0.0)
                cursor += 1
            for event in events:
                yield from self._emit(event, noise, bad_probability, duplicate_probability)
        for event in pending[cursor:]:
            yield from self._emit(event, noise, 0.0, 0.0)

    def lines(self) -> Iterator[Line]:
        """Every line of the day, block after block (what the parts hold, concatenated)."""
        refunds = self.refunds_due()
        for block in range(self.model.parts_per_day):
            yield from self.block_lines(block, self.refunds_of_block(refunds, block))

    def _emit(self, event: dict, noise: random.Random, bad_probability: float,
              duplicate_probability: float) -> Iterator[Line]:
        event["eventTime"] = timestamp(event["eventTime"])
        data = encode(event)
        self.counts[VALID] += 1
        payload_name = next(reversed(event))
        self.event_types[payload_name] = self.event_types.get(payload_name, 0) + 1
        yield Line(data, VALID)
        if duplicate_probability and noise.random() < duplicate_probability:
            self.counts[DUPLICATE] += 1
            yield Line(data, DUPLICATE)
        if bad_probability and noise.random() < bad_probability:
            kind = BAD_KINDS[noise.randrange(len(BAD_KINDS))]
            self.counts[kind] += 1
            yield Line(bad_line(kind, event, data, noise), kind)


def bad_line(kind: str, event: dict, data: bytes, rng: random.Random) -> bytes:
    """A bad line modelled on a valid `event` (with its own event id where it still has one)."""
    broken = dict(event)
    broken["eventId"] = uuid_from(rng)
    text = encode(broken)
    if kind == TRUNCATED:
        return text[: rng.randint(1, len(text) - 2)]
    if kind == MALFORMED:
        variant = rng.randrange(3)
        if variant == 0:
            return text[:-1] + b",}"  # trailing comma
        if variant == 1:
            return text.replace(b'"eventId":', b"eventId:", 1)  # unquoted key
        return text.replace(b'"', b"'")  # single quotes
    if kind == NON_UTF8:
        envelope = {key: value for key, value in broken.items() if key in ("eventId", "eventTime", "userId",
                                                                           "sessionId", "anonymousId", "countryCode")}
        if rng.random() < 0.5:
            envelope["search"] = {"query": "caf\u00e9 cr\u00e8me", "resultCount": 3}
            return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("latin-1")
        envelope["search"] = {"query": "lamp"}
        return encode(envelope).replace(b'"lamp"', b'"la\xffmp"')
    if kind == UNKNOWN_TYPE:
        envelope = {key: value for key, value in broken.items() if not isinstance(value, dict)}
        name, payload = rng.choice((("wishlistAdd", {"productId": "SKU-00001"}),
                                    ("couponApplied", {"couponCode": "WELCOME10"}),
                                    ("newsletterSignup", {"email": "someone@example.com"})))
        envelope[name] = payload
        return encode(envelope)
    if kind == NEGATIVE_PRICE:
        envelope = {key: value for key, value in broken.items() if not isinstance(value, dict)}
        product = {"productId": "SKU-00001", "productName": "Acme Mouse Pro", "category": "electronics/computers/accessories"}
        price = {"currencyCode": "EUR", "amountMinor": str(-rng.randint(1, 50_000))}
        if rng.random() < 0.5:
            envelope["productView"] = {"product": product, "price": price}
        else:
            envelope["addToCart"] = {"cartId": uuid_from(rng), "product": product, "quantity": 1, "unitPrice": price}
        return encode(envelope)
    raise ValueError("unknown bad line kind %r" % kind)
