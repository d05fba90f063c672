-- Behaviour sessions (topic behaviour.sessions.v1, contract datapipelines.behaviour.v1.SessionSummary).
--
-- The stream job closes a session window after an inactivity gap and emits it again, with a
-- larger `version`, when a late event within the allowed lateness changes it. The session id is
-- the user key and the start time, so a replay produces the same id; the identity here is
-- (session_start, session_id) and the largest version wins: ReplacingMergeTree(version), read
-- with FINAL. A late event that moves a session's start earlier yields a new id and start in
-- the contract, so that is a new row, not a replacement (see ADR 0007).
CREATE TABLE IF NOT EXISTS behaviour_sessions
(
    session_id String COMMENT 'user key and start time (stable over replays)',
    user_id String COMMENT 'signed-in user, or empty',
    anonymous_id String COMMENT 'browser cookie id',
    session_start DateTime64(3, 'UTC') COMMENT 'event time of the first event',
    session_end DateTime64(3, 'UTC') COMMENT 'event time of the last event',
    event_count Int64,
    page_view_count Int64,
    unique_page_count Int64,
    landing_page_path String,
    exit_page_path String,
    funnel_stage LowCardinality(String) COMMENT 'visit, product_view, cart, checkout, purchase (FunnelStage), or unspecified',
    funnel_stage_number UInt8 COMMENT 'FunnelStage number: "reached at least X" is funnel_stage_number >= X',
    converted Bool COMMENT 'the session contains a purchase',
    version UInt64 COMMENT 'revision of the session; the largest wins',
    emit_time DateTime64(3, 'UTC') COMMENT 'when the stream job emitted this revision',
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'when the analytics sink stored it'
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(session_start)
ORDER BY (session_start, session_id);

CREATE TABLE IF NOT EXISTS behaviour_sessions_ingest
(
    session_id String,
    user_id String,
    anonymous_id String,
    session_start_time_seconds Int64,
    session_start_time_nanos Int32,
    session_end_time_seconds Int64,
    session_end_time_nanos Int32,
    event_count Int64,
    page_view_count Int64,
    unique_page_count Int64,
    landing_page_path String,
    exit_page_path String,
    funnel_stage Int32,
    converted Bool,
    version UInt64,
    emit_time_seconds Int64,
    emit_time_nanos Int32
)
ENGINE = Null;

CREATE MATERIALIZED VIEW IF NOT EXISTS behaviour_sessions_ingest_mv TO behaviour_sessions AS
SELECT
    session_id,
    user_id,
    anonymous_id,
    fromUnixTimestamp64Milli(session_start_time_seconds * 1000 + intDiv(session_start_time_nanos, 1000000), 'UTC') AS session_start,
    fromUnixTimestamp64Milli(session_end_time_seconds * 1000 + intDiv(session_end_time_nanos, 1000000), 'UTC') AS session_end,
    event_count,
    page_view_count,
    unique_page_count,
    landing_page_path,
    exit_page_path,
    transform(funnel_stage, [1, 2, 3, 4, 5], ['visit', 'product_view', 'cart', 'checkout', 'purchase'], 'unspecified') AS funnel_stage,
    -- qualified: the bare name would mean the funnel_stage alias above
    toUInt8(if(behaviour_sessions_ingest.funnel_stage BETWEEN 1 AND 5, behaviour_sessions_ingest.funnel_stage, 0)) AS funnel_stage_number,
    converted,
    version,
    fromUnixTimestamp64Milli(emit_time_seconds * 1000 + intDiv(emit_time_nanos, 1000000), 'UTC') AS emit_time
FROM behaviour_sessions_ingest;
