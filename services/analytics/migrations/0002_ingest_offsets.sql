-- Which Kafka offsets each stored batch covered, written by the sink right after the batch's
-- rows and before it commits the offsets to Kafka. On partition assignment the sink resumes
-- after the largest offset recorded here when that is ahead of the group's committed offset,
-- so a crash between insert and commit does not even re-insert. Correctness does not depend
-- on it (ReplacingMergeTree + FINAL already hide a re-inserted batch); it saves the replay
-- and records which offsets produced which rows. Dead-lettered records count in the range.
CREATE TABLE IF NOT EXISTS ingest_offsets
(
    consumer_group LowCardinality(String),
    topic LowCardinality(String),
    kafka_partition UInt32,
    first_offset Int64,
    last_offset Int64 COMMENT 'inclusive',
    row_count UInt32 COMMENT 'records stored from the range',
    dead_letter_count UInt32 COMMENT 'records of the range sent to the dead-letter topic',
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
ORDER BY (consumer_group, topic, kafka_partition, last_offset)
TTL toDateTime(inserted_at) + INTERVAL 30 DAY;
