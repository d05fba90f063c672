-- IoT reading aggregates (topic iot.aggregates.v1, contract datapipelines.iot.v1.ReadingAggregate).
--
-- The aggregator emits every window several times (first firing, late updates, final close),
-- each emission with the full statistics and a larger `version`. The table keeps the largest
-- version per window: ReplacingMergeTree(version) over the window's identity. Until a
-- background merge runs, older versions and replayed duplicates are still stored, so every
-- reader queries with FINAL (the named queries, the Grafana panels): a superseded or doubled
-- row is never visible.
CREATE TABLE IF NOT EXISTS iot_reading_aggregates
(
    scope LowCardinality(String) COMMENT 'device or site (AggregateScope)',
    key_id String COMMENT 'device id for scope device, site id for scope site',
    site_id LowCardinality(String) COMMENT 'the device''s site, or the site itself',
    window_kind LowCardinality(String) COMMENT 'tumbling or hopping (WindowKind)',
    window_start DateTime64(3, 'UTC') COMMENT 'inclusive start, event time',
    window_end DateTime64(3, 'UTC') COMMENT 'exclusive end, event time',
    reading_count Int64,
    temperature_celsius_count Int64,
    temperature_celsius_min Float64,
    temperature_celsius_max Float64,
    temperature_celsius_mean Float64,
    temperature_celsius_sum Float64,
    humidity_percent_count Int64,
    humidity_percent_min Float64,
    humidity_percent_max Float64,
    humidity_percent_mean Float64,
    humidity_percent_sum Float64,
    pressure_hpa_count Int64,
    pressure_hpa_min Float64,
    pressure_hpa_max Float64,
    pressure_hpa_mean Float64,
    pressure_hpa_sum Float64,
    battery_percent_count Int64,
    battery_percent_min Float64,
    battery_percent_max Float64,
    battery_percent_mean Float64,
    battery_percent_sum Float64,
    late_reading_count Int64,
    version UInt64 COMMENT 'revision of the window; the largest wins',
    emit_time DateTime64(3, 'UTC') COMMENT 'when the aggregator emitted this revision',
    window_closed Bool COMMENT 'true for the final emission after the grace period',
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the analytics sink stored it'
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
-- The window's identity. window_end is part of it (the contract's dedup key) so that two
-- window sizes of one kind starting together never replace each other.
ORDER BY (scope, key_id, window_kind, window_start, window_end);

-- The sink's insert target: records go in as they came off Kafka (ClickHouse's Protobuf
-- input format, schema inline), nothing is stored here (Null engine), and the view below
-- turns the wire shape (enum numbers, Timestamp seconds/nanos, nested MetricStats) into the
-- columns above. Column names follow the Protobuf format's nested-field naming.
CREATE TABLE IF NOT EXISTS iot_reading_aggregates_ingest
(
    scope Int32,
    key_id String,
    site_id String,
    window_kind Int32,
    window_start_time_seconds Int64,
    window_start_time_nanos Int32,
    window_end_time_seconds Int64,
    window_end_time_nanos Int32,
    reading_count Int64,
    temperature_celsius_count Int64,
    temperature_celsius_min Float64,
    temperature_celsius_max Float64,
    temperature_celsius_mean Float64,
    temperature_celsius_sum Float64,
    humidity_percent_count Int64,
    humidity_percent_min Float64,
    humidity_percent_max Float64,
    humidity_percent_mean Float64,
    humidity_percent_sum Float64,
    pressure_hpa_count Int64,
    pressure_hpa_min Float64,
    pressure_hpa_max Float64,
    pressure_hpa_mean Float64,
    pressure_hpa_sum Float64,
    battery_percent_count Int64,
    battery_percent_min Float64,
    battery_percent_max Float64,
    battery_percent_mean Float64,
    battery_percent_sum Float64,
    late_reading_count Int64,
    version UInt64,
    emit_time_seconds Int64,
    emit_time_nanos Int32,
    window_closed Bool
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS iot_reading_aggregates_ingest_mv TO iot_reading_aggregates AS
SELECT
    transform(scope, [1, 2], ['device', 'site'], 'unspecified') AS scope,
    key_id,
    site_id,
    transform(window_kind, [1, 2, 3], ['tumbling', 'hopping', 'session'], 'unspecified') AS window_kind,
    fromUnixTimestamp64Milli(window_start_time_seconds * 1000 + intDiv(window_start_time_nanos, 1000000), 'UTC') AS window_start,
    fromUnixTimestamp64Milli(window_end_time_seconds * 1000 + intDiv(window_end_time_nanos, 1000000), 'UTC') AS window_end,
    reading_count,
    temperature_celsius_count,
    temperature_celsius_min,
    temperature_celsius_max,
    temperature_celsius_mean,
    temperature_celsius_sum,
    humidity_percent_count,
    humidity_percent_min,
    humidity_percent_max,
    humidity_percent_mean,
    humidity_percent_sum,
    pressure_hpa_count,
    pressure_hpa_min,
    pressure_hpa_max,
    pressure_hpa_mean,
    pressure_hpa_sum,
    battery_percent_count,
    battery_percent_min,
    battery_percent_max,
    battery_percent_mean,
    battery_percent_sum,
    late_reading_count,
    version,
    fromUnixTimestamp64Milli(emit_time_seconds * 1000 + intDiv(emit_time_nanos, 1000000), 'UTC') AS emit_time,
    window_closed
FROM iot_reading_aggregates_ingest;
