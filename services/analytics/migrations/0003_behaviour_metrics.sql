-- Behaviour metrics (topic behaviour.metrics.v1, contract datapipelines.behaviour.v1.BehaviourMetric).
--
-- The behaviour stream job emits every window several times (first firing, late updates, the
-- final close after the allowed lateness), each with the full counts and a larger `version`.
-- The table keeps the largest version per (window_kind, window_start, window_end, dimension,
-- dimension_value), the contract's identity: ReplacingMergeTree(version). Every reader uses
-- FINAL (the named queries, the Grafana panels), exactly as for the IoT aggregates.
CREATE TABLE IF NOT EXISTS behaviour_metrics
(
    window_kind LowCardinality(String) COMMENT 'tumbling or hopping (WindowKind)',
    window_start DateTime64(3, 'UTC') COMMENT 'inclusive start, event time',
    window_end DateTime64(3, 'UTC') COMMENT 'exclusive end, event time',
    dimension LowCardinality(String) COMMENT 'all, event_type, page_path or device_category (MetricDimension)',
    dimension_value String COMMENT 'the counted value of the dimension; empty for all',
    event_count Int64,
    unique_user_count Int64 COMMENT 'distinct users in this window (not additive across windows)',
    unique_session_count Int64 COMMENT 'distinct sessions in this window (not additive across windows)',
    late_event_count Int64,
    version UInt64 COMMENT 'revision of the window; the largest wins',
    emit_time DateTime64(3, 'UTC') COMMENT 'when the stream job emitted this revision',
    window_closed Bool COMMENT 'true for the final emission after the allowed lateness',
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the analytics sink stored it'
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
-- The contract's identity, ordered for the reads: one dimension and kind over a time range.
ORDER BY (dimension, window_kind, window_start, window_end, dimension_value);

-- The sink's insert target in the wire shape (ClickHouse's Protobuf input format, schema inline);
-- the view turns enum numbers into names and Timestamps into DateTime64.
CREATE TABLE IF NOT EXISTS behaviour_metrics_ingest
(
    window_kind Int32,
    window_start_time_seconds Int64,
    window_start_time_nanos Int32,
    window_end_time_seconds Int64,
    window_end_time_nanos Int32,
    dimension Int32,
    dimension_value String,
    event_count Int64,
    unique_user_count Int64,
    unique_session_count Int64,
    late_event_count Int64,
    version UInt64,
    emit_time_seconds Int64,
    emit_time_nanos Int32,
    window_closed Bool
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS behaviour_metrics_ingest_mv TO behaviour_metrics AS
SELECT
    transform(window_kind, [1, 2, 3], ['tumbling', 'hopping', 'session'], 'unspecified') AS window_kind,
    fromUnixTimestamp64Milli(window_start_time_seconds * 1000 + intDiv(window_start_time_nanos, 1000000), 'UTC') AS window_start,
    fromUnixTimestamp64Milli(window_end_time_seconds * 1000 + intDiv(window_end_time_nanos, 1000000), 'UTC') AS window_end,
    transform(dimension, [1, 2, 3, 4], ['all', 'event_type', 'page_path', 'device_category'], 'unspecified') AS dimension,
    dimension_value,
    event_count,
    unique_user_count,
    unique_session_count,
    late_event_count,
    version,
    fromUnixTimestamp64Milli(emit_time_seconds * 1000 + intDiv(emit_time_nanos, 1000000), 'UTC') AS emit_time,
    window_closed
FROM behaviour_metrics_ingest;
