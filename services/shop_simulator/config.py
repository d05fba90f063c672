"""Settings of the shop log generator: flags over environment over defaults, checked at start."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pathlib
from dataclasses import dataclass
from typing import Optional

DEFAULT_WEBHDFS_URL = "http://127.0.0.1:9870/webhdfs/v1"
DEFAULT_ROOT = "/raw/commerce/events"


@dataclass(frozen=True)
class ShopConfig:
    """What to generate and where to put it. The model uses only the first group of fields."""

    # The shop and its visitors (these decide the content; same values, same bytes).
    start_date: dt.date = dt.date(2026, 1, 1)
    days: int = 1
    users: int = 5_000
    products: int = 400
    events_per_day: int = 100_000
    seed: int = 7
    bad_line_rate: float = 0.005  # malformed, truncated, non-UTF-8, unknown type, negative price
    duplicate_rate: float = 0.001  # exact repeats of a valid line (at-least-once logging)
    bot_event_share: float = 0.05  # share of events that come from crawlers
    part_lines: int = 500_000  # lines per part file

    # Where the partitions go.
    webhdfs_url: str = DEFAULT_WEBHDFS_URL
    hdfs_user: str = ""
    output_dir: Optional[pathlib.Path] = None  # a local folder instead of HDFS
    root: str = DEFAULT_ROOT
    compress_level: int = 6
    workers: int = 1  # processes generating parts in parallel (never changes the bytes)
    extra_part: Optional[pathlib.Path] = None  # hand-made lines published as one more part of every day

    def __post_init__(self):
        problems = []
        if self.days < 1:
            problems.append(f"days must be at least 1, got {self.days}")
        if self.users < 1 or self.products < 10:
            problems.append(f"need users >= 1 and products >= 10 (users={self.users}, products={self.products})")
        if self.events_per_day < 100:
            problems.append(f"events-per-day must be at least 100, got {self.events_per_day}")
        if self.part_lines < 1:
            problems.append(f"part-lines must be at least 1, got {self.part_lines}")
        for name in ("bad_line_rate", "duplicate_rate", "bot_event_share"):
            value = getattr(self, name)
            if not 0 <= value < 0.5:
                problems.append(f"{name.replace('_', '-')} must be within 0..0.5, got {value}")
        if not self.root.startswith("/") or self.root.rstrip("/") == "":
            problems.append(f"root must be an absolute path below /, got {self.root!r}")
        if self.workers < 1:
            problems.append(f"workers must be at least 1, got {self.workers}")
        if self.extra_part is not None and not pathlib.Path(self.extra_part).is_file():
            problems.append(f"extra-part must be a readable file, got {str(self.extra_part)!r}")
        if not 0 <= self.compress_level <= 9:
            problems.append(f"compress-level must be 0..9, got {self.compress_level}")
        if problems:
            raise ValueError("invalid shop simulator settings: " + "; ".join(problems))

    @property
    def dates(self):
        return [self.start_date + dt.timedelta(days=n) for n in range(self.days)]


def _env(name: str, default, cast):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise SystemExit(f"environment variable {name}={raw!r} is not a valid {cast.__name__}") from None


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a date YYYY-MM-DD, got {text!r}") from None


def parse_args(argv=None) -> ShopConfig:
    d = ShopConfig()
    parser = argparse.ArgumentParser(
        prog="shop_simulator",
        description=(
            "Generates a web shop's event logs (catalogue, users and sessions, page and product views, "
            "searches, carts, checkouts, orders, payments, refunds, bots and a small rate of bad lines) "
            "in the protobuf JSON mapping of datapipelines.commerce.v1.CommerceEvent, and writes one "
            "daily partition <root>/dt=YYYY-MM-DD/part-NNNNN.jsonl.gz per day into HDFS over WebHDFS "
            "(or a local folder). A day is written to a staging folder, renamed into place (replacing "
            "an earlier run of the same day) and marked with _SUCCESS last. The same settings give "
            "the same bytes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--start-date", type=_date, default=_env("DP_SHOP_START_DATE", d.start_date, _date),
                        help="first day to generate, YYYY-MM-DD (env DP_SHOP_START_DATE)")
    parser.add_argument("--days", type=int, default=_env("DP_SHOP_DAYS", d.days, int),
                        help="number of consecutive days (env DP_SHOP_DAYS)")
    parser.add_argument("--users", type=int, default=_env("DP_SHOP_USERS", d.users, int),
                        help="registered customers in the population (env DP_SHOP_USERS)")
    parser.add_argument("--products", type=int, default=_env("DP_SHOP_PRODUCTS", d.products, int),
                        help="products in the catalogue (env DP_SHOP_PRODUCTS)")
    parser.add_argument("--events-per-day", type=int, default=_env("DP_SHOP_EVENTS_PER_DAY", d.events_per_day, int),
                        help="about this many lines per day, bad lines included (env DP_SHOP_EVENTS_PER_DAY)")
    parser.add_argument("--seed", type=int, default=_env("DP_SHOP_SEED", d.seed, int),
                        help="random seed: the same settings give the same bytes (env DP_SHOP_SEED)")
    parser.add_argument("--bad-line-rate", type=float, default=d.bad_line_rate,
                        help="share of lines that are bad: malformed or truncated JSON, non-UTF-8 bytes, "
                             "unknown event types, negative prices")
    parser.add_argument("--duplicate-rate", type=float, default=d.duplicate_rate,
                        help="share of valid events logged twice (same event_id): consumers deduplicate")
    parser.add_argument("--bot-event-share", type=float, default=d.bot_event_share,
                        help="share of events from crawler sessions")
    parser.add_argument("--part-lines", type=int, default=d.part_lines, help="lines per part file")
    parser.add_argument("--webhdfs-url", default=_env("DP_WEBHDFS_URL", d.webhdfs_url, str),
                        help="WebHDFS REST root of the NameNode (env DP_WEBHDFS_URL)")
    parser.add_argument("--hdfs-user", default=_env("DP_HDFS_USER", d.hdfs_user, str),
                        help="user.name for WebHDFS; empty = the NameNode's static user (env DP_HDFS_USER)")
    parser.add_argument("--output-dir", type=pathlib.Path,
                        default=_env("DP_SHOP_OUTPUT_DIR", None, pathlib.Path),
                        help="write into this local folder instead of HDFS (env DP_SHOP_OUTPUT_DIR)")
    parser.add_argument("--root", default=_env("DP_SHOP_ROOT", d.root, str),
                        help="folder of the dt=... partitions (env DP_SHOP_ROOT)")
    parser.add_argument("--compress-level", type=int, default=d.compress_level, help="gzip level 0..9")
    parser.add_argument("--workers", type=int, default=_env("DP_SHOP_WORKERS", d.workers, int),
                        help="processes generating part files in parallel; the output is the same "
                             "for any number (env DP_SHOP_WORKERS)")
    parser.add_argument("--extra-part", type=pathlib.Path,
                        default=_env("DP_SHOP_EXTRA_PART", None, pathlib.Path),
                        help="a local file of raw lines (any bytes) published unchanged as one more part "
                             "file of every generated day, before _SUCCESS: hand-made input such as bad "
                             "lines for tests (env DP_SHOP_EXTRA_PART)")
    args = parser.parse_args(argv)
    try:
        return ShopConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable
