"""The shop's catalogue and customers, derived from the seed alone (no I/O).

Products sit in three-level categories ("electronics/audio/headphones") with prices drawn
log-uniformly from the category's range and ending in .99; popularity follows a Zipf law.
Customers have a country (and so a currency), a browser cookie, an activity weight with a heavy
tail, and the day they joined: on a given day only customers who have joined can visit, so new
customers keep arriving and cohorts form.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import itertools
import math
import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple

# (category path, lowest and highest price in EUR, nouns of the products in it)
CATEGORIES: Tuple[Tuple[str, float, float, Tuple[str, ...]], ...] = (
    ("electronics/audio/headphones", 19, 349, ("Headphones", "Earbuds", "Headset")),
    ("electronics/audio/speakers", 29, 499, ("Speaker", "Soundbar", "Smart Speaker")),
    ("electronics/computers/laptops", 399, 2499, ("Laptop", "Ultrabook", "Notebook")),
    ("electronics/computers/accessories", 9, 129, ("Mouse", "Keyboard", "USB-C Hub", "Webcam")),
    ("electronics/phones/smartphones", 149, 1299, ("Smartphone", "Phone")),
    ("electronics/phones/cases", 9, 49, ("Phone Case", "Screen Protector")),
    ("home/kitchen/cookware", 15, 249, ("Frying Pan", "Saucepan", "Dutch Oven", "Knife Set")),
    ("home/kitchen/appliances", 29, 599, ("Coffee Machine", "Kettle", "Blender", "Toaster")),
    ("home/furniture/chairs", 49, 699, ("Office Chair", "Armchair", "Stool")),
    ("home/decor/lighting", 12, 199, ("Desk Lamp", "Floor Lamp", "Pendant Light")),
    ("fashion/men/shoes", 39, 229, ("Sneakers", "Boots", "Loafers")),
    ("fashion/women/dresses", 25, 299, ("Dress", "Maxi Dress", "Summer Dress")),
    ("fashion/accessories/bags", 19, 399, ("Backpack", "Tote Bag", "Wallet")),
    ("sports/outdoor/camping", 12, 499, ("Tent", "Sleeping Bag", "Camping Stove")),
    ("sports/fitness/equipment", 9, 899, ("Yoga Mat", "Dumbbells", "Rowing Machine")),
    ("books/fiction/novels", 6, 29, ("Novel", "Thriller", "Short Stories")),
    ("books/nonfiction/cooking", 12, 49, ("Cookbook", "Baking Book")),
    ("toys/games/board-games", 12, 89, ("Board Game", "Card Game", "Puzzle")),
    ("beauty/skincare/creams", 7, 89, ("Face Cream", "Serum", "Sunscreen")),
)
BRANDS = ("Nordlicht", "Acme", "Bluefin", "Kestrel", "Verano", "Atlas", "Lumen", "Orbit", "Juniper",
          "Halcyon", "Mistral", "Tundra", "Solace", "Quarry", "Vireo")
ADJECTIVES = ("Pro", "Lite", "Classic", "Eco", "Max", "Mini", "Plus", "Air", "Studio", "Travel")

# Country of a customer (weight), and the currency the shop charges there.
COUNTRIES: Tuple[Tuple[str, float], ...] = (
    ("DE", 30), ("FR", 15), ("GB", 12), ("ES", 10), ("IT", 10), ("NL", 8), ("AT", 5), ("BE", 5), ("PL", 5),
)
GBP_PER_EUR = 0.86
# Customers join between this many days before and after EPOCH (uniformly by index).
EPOCH = dt.date(2026, 1, 1)
JOIN_SPREAD_BEFORE_DAYS = 120
JOIN_SPREAD_AFTER_DAYS = 365


def currency_of(country: str) -> str:
    return "GBP" if country == "GB" else "EUR"


def stable_seed(*parts) -> int:
    """A 64-bit seed from any values: stable across processes and Python versions (unlike hash())."""
    text = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


_UUID_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID_SET = (0x8000 << 48) | (0x4000 << 64)


def uuid_from(rng: random.Random) -> str:
    """A random (version 4) UUID from `rng`: the same text as str(uuid.UUID(int=bits, version=4)),
    without building the object (ids are the generator's most frequent call)."""
    digits = "%032x" % ((rng.getrandbits(128) & _UUID_CLEAR) | _UUID_SET)
    return "%s-%s-%s-%s-%s" % (digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:])


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    price_eur_minor: int

    def price_minor(self, currency: str) -> int:
        """The list price in `currency`, ending in 99 minor units."""
        if currency == "EUR":
            return self.price_eur_minor
        converted = self.price_eur_minor * GBP_PER_EUR
        return max(99, int(converted // 100) * 100 + 99)


@dataclass(frozen=True)
class Customer:
    user_id: str
    anonymous_id: str
    country: str
    joined: dt.date
    activity: float

    @property
    def currency(self) -> str:
        return currency_of(self.country)


class Catalogue:
    """Products and their popularity; `pick(rng)` draws a product, popular ones more often."""

    def __init__(self, seed: int, size: int):
        rng = random.Random(stable_seed(seed, "catalogue"))
        products: List[Product] = []
        for index in range(size):
            path, low, high, nouns = CATEGORIES[index % len(CATEGORIES)] if index < len(CATEGORIES) else rng.choice(CATEGORIES)
            euros = math.exp(rng.uniform(math.log(low), math.log(high)))
            price = max(1, int(euros)) * 100 - 1  # x.99
            name = "%s %s %s" % (rng.choice(BRANDS), rng.choice(nouns), rng.choice(ADJECTIVES))
            products.append(Product("SKU-%05d" % (index + 1), name, path, price))
        self.products: Tuple[Product, ...] = tuple(products)
        ranks = list(range(1, size + 1))
        rng.shuffle(ranks)
        self._cumulative = list(itertools.accumulate(1.0 / rank ** 1.1 for rank in ranks))
        self.by_category = {}
        for product in self.products:
            self.by_category.setdefault(product.category, []).append(product)
        self.categories: Tuple[str, ...] = tuple(sorted(self.by_category))

    def pick(self, rng: random.Random) -> Product:
        return self.products[bisect.bisect_left(self._cumulative, rng.random() * self._cumulative[-1])]

    def pick_in(self, rng: random.Random, category: str) -> Product:
        return rng.choice(self.by_category[category])


class Customers:
    """The registered customers; `pick(rng, day)` draws one who has joined by `day`, by activity."""

    def __init__(self, seed: int, size: int):
        rng = random.Random(stable_seed(seed, "customers"))
        countries = [code for code, _ in COUNTRIES]
        weights = list(itertools.accumulate(weight for _, weight in COUNTRIES))
        span = JOIN_SPREAD_BEFORE_DAYS + JOIN_SPREAD_AFTER_DAYS
        customers = []
        for index in range(size):
            joined = EPOCH + dt.timedelta(days=index * span // size - JOIN_SPREAD_BEFORE_DAYS)
            customers.append(Customer(
                user_id="user-%06d" % (index + 1),
                anonymous_id=uuid_from(rng),
                country=countries[bisect.bisect_left(weights, rng.random() * weights[-1])],
                joined=joined,
                activity=rng.lognormvariate(0.0, 1.0),
            ))
        # Ordered by join day (the index order), so those joined by a day are a prefix.
        self.customers: Tuple[Customer, ...] = tuple(customers)
        self._joined = [customer.joined for customer in customers]
        self._cumulative = list(itertools.accumulate(customer.activity for customer in customers))

    def joined_by(self, day: dt.date) -> int:
        """How many customers have joined on or before `day` (at least one: the first)."""
        return max(1, bisect.bisect_right(self._joined, day))

    def pick(self, rng: random.Random, day: dt.date) -> Customer:
        count = self.joined_by(day)
        total = self._cumulative[count - 1]
        return self.customers[min(count - 1, bisect.bisect_left(self._cumulative, rng.random() * total, 0, count))]


def search_terms(product: Product) -> Sequence[str]:
    """Queries a visitor looking for `product` might type (some with typos)."""
    brand, noun = product.name.split(" ", 1)[0], product.name.split(" ")[1]
    leaf = product.category.rsplit("/", 1)[1].replace("-", " ")
    return (noun.lower(), "%s %s" % (brand.lower(), noun.lower()), leaf, noun.lower()[:-1] + "s", brand.lower())
