"""The behaviour model of emulated shop visitors (pure: a seeded random walk, no I/O, no clock).

A `Visitor` is one emulated browser tab. Each `step(now)` returns the next event as a JSON object
of the gateway protocol (`protocol.py`) and how long the visitor waits before the next one, in
model seconds (the emulator scales them to the requested rate).

Behaviour: a visit (session) opens with a landing page view, then page and product views,
clicks, scrolls and searches; products are put into and taken out of the cart; a checkout
needs a non-empty cart and a purchase needs a checkout of that cart in the same session. A
session ends after a while and the visitor idles; most come back as the same browser (same
`anonymous_id`, same `user_id` when signed in: a returning user), the rest are replaced by a new
visitor. Some events are sent late: their `client_time` lies up to `max_lateness_seconds`
behind the visitor's clock, as if buffered offline, so they arrive out of order.

Invariants (tested in model_test.py):
- `session_id` stays the same from a session's first event to its last;
- a purchase follows an add-to-cart and a checkout in the same session;
- `client_time` never goes backwards for a visitor, except on events marked `late`;
- every event is valid for `protocol.parse_event`.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Optional

# Mean of Visitor.step().wait over a long run, in model seconds (checked by model_test.py); the
# emulator divides by it to turn a target rate into a time scale.
MEAN_WAIT = 1.5

THINK_MEAN = 1.0  # between two events of a session
IDLE_RANGE = (3.0, 12.0)  # between two sessions
END_SESSION_PROBABILITY = 0.07
RETURN_PROBABILITY = 0.7
SIGNED_IN_PROBABILITY = 0.4

CATEGORIES = ("shoes/running", "shoes/trail", "apparel/jackets", "apparel/shirts", "gear/watches", "gear/bottles")
PRODUCTS = tuple(
    ("sku-%03d" % n, CATEGORIES[n % len(CATEGORIES)], 999 + (n * 737) % 15000) for n in range(60)
)
SEARCHES = ("running shoes", "trail shoes", "rain jacket", "gps watch", "water bottle", "merino shirt", "sale")
SITE = "https://shop.example"
DEVICES = (
    # weight, category, os, browser, version, width, height, user agent
    (55, "desktop", "Linux", "Firefox", "128.0", 1920, 1080,
     "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (20, "mobile", "Android", "Chrome", "126.0", 412, 915,
     "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36"),
    (17, "mobile", "iOS", "Safari", "17.5", 390, 844,
     "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Mobile Safari/604.1"),
    (6, "tablet", "iPadOS", "Safari", "17.5", 820, 1180,
     "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Version/17.5 Mobile Safari/604.1"),
    (2, "bot", "Linux", "Crawler", "2.1", 0, 0, "ShopCrawler/2.1 (+https://crawler.example/bot)"),
)
LOCALES = ("de-DE", "en-GB", "en-US", "fr-FR", "nl-NL")


@dataclasses.dataclass(frozen=True)
class Step:
    """One emulated event and the visitor's pause before the next."""

    message: dict[str, Any]  # a protocol event object
    wait: float  # model seconds
    late: bool  # client_time deliberately behind the visitor's clock
    new_session: bool  # first event of a session


@dataclasses.dataclass
class _Session:
    session_id: str
    cart: dict  # sku -> quantity
    checkout_id: Optional[str] = None
    page: tuple = ("home", "/")  # (kind, path)
    referrer: str = ""


class Visitor:
    """One emulated browser; `step(now)` is deterministic given (seed, index, run_id) and the `now`s."""

    def __init__(self, index: int, seed: int, run_id: str, late_fraction: float = 0.02,
                 max_lateness_seconds: float = 120.0):
        self.index = index
        self.run_id = run_id
        self.late_fraction = late_fraction
        self.max_lateness_seconds = max_lateness_seconds
        self._rng = random.Random("%d/%d" % (seed, index))
        self._sequence = 0
        self._visits = 0
        self._last_client_ms = 0
        self._session: Optional[_Session] = None
        self._new_visitor()

    # --- identity --------------------------------------------------------------------------

    def _new_visitor(self) -> None:
        rng = self._rng
        self._generation = getattr(self, "_generation", -1) + 1
        self.anonymous_id = "anon-%s-%d-%d-%08x" % (self.run_id, self.index, self._generation, rng.getrandbits(32))
        self.user_id = ("user-%05d" % rng.randrange(100_000)) if rng.random() < SIGNED_IN_PROBABILITY else ""
        weights = [d[0] for d in DEVICES]
        _, category, os_name, browser, version, width, height, agent = rng.choices(DEVICES, weights)[0]
        self.device = {"category": category, "os_name": os_name, "browser_name": browser, "browser_version": version,
                       "screen_width_px": width, "screen_height_px": height, "locale": rng.choice(LOCALES)}
        self.user_agent = agent

    # --- the walk --------------------------------------------------------------------------

    def step(self, now: float) -> Step:
        """The next event at wall-clock `now` (seconds since the epoch, as the emulator reads it)."""
        rng = self._rng
        new_session = self._session is None
        if new_session:
            self._visits += 1
            self._session = _Session(session_id="s-%s-%d-%d" % (self.run_id, self.index, self._visits), cart={})
            event_type, properties = self._landing()
        else:
            event_type, properties = self._next_action()
        session = self._session
        client_ms = max(int(now * 1000), self._last_client_ms + 1)
        self._last_client_ms = client_ms
        late = rng.random() < self.late_fraction
        if late:
            client_ms -= int(rng.uniform(1.0, self.max_lateness_seconds) * 1000)
        self._sequence += 1
        kind, path = session.page
        message = {
            "type": "event",
            "event_id": "ev-%s-%d-%d" % (self.run_id, self.index, self._sequence),
            "event_type": event_type,
            "session_id": session.session_id,
            "anonymous_id": self.anonymous_id,
            "client_time": client_ms,
            "page": {"url": SITE + path, "path": path.split("?")[0], "title": kind.replace("_", " ").title(),
                     "referrer_url": session.referrer},
            "device": dict(self.device),
            "user_agent": self.user_agent,
        }
        if self.user_id:
            message["user_id"] = self.user_id
        if properties is not None:
            message["properties"] = properties
        if rng.random() < 0.2:
            message["attributes"] = {"ab.variant": rng.choice("AB")}

        ends = (not new_session and event_type != "checkout" and rng.random() < END_SESSION_PROBABILITY)
        if ends:
            self._session = None
            wait = rng.uniform(*IDLE_RANGE)
            if rng.random() >= RETURN_PROBABILITY:
                self._new_visitor()
        else:
            wait = rng.expovariate(1.0 / THINK_MEAN)
        return Step(message=message, wait=wait, late=late, new_session=new_session)

    def _go(self, kind: str, path: str) -> None:
        session = self._session
        session.referrer = SITE + session.page[1]
        session.page = (kind, path)

    def _landing(self):
        rng = self._rng
        choice = rng.random()
        self._session.referrer = rng.choice(("", "https://search.example/?q=shop", "https://social.example/post/1"))
        if choice < 0.5:
            self._session.page = ("home", "/")
        elif choice < 0.8:
            self._session.page = ("category", "/c/" + rng.choice(CATEGORIES))
        else:
            sku, _, _ = rng.choice(PRODUCTS)
            self._session.page = ("product", "/p/" + sku)
        return "page_view", None

    def _next_action(self):
        rng = self._rng
        session = self._session
        kind = session.page[0]
        if session.checkout_id is not None:
            # On the checkout page: most pay, some go back to shopping (the checkout lapses).
            if rng.random() < 0.7:
                return self._purchase()
            session.checkout_id = None
            self._go("cart", "/cart")
            return "page_view", None
        options = [("page_view", 14), ("product_view", 22), ("click", 14), ("scroll", 14), ("search", 9)]
        if kind == "product":
            options.append(("add_to_cart", 16))
        if session.cart:
            options += [("remove_from_cart", 3), ("checkout", 8)]
        action = rng.choices([o[0] for o in options], [o[1] for o in options])[0]
        return getattr(self, "_" + action)()

    def _page_view(self):
        rng = self._rng
        if rng.random() < 0.5:
            self._go("category", "/c/" + rng.choice(CATEGORIES))
        else:
            self._go("home", "/")
        return "page_view", None

    def _product_view(self):
        sku, category, price = self._rng.choice(PRODUCTS)
        self._go("product", "/p/" + sku)
        return "product_view", {"product_id": sku, "category": category,
                                "price": {"currency_code": "EUR", "amount_minor": price}}

    def _click(self):
        rng = self._rng
        element = rng.choice(("nav-home", "nav-cart", "banner", "filter-size", "filter-colour", "gallery-next"))
        return "click", {"element_id": element, "element_text": element.replace("-", " ").title()}

    def _scroll(self):
        return "scroll", {"depth_percent": self._rng.randrange(0, 101)}

    def _search(self):
        rng = self._rng
        query = rng.choice(SEARCHES)
        self._go("search", "/search?q=" + query.replace(" ", "+"))
        return "search", {"query": query, "result_count": rng.randrange(0, 60)}

    def _add_to_cart(self):
        sku = self._session.page[1].rsplit("/", 1)[1]
        _, category, price = PRODUCTS[int(sku.split("-")[1])]
        quantity = self._rng.choice((1, 1, 1, 2, 3))
        self._session.cart[sku] = self._session.cart.get(sku, 0) + quantity
        return "add_to_cart", {"product_id": sku, "category": category, "quantity": quantity,
                               "unit_price": {"currency_code": "EUR", "amount_minor": price}}

    def _remove_from_cart(self):
        cart = self._session.cart
        sku = self._rng.choice(sorted(cart))
        _, category, price = PRODUCTS[int(sku.split("-")[1])]
        quantity = cart.pop(sku)
        return "remove_from_cart", {"product_id": sku, "category": category, "quantity": quantity,
                                    "unit_price": {"currency_code": "EUR", "amount_minor": price}}

    def _checkout(self):
        session = self._session
        session.checkout_id = "co-%s-%d-%d" % (self.run_id, self.index, self._sequence + 1)
        self._go("checkout", "/checkout")
        return "checkout", {"checkout_id": session.checkout_id, "item_count": _items(session.cart),
                            "cart_total": {"currency_code": "EUR", "amount_minor": _total(session.cart)}}

    def _purchase(self):
        session = self._session
        order_id = "order-%s-%d-%d" % (self.run_id, self.index, self._sequence + 1)
        properties = {"order_id": order_id, "item_count": _items(session.cart),
                      "order_total": {"currency_code": "EUR", "amount_minor": _total(session.cart)}}
        session.cart = {}
        session.checkout_id = None
        self._go("order", "/order/" + order_id)
        return "purchase", properties


def _items(cart: dict) -> int:
    return sum(cart.values())


def _total(cart: dict) -> int:
    return sum(PRODUCTS[int(sku.split("-")[1])][2] * quantity for sku, quantity in cart.items())
