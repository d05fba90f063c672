-- Days of the commerce marts published by the commerce_daily DAG after its data-quality checks
-- (jobs/commerce/dags; the same DDL as jobs/commerce/dags/published_day.sql, which the DAG's
-- publish task also applies where its role may). Never edit after it was applied: add 0004_*.sql.

CREATE TABLE IF NOT EXISTS mart.published_day (
    event_date      date        PRIMARY KEY,
    job_run_id      uuid        NOT NULL,
    dag_run_id      text        NOT NULL,
    published_at    timestamptz NOT NULL,
    quality_report  text        NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON mart.published_day TO dp_app;
