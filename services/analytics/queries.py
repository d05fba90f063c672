"""The named, read-only queries the HTTP API serves. Clients choose a query and its parameters;
they never send SQL.

Every parameter is parsed and checked here (type, allowed values, ranges) and then bound by the
store as a ClickHouse query parameter (`{name:Type}`), so no client text is ever part of a SQL
string. Identifiers that depend on a parameter (which metric column to rank by) come from fixed
maps in this module, never from the request. Every query reads with FINAL, so a window shows
its latest version once, whatever versions or replays are stored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from services.analytics.store import Store

UTC = dt.timezone.utc
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
DURATION_PATTERN = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SPAN = dt.timedelta(days=31)
EARLIEST = dt.datetime(1971, 1, 1, tzinfo=UTC)
LATEST = dt.datetime(2200, 1, 1, tzinfo=UTC)

# Public metric names -> the column prefix in iot_reading_aggregates.
METRICS = {
    "temperature": "temperature_celsius",
    "humidity": "humidity_percent",
    "pressure": "pressure_hpa",
    "battery": "battery_percent",
}
STATS = ("max", "min", "mean")
WINDOW_KINDS = ("tumbling", "hopping")
SCOPES = ("device", "site")
# MetricDimension values as the behaviour_metrics table spells them.
DIMENSIONS = ("all", "event_type", "page_path", "device_category")
# Public ranking names of the top-pages query -> the result column ordered by (fixed map).
TOP_PAGES_ORDER = {"events": "events", "users": "peak_window_users", "sessions": "peak_window_sessions"}
MAX_TEXT = 256


class BadRequest(ValueError):
    """The request's parameters are wrong; `problems` says each thing to fix."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: str  # choice | key | text | time | int | duration | bool
    help: str
    required: bool = False
    default: Any = None
    choices: tuple = ()
    minimum: int = 0
    maximum: int = 0

    def parse(self, raw: str) -> Any:
        if self.kind == "choice":
            if raw not in self.choices:
                raise ValueError("must be one of %s, got %r" % ("|".join(self.choices), raw[:40]))
            return raw
        if self.kind == "key":
            if not KEY_PATTERN.match(raw):
                raise ValueError("must be 1-128 characters of A-Z a-z 0-9 . _ : @ - (starting with a letter or "
                                 "digit), got %r" % raw[:40])
            return raw
        if self.kind == "text":
            # Free text (page paths, enum value names): bound as a parameter, so only length and
            # control characters are restricted.
            if not 1 <= len(raw) <= MAX_TEXT:
                raise ValueError("must be 1-%d characters, got %d" % (MAX_TEXT, len(raw)))
            if any(ord(char) < 0x20 or ord(char) == 0x7F for char in raw):
                raise ValueError("must not contain control characters")
            return raw
        if self.kind == "int":
            if not re.fullmatch(r"[0-9]{1,9}", raw):
                raise ValueError("must be a whole number, got %r" % raw[:40])
            value = int(raw)
            if not self.minimum <= value <= self.maximum:
                raise ValueError("must be between %d and %d, got %d" % (self.minimum, self.maximum, value))
            return value
        if self.kind == "bool":
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError("must be true or false, got %r" % raw[:40])
        if self.kind == "duration":
            match = DURATION_PATTERN.match(raw)
            if not match:
                raise ValueError("must be a duration like 90s, 15m, 1h or 7d, got %r" % raw[:40])
            value = dt.timedelta(seconds=int(match.group(1)) * DURATION_UNITS[match.group(2)])
            if not dt.timedelta(minutes=1) <= value <= MAX_SPAN:
                raise ValueError("must be between 1m and 31d, got %s" % raw)
            return value
        if self.kind == "time":
            return parse_time(raw)
        raise AssertionError("unknown parameter kind %s" % self.kind)

    def describe(self) -> dict:
        out = {"name": self.name, "type": self.kind, "required": self.required, "help": self.help}
        if self.choices:
            out["choices"] = list(self.choices)
        if self.kind == "int":
            out["range"] = [self.minimum, self.maximum]
        if self.default is not None and not callable(self.default):
            out["default"] = str(self.default) if isinstance(self.default, dt.timedelta) else self.default
        return out


def parse_time(raw: str) -> dt.datetime:
    """ISO 8601 (`2024-05-01T12:00:00Z`, an offset, or no zone meaning UTC) -> aware UTC datetime."""
    if len(raw) > 40:
        raise ValueError("must be an ISO 8601 time like 2024-05-01T12:00:00Z, got %r..." % raw[:40])
    try:
        value = dt.datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise ValueError("must be an ISO 8601 time like 2024-05-01T12:00:00Z, got %r" % raw) from None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not EARLIEST <= value < LATEST:
        raise ValueError("must be between 1971 and 2200, got %s" % raw)
    return value


def sql_time(value: dt.datetime) -> str:
    """The text form of a DateTime64(3, 'UTC') query parameter."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + "%03d" % (value.microsecond // 1000)


def iso_from_ms(ms: Optional[int]) -> Optional[str]:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Rendered:
    sql: str
    params: dict  # name -> text value for a {name:Type} placeholder


@dataclasses.dataclass(frozen=True)
class NamedQuery:
    name: str
    path: str
    summary: str
    params: tuple
    render: Callable[[dict], Rendered]
    # Result columns holding epoch milliseconds: returned as ISO 8601 under the name without `_ms`.
    time_columns: tuple = ()

    def validate(self, raw: Mapping[str, Sequence[str]], now: Callable[[], dt.datetime]) -> dict:
        """Typed values for every parameter; BadRequest lists every problem at once."""
        problems = []
        known = {param.name for param in self.params}
        for name in sorted(set(raw) - known):
            problems.append("%s: unknown parameter (this query takes %s)" % (name[:40], ", ".join(sorted(known))))
        values = {}
        for param in self.params:
            given = raw.get(param.name)
            if given is None or given == [""]:
                if param.required:
                    problems.append("%s: required (%s)" % (param.name, param.help))
                    continue
                default = param.default
                values[param.name] = default(now()) if callable(default) else default
                continue
            if len(given) != 1:
                problems.append("%s: given %d times, expected once" % (param.name, len(given)))
                continue
            try:
                values[param.name] = param.parse(given[0])
            except ValueError as err:
                problems.append("%s: %s" % (param.name, err))
        if not problems:
            problems.extend(_check_range(values, now))
        if problems:
            raise BadRequest(problems)
        return values

    def describe(self) -> dict:
        return {"name": self.name, "path": self.path, "summary": self.summary,
                "params": [param.describe() for param in self.params]}


def _check_range(values: dict, now: Callable[[], dt.datetime]) -> list:
    if "window" in values and "to" in values:
        values["from"] = values["to"] - values.pop("window")
    if "from" in values and "to" in values:
        if values["to"] is None:
            values["to"] = now()
        if values["from"] is None:
            values["from"] = values["to"] - dt.timedelta(hours=1)
        if values["from"] >= values["to"]:
            return ["from: must be before to (%s >= %s)" % (values["from"].isoformat(), values["to"].isoformat())]
        if values["to"] - values["from"] > MAX_SPAN:
            return ["from/to: span at most 31 days per request (page through longer ranges)"]
    return []


# --- the queries ---------------------------------------------------------------------------

_WINDOW_COLUMNS = """
    toUnixTimestamp64Milli(window_start) AS window_start_ms,
    toUnixTimestamp64Milli(window_end) AS window_end_ms,
    reading_count,
    temperature_celsius_count, temperature_celsius_min, temperature_celsius_max, temperature_celsius_mean,
    humidity_percent_count, humidity_percent_min, humidity_percent_max, humidity_percent_mean,
    pressure_hpa_count, pressure_hpa_min, pressure_hpa_max, pressure_hpa_mean,
    battery_percent_count, battery_percent_min, battery_percent_max, battery_percent_mean,
    late_reading_count,
    version,
    toUnixTimestamp64Milli(emit_time) AS emit_time_ms,
    window_closed"""

AGGREGATES_SQL = """SELECT
    scope, key_id, site_id, window_kind,""" + _WINDOW_COLUMNS + """
FROM iot_reading_aggregates FINAL
WHERE scope = {scope:String}
  AND key_id = {key_id:String}
  AND window_kind = {window_kind:String}
  AND window_start >= {from:DateTime64(3, 'UTC')}
  AND window_start < {to:DateTime64(3, 'UTC')}
  AND (window_closed OR NOT {closed_only:Bool})
ORDER BY window_start, window_end
LIMIT {limit:UInt32}"""


def _render_aggregates(v: dict) -> Rendered:
    return Rendered(AGGREGATES_SQL, {
        "scope": v["scope"], "key_id": v["key_id"], "window_kind": v["window_kind"],
        "from": sql_time(v["from"]), "to": sql_time(v["to"]),
        "closed_only": "true" if v["closed_only"] else "false", "limit": str(v["limit"]),
    })


SITES_LATEST_SQL = """SELECT
    key_id AS site_id, window_kind,""" + _WINDOW_COLUMNS + """
FROM iot_reading_aggregates FINAL
WHERE scope = 'site'
  AND window_kind = {window_kind:String}
  AND (window_closed OR NOT {closed_only:Bool})
  AND ({site_id:String} = '' OR key_id = {site_id:String})
ORDER BY key_id, window_start DESC, window_end DESC
LIMIT 1 BY key_id
LIMIT {limit:UInt32}"""


def _render_sites_latest(v: dict) -> Rendered:
    return Rendered(SITES_LATEST_SQL, {
        "window_kind": v["window_kind"], "closed_only": "true" if v["closed_only"] else "false",
        "site_id": v["site_id"] or "", "limit": str(v["limit"]),
    })


DEVICES_TOP_TEMPLATE = """SELECT
    key_id AS device_id,
    any(a.site_id) AS site_id,
    count() AS windows,
    sum(reading_count) AS reading_count,
    sum({metric}_count) AS value_count,
    min({metric}_min) AS value_min,
    max({metric}_max) AS value_max,
    sum({metric}_sum) / sum({metric}_count) AS value_mean
FROM iot_reading_aggregates AS a FINAL
WHERE scope = 'device'
  AND window_kind = {{window_kind:String}}
  AND window_start >= {{from:DateTime64(3, 'UTC')}}
  AND window_start < {{to:DateTime64(3, 'UTC')}}
  AND {metric}_count > 0
  -- qualified: the bare name would mean the any(...) alias above
  AND ({{site_id:String}} = '' OR a.site_id = {{site_id:String}})
GROUP BY key_id
ORDER BY value_{stat} {order}, device_id
LIMIT {{limit:UInt32}}"""


def devices_top_sql(metric: str, stat: str, order: str) -> str:
    # The three inputs are checked against fixed sets; the identifiers come from those sets.
    if metric not in METRICS or stat not in STATS or order not in ("desc", "asc"):
        raise ValueError("unknown metric/stat/order %r/%r/%r" % (metric, stat, order))
    return DEVICES_TOP_TEMPLATE.format(metric=METRICS[metric], stat=stat, order=order.upper())


def _render_devices_top(v: dict) -> Rendered:
    return Rendered(devices_top_sql(v["metric"], v["stat"], v["order"]), {
        "window_kind": v["window_kind"], "from": sql_time(v["from"]), "to": sql_time(v["to"]),
        "site_id": v["site_id"] or "", "limit": str(v["limit"]),
    })


# Every key of one scope at once (the dashboards' per-site and per-device charts): the columns a
# chart needs, ordered by key then time, so a client splits the rows into one series per key.
SERIES_SQL = """SELECT
    key_id,
    site_id,
    toUnixTimestamp64Milli(window_start) AS window_start_ms,
    toUnixTimestamp64Milli(window_end) AS window_end_ms,
    reading_count,
    late_reading_count,
    temperature_celsius_count, temperature_celsius_min, temperature_celsius_max, temperature_celsius_mean,
    humidity_percent_count, humidity_percent_min, humidity_percent_max, humidity_percent_mean,
    window_closed
FROM iot_reading_aggregates FINAL
WHERE scope = {scope:String}
  AND window_kind = {window_kind:String}
  AND window_start >= {from:DateTime64(3, 'UTC')}
  AND window_start < {to:DateTime64(3, 'UTC')}
  AND ({site_id:String} = '' OR site_id = {site_id:String})
ORDER BY key_id, window_start, window_end
LIMIT {limit:UInt32}"""


def _render_series(v: dict) -> Rendered:
    return Rendered(SERIES_SQL, {
        "scope": v["scope"], "window_kind": v["window_kind"], "from": sql_time(v["from"]), "to": sql_time(v["to"]),
        "site_id": v["site_id"] or "", "limit": str(v["limit"]),
    })


def _now(now: dt.datetime) -> dt.datetime:
    return now


WINDOW_KIND = Param("window_kind", "choice", "tumbling (1 min) or hopping (5 min every 1 min)",
                    default="tumbling", choices=WINDOW_KINDS)

AGGREGATES = NamedQuery(
    name="iot_aggregates",
    path="/api/v1/iot/aggregates",
    summary="Latest version of every window of one device or site in [from, to), by window start.",
    params=(
        Param("scope", "choice", "device or site", required=True, choices=SCOPES),
        Param("key_id", "key", "the device id (scope=device) or site id (scope=site)", required=True),
        WINDOW_KIND,
        Param("from", "time", "inclusive window start, ISO 8601 (default: to - 1h)"),
        Param("to", "time", "exclusive window start bound, ISO 8601 (default: now)"),
        Param("closed_only", "bool", "only windows whose grace period ended", default=False),
        Param("limit", "int", "most rows returned", default=1000, minimum=1, maximum=10_000),
    ),
    render=_render_aggregates,
    time_columns=("window_start_ms", "window_end_ms", "emit_time_ms"),
)

SITES_LATEST = NamedQuery(
    name="iot_sites_latest",
    path="/api/v1/iot/sites/latest",
    summary="The most recent window of every site (closed windows only unless closed_only=false).",
    params=(
        WINDOW_KIND,
        Param("closed_only", "bool", "only windows whose grace period ended", default=True),
        Param("site_id", "key", "one site only"),
        Param("limit", "int", "most sites returned", default=100, minimum=1, maximum=1000),
    ),
    render=_render_sites_latest,
    time_columns=("window_start_ms", "window_end_ms", "emit_time_ms"),
)

SERIES = NamedQuery(
    name="iot_series",
    path="/api/v1/iot/series",
    summary="Latest version of every window of every device or site (of one site, with site_id) in [from, to), "
            "by key then window start: temperature and humidity stats, reading and late counts.",
    params=(
        Param("scope", "choice", "device or site", required=True, choices=SCOPES),
        WINDOW_KIND,
        Param("from", "time", "inclusive window start, ISO 8601 (default: to - 1h)"),
        Param("to", "time", "exclusive window start bound, ISO 8601 (default: now)"),
        Param("site_id", "key", "the site's own windows (scope=site) or its devices' (scope=device) only"),
        Param("limit", "int", "most rows returned", default=5000, minimum=1, maximum=10_000),
    ),
    render=_render_series,
    time_columns=("window_start_ms", "window_end_ms"),
)

DEVICES_TOP = NamedQuery(
    name="iot_devices_top",
    path="/api/v1/iot/devices/top",
    summary="Devices ranked by a metric's max, min or mean over the windows starting in [to - window, to).",
    params=(
        Param("metric", "choice", "which reading", required=True, choices=tuple(METRICS)),
        Param("stat", "choice", "rank by the max, min or mean over the period", default="max", choices=STATS),
        Param("order", "choice", "desc (highest first) or asc", default="desc", choices=("desc", "asc")),
        Param("window", "duration", "look-back period, e.g. 15m, 1h, 7d", default=dt.timedelta(hours=1)),
        Param("to", "time", "end of the period, ISO 8601 (default: now)", default=_now),
        WINDOW_KIND,
        Param("site_id", "key", "devices of one site only"),
        Param("limit", "int", "most devices returned", default=10, minimum=1, maximum=1000),
    ),
    render=_render_devices_top,
)

# --- behaviour -----------------------------------------------------------------------------

BEHAVIOUR_METRICS_SQL = """SELECT
    window_kind,
    toUnixTimestamp64Milli(window_start) AS window_start_ms,
    toUnixTimestamp64Milli(window_end) AS window_end_ms,
    dimension,
    dimension_value,
    event_count,
    unique_user_count,
    unique_session_count,
    late_event_count,
    version,
    toUnixTimestamp64Milli(emit_time) AS emit_time_ms,
    window_closed
FROM behaviour_metrics FINAL
WHERE dimension = {dimension:String}
  AND window_kind = {window_kind:String}
  AND window_start >= {from:DateTime64(3, 'UTC')}
  AND window_start < {to:DateTime64(3, 'UTC')}
  AND ({dimension_value:String} = '' OR dimension_value = {dimension_value:String})
  AND (window_closed OR NOT {closed_only:Bool})
ORDER BY window_start, window_end, dimension_value
LIMIT {limit:UInt32}"""


def _render_behaviour_metrics(v: dict) -> Rendered:
    return Rendered(BEHAVIOUR_METRICS_SQL, {
        "dimension": v["dimension"], "window_kind": v["window_kind"],
        "from": sql_time(v["from"]), "to": sql_time(v["to"]), "dimension_value": v["dimension_value"] or "",
        "closed_only": "true" if v["closed_only"] else "false", "limit": str(v["limit"]),
    })


# Sessions are selected by their start (event time) in [from, to).
_SESSIONS_IN_RANGE = """session_start >= {from:DateTime64(3, 'UTC')}
  AND session_start < {to:DateTime64(3, 'UTC')}"""

BEHAVIOUR_SESSIONS_SQL = """SELECT
    session_id,
    user_id,
    anonymous_id,
    toUnixTimestamp64Milli(session_start) AS session_start_ms,
    toUnixTimestamp64Milli(session_end) AS session_end_ms,
    (toUnixTimestamp64Milli(session_end) - toUnixTimestamp64Milli(session_start)) / 1000 AS duration_seconds,
    event_count,
    page_view_count,
    unique_page_count,
    landing_page_path,
    exit_page_path,
    funnel_stage,
    converted,
    version,
    toUnixTimestamp64Milli(emit_time) AS emit_time_ms
FROM behaviour_sessions FINAL
WHERE """ + _SESSIONS_IN_RANGE + """
  AND ({user:String} = '' OR user_id = {user:String} OR anonymous_id = {user:String})
  AND (converted OR NOT {converted_only:Bool})
ORDER BY session_start, session_id
LIMIT {limit:UInt32}"""


def _render_behaviour_sessions(v: dict) -> Rendered:
    return Rendered(BEHAVIOUR_SESSIONS_SQL, {
        "from": sql_time(v["from"]), "to": sql_time(v["to"]), "user": v["user"] or "",
        "converted_only": "true" if v["converted_only"] else "false", "limit": str(v["limit"]),
    })


# count()/avg() over no rows give 0/0 and nan: the API returns null for those.
SESSIONS_SUMMARY_SQL = """SELECT
    count() AS sessions,
    countIf(converted) AS converted_sessions,
    countIf(converted) / count() AS conversion_rate,
    avg(toUnixTimestamp64Milli(session_end) - toUnixTimestamp64Milli(session_start)) / 1000 AS mean_duration_seconds,
    sum(event_count) AS events,
    avg(event_count) AS mean_events_per_session,
    uniqExact(if(user_id != '', user_id, anonymous_id)) AS unique_users
FROM behaviour_sessions FINAL
WHERE """ + _SESSIONS_IN_RANGE


def _render_range(sql: str) -> Callable[[dict], Rendered]:
    def render(v: dict) -> Rendered:
        return Rendered(sql, {"from": sql_time(v["from"]), "to": sql_time(v["to"])})
    return render


# The metric rows count events per type, not sessions per stage, so the funnel comes from the
# sessions' furthest stage: a session that reached CHECKOUT counts for VISIT..CHECKOUT
# (FunnelStage numbers increase along the funnel).
FUNNEL_STAGES = ("visit", "product_view", "cart", "checkout", "purchase")

FUNNEL_SQL = """SELECT
    step.1 AS stage_number,
    step.2 AS stage,
    step.3 AS sessions,
    step.3 / reached_visit AS rate_from_visit,
    step.3 / step.4 AS rate_from_previous
FROM
(
    SELECT
        countIf(funnel_stage_number >= 1) AS reached_visit,
        countIf(funnel_stage_number >= 2) AS reached_product_view,
        countIf(funnel_stage_number >= 3) AS reached_cart,
        countIf(funnel_stage_number >= 4) AS reached_checkout,
        countIf(funnel_stage_number >= 5) AS reached_purchase
    FROM behaviour_sessions FINAL
    WHERE """ + _SESSIONS_IN_RANGE + """
)
ARRAY JOIN [
    (1, 'visit', reached_visit, reached_visit),
    (2, 'product_view', reached_product_view, reached_visit),
    (3, 'cart', reached_cart, reached_product_view),
    (4, 'checkout', reached_checkout, reached_cart),
    (5, 'purchase', reached_purchase, reached_checkout)
] AS step
ORDER BY stage_number"""

TOP_PAGES_TEMPLATE = """SELECT
    dimension_value AS page_path,
    sum(event_count) AS events,
    sum(late_event_count) AS late_events,
    max(unique_user_count) AS peak_window_users,
    max(unique_session_count) AS peak_window_sessions,
    count() AS windows
FROM behaviour_metrics FINAL
WHERE dimension = 'page_path'
  AND window_kind = {{window_kind:String}}
  AND window_start >= {{from:DateTime64(3, 'UTC')}}
  AND window_start < {{to:DateTime64(3, 'UTC')}}
GROUP BY page_path
ORDER BY {order} DESC, events DESC, page_path
LIMIT {{limit:UInt32}}"""


def top_pages_sql(order_by: str) -> str:
    if order_by not in TOP_PAGES_ORDER:
        raise ValueError("unknown order_by %r" % order_by)
    return TOP_PAGES_TEMPLATE.format(order=TOP_PAGES_ORDER[order_by])


def _render_top_pages(v: dict) -> Rendered:
    return Rendered(top_pages_sql(v["order_by"]), {
        "window_kind": v["window_kind"], "from": sql_time(v["from"]), "to": sql_time(v["to"]),
        "limit": str(v["limit"]),
    })


BEHAVIOUR_WINDOW_KIND = Param("window_kind", "choice", "tumbling (1 min) or hopping (5 min every 1 min)",
                              default="tumbling", choices=WINDOW_KINDS)
_FROM = Param("from", "time", "inclusive start, ISO 8601 (default: to - 1h)")
_TO = Param("to", "time", "exclusive end, ISO 8601 (default: now)")
_SESSION_FROM = Param("from", "time", "sessions starting at or after, ISO 8601 (default: to - 1h)")
_SESSION_TO = Param("to", "time", "sessions starting before, ISO 8601 (default: now)")

BEHAVIOUR_METRICS = NamedQuery(
    name="behaviour_metrics",
    path="/api/v1/behaviour/metrics",
    summary="Latest version of every behaviour metric window of one dimension in [from, to), by window start.",
    params=(
        Param("dimension", "choice", "what the rows are broken down by", default="all", choices=DIMENSIONS),
        Param("dimension_value", "text", "one value of the dimension only (an event type or device category "
                                         "value name, or a page path)"),
        BEHAVIOUR_WINDOW_KIND,
        Param("from", "time", "inclusive window start, ISO 8601 (default: to - 1h)"),
        Param("to", "time", "exclusive window start bound, ISO 8601 (default: now)"),
        Param("closed_only", "bool", "only windows whose allowed lateness ended", default=False),
        Param("limit", "int", "most rows returned", default=1000, minimum=1, maximum=10_000),
    ),
    render=_render_behaviour_metrics,
    time_columns=("window_start_ms", "window_end_ms", "emit_time_ms"),
)

BEHAVIOUR_SESSIONS = NamedQuery(
    name="behaviour_sessions",
    path="/api/v1/behaviour/sessions",
    summary="Latest version of every session starting in [from, to), by start.",
    params=(
        _SESSION_FROM,
        _SESSION_TO,
        Param("user", "text", "one user only (user_id or anonymous_id)"),
        Param("converted_only", "bool", "only sessions with a purchase", default=False),
        Param("limit", "int", "most rows returned", default=1000, minimum=1, maximum=10_000),
    ),
    render=_render_behaviour_sessions,
    time_columns=("session_start_ms", "session_end_ms", "emit_time_ms"),
)

SESSIONS_SUMMARY = NamedQuery(
    name="behaviour_sessions_summary",
    path="/api/v1/behaviour/sessions/summary",
    summary="Sessions starting in [from, to): count, converted count and rate, mean duration, events, users.",
    params=(_SESSION_FROM, _SESSION_TO),
    render=_render_range(SESSIONS_SUMMARY_SQL),
)

FUNNEL = NamedQuery(
    name="behaviour_funnel",
    path="/api/v1/behaviour/funnel",
    summary="Sessions starting in [from, to) that reached each funnel stage (visit, product view, cart, "
            "checkout, purchase), with the rate from visit and from the previous stage.",
    params=(_SESSION_FROM, _SESSION_TO),
    render=_render_range(FUNNEL_SQL),
)

TOP_PAGES = NamedQuery(
    name="behaviour_top_pages",
    path="/api/v1/behaviour/top-pages",
    summary="Pages ranked by events (summed over the windows starting in [from, to)) or by the most "
            "users or sessions in one window.",
    params=(
        Param("order_by", "choice", "events, users (peak per window) or sessions (peak per window)",
              default="events", choices=tuple(TOP_PAGES_ORDER)),
        _FROM,
        _TO,
        BEHAVIOUR_WINDOW_KIND,
        Param("limit", "int", "most pages returned", default=10, minimum=1, maximum=1000),
    ),
    render=_render_top_pages,
)

ALL = (AGGREGATES, SERIES, SITES_LATEST, DEVICES_TOP, BEHAVIOUR_METRICS, BEHAVIOUR_SESSIONS, SESSIONS_SUMMARY, FUNNEL,
       TOP_PAGES)
BY_PATH = {query.path: query for query in ALL}


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return value


def run(store: Store, query: NamedQuery, values: dict) -> dict:
    """Runs a validated query; a JSON-ready answer with ISO times."""
    rendered = query.render(values)
    started = time.monotonic()
    result = store.query(rendered.sql, rendered.params)
    elapsed_ms = (time.monotonic() - started) * 1000
    rows = []
    for row in result.dicts():
        out = {}
        for column, value in row.items():
            if column in query.time_columns:
                out[column[:-3]] = iso_from_ms(value)
            else:
                out[column] = _json_value(value)
        rows.append(out)
    echo = {}
    for name, value in values.items():
        if isinstance(value, dt.datetime):
            echo[name] = value.isoformat().replace("+00:00", "Z")
        elif isinstance(value, dt.timedelta):
            echo[name] = "%ds" % value.total_seconds()
        else:
            echo[name] = value
    return {"query": query.name, "params": echo, "row_count": len(rows), "rows": rows,
            "store_ms": round(elapsed_ms, 2)}
