"""The behaviour job's pipeline, as Flink SQL over a table of user events.

Pure: `register` only creates temporary views on a TableEnvironment; it reads no topic and writes
none. The same views run over the Kafka source in production (io.py) and over a bounded file of
events in the unit tests.

Input: a table whose physical columns are `EVENT_COLUMNS` (the fields of
`datapipelines.behaviour.v1.UserEvent` as the Flink `protobuf` format maps them: enums as their
value names, messages as ROWs, Timestamps as ROW<seconds, nanos>) plus `EVENT_TIME_COLUMNS`
(event time from `client_time`, and a watermark `allowed_lateness` behind the largest event time
seen).

Duplicates: an event id is counted once. A producer that retries after a crash of the ingestion
service may write an event twice (the contract says consumers deduplicate on `event_id`); the first
copy to arrive is kept and later copies are dropped before anything else (`UNIQUE_EVENTS`, a
processing-time deduplication whose state per id expires after the dedup TTL the job sets with
`table.exec.state.ttl`). It is insert-only, so the event-time attribute and watermarks pass through.

Lateness, one rule for every output: an event whose event time is behind the watermark when it
arrives (`event_time < CURRENT_WATERMARK(event_time)`) is late. Late events go to `LATE_EVENTS`
only; every other event is counted in every window, session and funnel it falls in. So each
event is either counted or reported late, never both and never neither (bots excepted: the
contract excludes `DEVICE_CATEGORY_BOT` events from all metrics). Windows fire once, when the
watermark passes their end; their rows carry version 1 and window_closed = true, and
late_event_count is 0 because nothing behind the watermark is admitted.

Output views (each row shaped as its Kafka record, without headers):
  BEHAVIOUR_METRICS  record_key + the fields of BehaviourMetric (1-min tumbling, 5-min hopping
                     with a 1-min slide; dimensions ALL, EVENT_TYPE, PAGE_PATH, DEVICE_CATEGORY)
  SESSION_SUMMARIES  record_key + the fields of SessionSummary (session windows per user)
  LATE_EVENTS        record_key + the UserEvent columns + watermark_ms, lateness_ms
"""

from __future__ import annotations

from dataclasses import dataclass

# The physical columns of UserEvent under the `protobuf` format (and the JSON test source).
# Field names and nesting follow proto/datapipelines/behaviour/v1/user_event.proto.
_TIMESTAMP = "ROW<`seconds` BIGINT, `nanos` INT>"
_MONEY = "ROW<`currency_code` STRING, `amount_minor` BIGINT>"
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "STRING"),
    ("user_id", "STRING"),
    ("session_id", "STRING"),
    ("anonymous_id", "STRING"),
    ("event_type", "STRING"),
    ("page", "ROW<`url` STRING, `path` STRING, `title` STRING, `referrer_url` STRING>"),
    ("user_agent", "STRING"),
    (
        "device",
        "ROW<`category` STRING, `os_name` STRING, `browser_name` STRING, `browser_version` STRING, "
        "`screen_width_px` INT, `screen_height_px` INT, `locale` STRING>",
    ),
    ("client_time", _TIMESTAMP),
    ("server_time", _TIMESTAMP),
    ("click", "ROW<`element_id` STRING, `element_text` STRING, `target_url` STRING>"),
    ("scroll", "ROW<`depth_percent` INT>"),
    ("search", "ROW<`query` STRING, `result_count` INT>"),
    ("product", f"ROW<`product_id` STRING, `category` STRING, `price` {_MONEY}>"),
    ("cart", f"ROW<`product_id` STRING, `category` STRING, `quantity` INT, `unit_price` {_MONEY}>"),
    ("checkout", f"ROW<`checkout_id` STRING, `item_count` INT, `cart_total` {_MONEY}>"),
    ("purchase", f"ROW<`order_id` STRING, `item_count` INT, `order_total` {_MONEY}>"),
    ("attributes", "MAP<STRING, STRING>"),
)

EVENT_COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in EVENT_COLUMNS)

# Views created by `register`.
BEHAVIOUR_METRICS = "behaviour_metrics"
SESSION_SUMMARIES = "session_summaries"
LATE_EVENTS = "late_events"
# Intermediate views (useful in tests and for EXPLAIN).
UNIQUE_EVENTS = "behaviour_events_unique"
PREPARED_EVENTS = "behaviour_events_prepared"
ON_TIME_EVENTS = "behaviour_events_on_time"

# Funnel stages by rank; a session's stage is the furthest it reached.
FUNNEL_STAGES: tuple[tuple[int, str], ...] = (
    (1, "FUNNEL_STAGE_VISIT"),
    (2, "FUNNEL_STAGE_PRODUCT_VIEW"),
    (3, "FUNNEL_STAGE_CART"),
    (4, "FUNNEL_STAGE_CHECKOUT"),
    (5, "FUNNEL_STAGE_PURCHASE"),
)
_RANK_OF_EVENT_TYPE = {
    "USER_EVENT_TYPE_PRODUCT_VIEW": 2,
    "USER_EVENT_TYPE_ADD_TO_CART": 3,
    "USER_EVENT_TYPE_CHECKOUT": 4,
    "USER_EVENT_TYPE_PURCHASE": 5,
}

# MetricDimension value name -> (number, SQL expression of the dimension value). The number is
# part of the record key ("<dimension number>:<value>", see datapipelines.topics).
_ALL = "''"
DIMENSIONS: tuple[tuple[str, int, str], ...] = (
    ("METRIC_DIMENSION_ALL", 1, _ALL),
    ("METRIC_DIMENSION_EVENT_TYPE", 2, "event_type"),
    ("METRIC_DIMENSION_PAGE_PATH", 3, "page_path"),
    ("METRIC_DIMENSION_DEVICE_CATEGORY", 4, "device_category"),
)

BOT_CATEGORY = "DEVICE_CATEGORY_BOT"


@dataclass(frozen=True)
class WindowSpec:
    """Window sizes of the pipeline, in seconds (event time)."""

    tumbling_seconds: int = 60
    hopping_size_seconds: int = 300
    hopping_slide_seconds: int = 60
    session_gap_seconds: int = 30 * 60

    def __post_init__(self) -> None:
        for name in ("tumbling_seconds", "hopping_size_seconds", "hopping_slide_seconds", "session_gap_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hopping_size_seconds % self.hopping_slide_seconds:
            raise ValueError(
                f"hopping window size {self.hopping_size_seconds}s must be a multiple of its slide "
                f"{self.hopping_slide_seconds}s"
            )


def interval_sql(seconds: float) -> str:
    """A day-to-second interval literal (a plain SECOND literal only takes two digits)."""
    total_ms = int(round(seconds * 1000))
    days, rest = divmod(total_ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}' DAY TO SECOND(3)"


def _quoted(name: str) -> str:
    return f"`{name}`"


def event_columns_sql() -> str:
    """The physical columns of a UserEvent table, for CREATE TABLE."""
    return ",\n  ".join(f"{_quoted(name)} {sql_type}" for name, sql_type in EVENT_COLUMNS)


def event_time_columns_sql(allowed_lateness_seconds: float) -> str:
    """Event time (from client_time, else server_time) and the watermark, for CREATE TABLE.

    The watermark trails the largest event time seen by `allowed_lateness_seconds`: events up to
    that much out of order are counted, later ones are late.
    """
    if allowed_lateness_seconds < 0:
        raise ValueError(f"allowed lateness must not be negative, got {allowed_lateness_seconds}")
    event_ms = (
        "COALESCE(`client_time`.`seconds`, `server_time`.`seconds`, 0) * 1000"
        " + CAST(COALESCE(`client_time`.`nanos`, 0) / 1000000 AS BIGINT)"
    )
    return (
        "`proc_time` AS PROCTIME(),\n"
        f"  `event_ms` AS {event_ms},\n"
        f"  `event_time` AS TO_TIMESTAMP_LTZ({event_ms}, 3),\n"
        f"  WATERMARK FOR `event_time` AS `event_time` - {interval_sql(allowed_lateness_seconds)}"
    )


def _timestamp_from_ms(ms: str) -> str:
    # google.protobuf.Timestamp from epoch milliseconds (event times are after 1970).
    return f"CAST(ROW(CAST(FLOOR(({ms}) / 1000) AS BIGINT), CAST(MOD({ms}, 1000) * 1000000 AS INT)) AS {_TIMESTAMP})"


def _timestamp_from_window_bound(column: str) -> str:
    # Window bounds are TIMESTAMP(3) in the session time zone (UTC, set by `register`).
    return f"CAST(ROW(UNIX_TIMESTAMP(CAST({column} AS STRING)), 0) AS {_TIMESTAMP})"


_EMIT_TIME = f"CAST(ROW(UNIX_TIMESTAMP(), 0) AS {_TIMESTAMP})"


def _funnel_rank_sql() -> str:
    cases = " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in _RANK_OF_EVENT_TYPE.items())
    return f"CASE event_type {cases} ELSE 1 END"


def _funnel_stage_sql(rank: str) -> str:
    cases = " ".join(f"WHEN {rank_value} THEN '{name}'" for rank_value, name in FUNNEL_STAGES)
    return f"CASE {rank} {cases} ELSE 'FUNNEL_STAGE_UNSPECIFIED' END"


def _metrics_select(window_tvf: str, window_kind: str) -> str:
    """BehaviourMetric rows of one window kind, every dimension through GROUPING SETS."""
    dimension_sets = ", ".join(f"({expr})" if expr != _ALL else "()" for _, _, expr in DIMENSIONS)
    grouping_columns = [expr for _, _, expr in DIMENSIONS if expr != _ALL]

    def which(prefix_for: dict[str, str]) -> str:
        # Exactly one dimension column is grouped in each grouping set (none for ALL).
        parts = [f"WHEN GROUPING({expr}) = 0 THEN {prefix_for[expr]}" for expr in grouping_columns]
        return "CASE " + " ".join(parts) + f" ELSE {prefix_for[_ALL]} END"

    names = {expr: f"'{name}'" for name, _, expr in DIMENSIONS}
    numbers = {expr: f"'{number}'" for _, number, expr in DIMENSIONS}
    values = {expr: expr for _, _, expr in DIMENSIONS}
    dimension_value = which(values)
    return f"""
SELECT
  {which(numbers)} || ':' || {dimension_value} AS record_key,
  '{window_kind}' AS window_kind,
  {_timestamp_from_window_bound('window_start')} AS window_start_time,
  {_timestamp_from_window_bound('window_end')} AS window_end_time,
  {which(names)} AS dimension,
  {dimension_value} AS dimension_value,
  COUNT(*) AS event_count,
  COUNT(DISTINCT user_key) AS unique_user_count,
  COUNT(DISTINCT session_id) AS unique_session_count,
  CAST(0 AS BIGINT) AS late_event_count,
  CAST(1 AS BIGINT) AS version,
  {_EMIT_TIME} AS emit_time,
  TRUE AS window_closed
FROM TABLE({window_tvf})
GROUP BY window_start, window_end, GROUPING SETS ({dimension_sets})"""


def register(t_env, source_table: str, windows: WindowSpec = WindowSpec()) -> None:
    """Create the pipeline's views over `source_table` (EVENT_COLUMNS + EVENT_TIME_COLUMNS)."""
    # Window bounds are rendered as UTC; the pipeline must not depend on the host's zone.
    t_env.get_config().set("table.local-time-zone", "UTC")
    sql = t_env.execute_sql

    passthrough = ", ".join(_quoted(name) for name in EVENT_COLUMN_NAMES)
    # The first copy of each event id (Flink recognises this ROW_NUMBER pattern as an insert-only
    # deduplication that keeps the event-time attribute).
    sql(f"""
CREATE TEMPORARY VIEW {UNIQUE_EVENTS} AS
SELECT {passthrough}, `event_ms`, `event_time`
FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY `event_id` ORDER BY `proc_time` ASC) AS copy_number
  FROM {source_table}
)
WHERE copy_number = 1
""")

    sql(f"""
CREATE TEMPORARY VIEW {PREPARED_EVENTS} AS
SELECT
  {passthrough},
  COALESCE(`event_id`, '') AS event_id_text,
  COALESCE(`session_id`, '') AS session_key,
  COALESCE(NULLIF(`user_id`, ''), NULLIF(`anonymous_id`, ''), '') AS user_key,
  COALESCE(`page`.`path`, '') AS page_path,
  COALESCE(`device`.`category`, 'DEVICE_CATEGORY_UNSPECIFIED') AS device_category,
  {_funnel_rank_sql()} AS funnel_rank,
  `event_ms`,
  `event_time`,
  CURRENT_WATERMARK(`event_time`) IS NOT NULL
    AND `event_time` < CURRENT_WATERMARK(`event_time`) AS is_late,
  CURRENT_WATERMARK(`event_time`) AS watermark_at_arrival
FROM {UNIQUE_EVENTS}
WHERE COALESCE(`device`.`category`, '') <> '{BOT_CATEGORY}'
""")

    sql(f"""
CREATE TEMPORARY VIEW {ON_TIME_EVENTS} AS
SELECT
  COALESCE(`event_type`, 'USER_EVENT_TYPE_UNSPECIFIED') AS event_type,
  session_key AS session_id,
  COALESCE(`user_id`, '') AS user_id,
  COALESCE(`anonymous_id`, '') AS anonymous_id,
  user_key, page_path, device_category, funnel_rank, event_ms, event_time
FROM {PREPARED_EVENTS}
WHERE NOT is_late
""")

    tumbling = (
        f"TUMBLE(TABLE {ON_TIME_EVENTS}, DESCRIPTOR(event_time), {interval_sql(windows.tumbling_seconds)})"
    )
    hopping = (
        f"HOP(TABLE {ON_TIME_EVENTS}, DESCRIPTOR(event_time), {interval_sql(windows.hopping_slide_seconds)}, "
        f"{interval_sql(windows.hopping_size_seconds)})"
    )
    sql(f"""
CREATE TEMPORARY VIEW {BEHAVIOUR_METRICS} AS
{_metrics_select(tumbling, 'WINDOW_KIND_TUMBLING')}
UNION ALL
{_metrics_select(hopping, 'WINDOW_KIND_HOPPING')}
""")

    first_page = "MIN(CASE WHEN page_path <> '' THEN LPAD(CAST(event_ms AS STRING), 16, '0') || page_path END)"
    last_page = "MAX(CASE WHEN page_path <> '' THEN LPAD(CAST(event_ms AS STRING), 16, '0') || page_path END)"
    sql(f"""
CREATE TEMPORARY VIEW {SESSION_SUMMARIES} AS
SELECT
  session_id AS record_key,
  session_id, user_id, anonymous_id, session_start_time, session_end_time, event_count,
  page_view_count, unique_page_count, landing_page_path, exit_page_path,
  {_funnel_stage_sql('max_rank')} AS funnel_stage,
  max_rank = 5 AS converted,
  CAST(1 AS BIGINT) AS version,
  {_EMIT_TIME} AS emit_time
FROM (
  SELECT
    user_key || ':' || CAST(MIN(event_ms) AS STRING) AS session_id,
    MAX(user_id) AS user_id,
    MAX(anonymous_id) AS anonymous_id,
    {_timestamp_from_ms('MIN(event_ms)')} AS session_start_time,
    {_timestamp_from_ms('MAX(event_ms)')} AS session_end_time,
    COUNT(*) AS event_count,
    SUM(CASE WHEN event_type = 'USER_EVENT_TYPE_PAGE_VIEW' THEN CAST(1 AS BIGINT) ELSE CAST(0 AS BIGINT) END)
      AS page_view_count,
    COUNT(DISTINCT NULLIF(page_path, '')) AS unique_page_count,
    COALESCE(SUBSTRING({first_page} FROM 17), '') AS landing_page_path,
    COALESCE(SUBSTRING({last_page} FROM 17), '') AS exit_page_path,
    MAX(funnel_rank) AS max_rank
  FROM TABLE(SESSION(TABLE {ON_TIME_EVENTS} PARTITION BY user_key, DESCRIPTOR(event_time),
                     {interval_sql(windows.session_gap_seconds)}))
  GROUP BY user_key, window_start, window_end
)
""")

    sql(f"""
CREATE TEMPORARY VIEW {LATE_EVENTS} AS
SELECT
  COALESCE(NULLIF(`session_id`, ''), NULLIF(`anonymous_id`, ''), COALESCE(`user_id`, '')) AS record_key,
  {passthrough},
  event_ms,
  {_epoch_ms('watermark_at_arrival')} AS watermark_ms,
  {_epoch_ms('watermark_at_arrival')} - event_ms AS lateness_ms
FROM {PREPARED_EVENTS}
WHERE is_late
""")


def _epoch_ms(ltz_column: str) -> str:
    # TIMESTAMP_LTZ(3) -> epoch milliseconds (Flink has no direct cast of LTZ to a number).
    return f"CAST(UNIX_TIMESTAMP(CAST({ltz_column} AS STRING)) * 1000 + EXTRACT(MILLISECOND FROM {ltz_column}) AS BIGINT)"
