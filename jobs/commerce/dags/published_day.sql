-- Days of the commerce marts that passed the data-quality checks and were published by the
-- commerce_daily DAG (jobs/commerce/dags). Dashboards show only published days:
--   ... WHERE event_date IN (SELECT event_date FROM mart.published_day)
-- One row per day; re-publishing a day (a re-run) updates its row.
-- The DAG's publish task creates this table when it is missing and its role may (CREATE on
-- schema mart); otherwise apply this file once as the schema's owner. It is written to be
-- folded into the next deploy/postgres migration unchanged.
CREATE TABLE IF NOT EXISTS mart.published_day (
    event_date      date        PRIMARY KEY,
    job_run_id      uuid        NOT NULL,
    dag_run_id      text        NOT NULL,
    published_at    timestamptz NOT NULL,
    quality_report  text        NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON mart.published_day TO dp_app;
