-- Commerce marts: schema `mart`, written by the Spark batch job jobs/commerce/marts, read by
-- the Airflow data-quality checks and the Superset dashboards.
-- Applied once by deploy/postgres/migrate.py inside one transaction; never edit this file
-- after it has been applied anywhere (the runner refuses a changed checksum): add 0003_*.sql.
--
-- Row shapes follow proto/datapipelines/commerce/v1/mart.proto, one table per message:
-- a field is a column of the same name; a `Money` field is two columns
-- `<field>_amount_minor` (bigint, minor units) and `<field>_currency_code`; an enum is the
-- value's full name as text (`FUNNEL_STAGE_CART`), checked; a "YYYY-MM-DD" string is a `date`;
-- a Timestamp is a `timestamptz`. Tables keyed by currency carry a generated `currency_code`
-- column (equal to their money fields' currency) so the key is one plain column.
--
-- Every run of the job for day D replaces D's rows of every table below (except job_run,
-- which is a log) in ONE transaction: delete the day, insert the new rows. Re-running a day
-- changes nothing. What "D's rows" means per table is said above each table.

CREATE SCHEMA mart;

-- DailyCategoryRevenue. D's rows: event_date = D.
CREATE TABLE mart.daily_category_revenue (
    event_date                    date   NOT NULL,
    category                      text   NOT NULL,
    order_count                   bigint NOT NULL CHECK (order_count >= 0),
    units_sold                    bigint NOT NULL CHECK (units_sold >= 0),
    gross_revenue_amount_minor    bigint NOT NULL CHECK (gross_revenue_amount_minor >= 0),
    gross_revenue_currency_code   text   NOT NULL CHECK (gross_revenue_currency_code ~ '^[A-Z]{3}$'),
    refunded_amount_minor         bigint NOT NULL CHECK (refunded_amount_minor >= 0),
    refunded_currency_code        text   NOT NULL,
    net_revenue_amount_minor      bigint NOT NULL,
    net_revenue_currency_code     text   NOT NULL,
    currency_code                 text   GENERATED ALWAYS AS (gross_revenue_currency_code) STORED,
    PRIMARY KEY (event_date, category, currency_code),
    CHECK (refunded_currency_code = gross_revenue_currency_code
           AND net_revenue_currency_code = gross_revenue_currency_code),
    CHECK (net_revenue_amount_minor = gross_revenue_amount_minor - refunded_amount_minor)
);

-- DailyFunnelStep. D's rows: event_date = D. `stage_number` is the enum's number (1 = visit
-- ... 5 = purchase), for ordering the steps in charts.
CREATE TABLE mart.daily_funnel_step (
    event_date                    date             NOT NULL,
    stage                         text             NOT NULL CHECK (stage IN (
                                      'FUNNEL_STAGE_VISIT', 'FUNNEL_STAGE_PRODUCT_VIEW', 'FUNNEL_STAGE_CART',
                                      'FUNNEL_STAGE_CHECKOUT', 'FUNNEL_STAGE_PURCHASE')),
    stage_number                  smallint         NOT NULL CHECK (stage_number BETWEEN 1 AND 5),
    session_count                 bigint           NOT NULL CHECK (session_count >= 0),
    visitor_count                 bigint           NOT NULL CHECK (visitor_count >= 0),
    conversion_rate_from_previous double precision NOT NULL CHECK (conversion_rate_from_previous BETWEEN 0 AND 1),
    PRIMARY KEY (event_date, stage)
);

-- DailyTopProduct. D's rows: event_date = D.
CREATE TABLE mart.daily_top_product (
    event_date             date    NOT NULL,
    rank                   integer NOT NULL CHECK (rank >= 1),
    product_id             text    NOT NULL,
    product_name           text    NOT NULL,
    category               text    NOT NULL,
    units_sold             bigint  NOT NULL CHECK (units_sold >= 0),
    revenue_amount_minor   bigint  NOT NULL CHECK (revenue_amount_minor >= 0),
    revenue_currency_code  text    NOT NULL CHECK (revenue_currency_code ~ '^[A-Z]{3}$'),
    view_count             bigint  NOT NULL CHECK (view_count >= 0),
    currency_code          text    GENERATED ALWAYS AS (revenue_currency_code) STORED,
    PRIMARY KEY (event_date, currency_code, rank),
    UNIQUE (event_date, currency_code, product_id)
);

-- CohortRetention. A run for day D rewrites the cells that measure the period containing D
-- (`activity_period_start_date` = D for DAY, the Monday of D's ISO week for WEEK). DAY cells
-- count every order up to and including D; WEEK cells every order loaded up to the end of
-- D's week, so re-running any day of a week gives the same cells, and a week's cells are
-- final once its last day has been loaded.
CREATE TABLE mart.cohort_retention (
    cohort_period              text             NOT NULL CHECK (cohort_period IN (
                                   'COHORT_PERIOD_DAY', 'COHORT_PERIOD_WEEK', 'COHORT_PERIOD_MONTH')),
    cohort_start_date          date             NOT NULL,
    period_offset              integer          NOT NULL CHECK (period_offset >= 0),
    cohort_size                bigint           NOT NULL CHECK (cohort_size > 0),
    retained_count             bigint           NOT NULL CHECK (retained_count >= 0),
    retention_rate             double precision NOT NULL CHECK (retention_rate BETWEEN 0 AND 1),
    activity_period_start_date date             NOT NULL,
    PRIMARY KEY (cohort_period, cohort_start_date, period_offset),
    CHECK (retained_count <= cohort_size)
);

CREATE INDEX cohort_retention_activity_idx ON mart.cohort_retention (cohort_period, activity_period_start_date);

-- CustomerRfm. D's rows: as_of_date = D (every customer with an order up to D, per currency).
CREATE TABLE mart.customer_rfm (
    as_of_date               date    NOT NULL,
    user_id                  text    NOT NULL,
    recency_days             integer NOT NULL CHECK (recency_days >= 0),
    order_count              bigint  NOT NULL CHECK (order_count >= 1),
    monetary_amount_minor    bigint  NOT NULL,
    monetary_currency_code   text    NOT NULL CHECK (monetary_currency_code ~ '^[A-Z]{3}$'),
    recency_score            integer NOT NULL CHECK (recency_score BETWEEN 1 AND 5),
    frequency_score          integer NOT NULL CHECK (frequency_score BETWEEN 1 AND 5),
    monetary_score           integer NOT NULL CHECK (monetary_score BETWEEN 1 AND 5),
    segment                  text    NOT NULL CHECK (segment IN (
                                 'RFM_SEGMENT_CHAMPION', 'RFM_SEGMENT_LOYAL', 'RFM_SEGMENT_POTENTIAL_LOYALIST',
                                 'RFM_SEGMENT_NEW', 'RFM_SEGMENT_AT_RISK', 'RFM_SEGMENT_HIBERNATING',
                                 'RFM_SEGMENT_LOST')),
    currency_code            text    GENERATED ALWAYS AS (monetary_currency_code) STORED,
    PRIMARY KEY (as_of_date, user_id, currency_code)
);

-- SessionSummary. D's rows: event_date = D. Sessions are cut at the end of the UTC day (a
-- run sees one daily partition), so a session spanning midnight is two sessions.
CREATE TABLE mart.session_summary (
    session_id                text        PRIMARY KEY,
    event_date                date        NOT NULL,
    user_id                   text        NOT NULL,
    anonymous_id              text        NOT NULL,
    session_start_time        timestamptz NOT NULL,
    session_end_time          timestamptz NOT NULL,
    event_count               bigint      NOT NULL CHECK (event_count >= 1),
    page_view_count           bigint      NOT NULL CHECK (page_view_count >= 0),
    product_view_count        bigint      NOT NULL CHECK (product_view_count >= 0),
    funnel_stage              text        NOT NULL CHECK (funnel_stage IN (
                                  'FUNNEL_STAGE_VISIT', 'FUNNEL_STAGE_PRODUCT_VIEW', 'FUNNEL_STAGE_CART',
                                  'FUNNEL_STAGE_CHECKOUT', 'FUNNEL_STAGE_PURCHASE')),
    converted                 boolean     NOT NULL,
    order_total_amount_minor  bigint,
    order_total_currency_code text,
    CHECK (session_end_time >= session_start_time),
    CHECK ((order_total_amount_minor IS NULL) = (order_total_currency_code IS NULL)),
    CHECK (converted = (order_total_amount_minor IS NOT NULL))
);

CREATE INDEX session_summary_event_date_idx ON mart.session_summary (event_date);

-- New vs returning customers per day (no contract message yet). A customer is new on D when
-- D is the day of their first order (over every day the job has processed, see
-- customer_daily_order), returning otherwise. D's rows: event_date = D.
CREATE TABLE mart.daily_customer_type (
    event_date                  date   NOT NULL,
    customer_type               text   NOT NULL CHECK (customer_type IN ('NEW', 'RETURNING')),
    currency_code               text   NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    customer_count              bigint NOT NULL CHECK (customer_count >= 0),
    order_count                 bigint NOT NULL CHECK (order_count >= 0),
    gross_revenue_amount_minor  bigint NOT NULL CHECK (gross_revenue_amount_minor >= 0),
    PRIMARY KEY (event_date, customer_type, currency_code)
);

-- Orders and refunds per signed-in customer and day: the history that cohorts, RFM and
-- new/returning are computed from (so a run reads one raw partition, not every past one).
-- D's rows: order_date = D. `gross` is the sum of order totals placed that day, `refunded`
-- the sum of refunds issued that day.
CREATE TABLE mart.customer_daily_order (
    order_date             date   NOT NULL,
    user_id                text   NOT NULL,
    currency_code          text   NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    order_count            bigint NOT NULL CHECK (order_count >= 0),
    gross_amount_minor     bigint NOT NULL CHECK (gross_amount_minor >= 0),
    refunded_amount_minor  bigint NOT NULL CHECK (refunded_amount_minor >= 0),
    PRIMARY KEY (order_date, user_id, currency_code)
);

CREATE INDEX customer_daily_order_user_idx ON mart.customer_daily_order (user_id, order_date);

-- Raw lines the job refused, with the reason; D's rows: event_date = D (the partition day).
-- `line_number` counts from 1 within `source_file`. `raw_line` is the line as read (bytes that
-- are not UTF-8 replaced by U+FFFD), cut to 4096 characters (`raw_line_truncated`).
CREATE TABLE mart.rejected_line (
    event_date          date    NOT NULL,
    source_file         text    NOT NULL,
    line_number         bigint  NOT NULL CHECK (line_number >= 1),
    reason              text    NOT NULL,
    detail              text    NOT NULL DEFAULT '',
    raw_line            text    NOT NULL,
    raw_line_truncated  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (event_date, source_file, line_number)
);

CREATE INDEX rejected_line_reason_idx ON mart.rejected_line (event_date, reason);

-- One row per run of the job (appended, never rewritten): what it read, what it wrote.
-- A successful run's row is written in the same transaction as its marts.
CREATE TABLE mart.job_run (
    run_id          uuid        PRIMARY KEY,
    job             text        NOT NULL,
    event_date      date        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('SUCCEEDED', 'FAILED')),
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    raw_root        text        NOT NULL,
    spark           text        NOT NULL,
    raw_lines       bigint,
    valid_events    bigint,
    rejected_lines  bigint,
    table_rows      jsonb,
    summary         jsonb,
    error           text
);

CREATE INDEX job_run_event_date_idx ON mart.job_run (event_date, finished_at);

-- The application role writes the marts (the job may connect as dp_app) and reads them
-- (dashboards, checks). The migration runner creates dp_app in 0001.
GRANT USAGE ON SCHEMA mart TO dp_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA mart TO dp_app;
