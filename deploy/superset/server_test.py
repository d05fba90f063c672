"""`bazel run //deploy/superset:server` for real: PostgreSQL with known mart rows, the launcher,
Superset's REST API.

One Superset per module (start-up is the expensive part). Each chart's saved query context runs
through the chart data API and must return exactly the rows worked out by hand from
testing.py's inserts. Then the commerce DAG's last task runs against it (jobs/commerce/dags,
through refresh_probe in the Airflow Python set): a new mart row the cached charts do not show
yet, the refresh, and every chart answering from the cache with the new row; a wrong password
and a stopped Superset end in the errors the DAG handles. A second start on the same state
directory must find everything in place (no duplicate dashboards or charts, same IDs).
"""

import json
import math
import os
import signal
import sqlite3
import subprocess

import psycopg
import pytest

from deploy.common.service import runfile
from deploy.superset.testing import (  # noqa: F401 (fixtures)
    ADMIN,
    ADMIN_PASSWORD,
    RestClient,
    as_date,
    marts_with_rows,
    superset,
)

SLUGS = {"commerce-revenue", "commerce-funnel", "commerce-cohorts", "commerce-top-products", "commerce-rfm"}


DATE_KEYS = ("event_date", "cohort_start_date")


def canonical(values, keys):
    """One row as a tuple: dates as ISO text, every number as a float (PostgreSQL's SUM of a
    bigint is numeric, which may come back as 12 or 12.0)."""
    out = []
    for key, value in zip(keys, values):
        if key in DATE_KEYS:
            out.append(as_date(value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(float(value))
        else:
            out.append(value)
    return tuple(out)


# What every chart must return, worked out by hand from testing.py's rows: (keys, rows).
EXPECTED = {
    "Units sold": (["units_sold"], [(12,)]),
    "Net revenue by category and currency": (
        ["category", "currency_code", "net_revenue"],
        [("Books", "EUR", 60.0), ("Books", "USD", 25.0), ("Electronics", "EUR", 1750.0)],
    ),
    "Revenue by day, category and currency": (
        ["event_date", "category", "currency_code", "orders", "units_sold", "gross_revenue", "refunded", "net_revenue"],
        [
            ("2026-03-01", "Books", "EUR", 2, 4, 60.0, 0.0, 60.0),
            ("2026-03-01", "Electronics", "EUR", 3, 5, 1500.0, 200.0, 1300.0),
            ("2026-03-02", "Books", "USD", 1, 2, 30.0, 5.0, 25.0),
            ("2026-03-02", "Electronics", "EUR", 1, 1, 450.0, 0.0, 450.0),
        ],
    ),
    "Sessions per funnel stage": (
        ["stage", "sessions"],
        [("FUNNEL_STAGE_CART", 30), ("FUNNEL_STAGE_CHECKOUT", 16), ("FUNNEL_STAGE_PRODUCT_VIEW", 90),
         ("FUNNEL_STAGE_PURCHASE", 8), ("FUNNEL_STAGE_VISIT", 150)],
    ),
    "Funnel steps by day": (
        ["event_date", "stage_number", "sessions", "visitors", "conversion_from_previous"],
        [
            ("2026-03-01", 1, 100, 80, 1.0), ("2026-03-01", 2, 60, 50, 0.6), ("2026-03-01", 3, 20, 18, 0.333333),
            ("2026-03-01", 4, 10, 9, 0.5), ("2026-03-01", 5, 5, 5, 0.5),
            ("2026-03-02", 1, 50, 40, 1.0), ("2026-03-02", 2, 30, 25, 0.6), ("2026-03-02", 3, 10, 9, 0.333333),
            ("2026-03-02", 4, 6, 6, 0.6), ("2026-03-02", 5, 3, 3, 0.5),
        ],
    ),
    "Daily cohort retention": (
        ["cohort_start_date", "period_offset", "cohort_size", "retained", "retention_rate"],
        [("2026-03-01", 0, 4, 4, 1.0), ("2026-03-01", 1, 4, 1, 0.25), ("2026-03-02", 0, 2, 2, 1.0)],
    ),
    "Retention by cohort and day offset": (
        ["cohort_start_date", "period_offset", "retention_rate"],
        [("2026-03-01", 0, 1.0), ("2026-03-01", 1, 0.25), ("2026-03-02", 0, 1.0)],
    ),
    "Top products by revenue": (
        ["product_id", "product_name", "category", "currency_code", "revenue", "units_sold", "views"],
        [
            ("SKU-1", "Laptop", "Electronics/Computers", "EUR", 1650.0, 3, 39),
            ("SKU-2", "Headphones", "Electronics/Audio", "EUR", 300.0, 3, 12),
            ("SKU-9", "Novel", "Books/Fiction", "USD", 30.0, 2, 4),
        ],
    ),
    "Revenue of the top products": (
        ["product_name", "revenue"],
        [("Headphones", 300.0), ("Laptop", 1650.0), ("Novel", 30.0)],
    ),
    "Customers by RFM segment": (
        ["segment", "customers"],
        [("RFM_SEGMENT_AT_RISK", 1), ("RFM_SEGMENT_CHAMPION", 1), ("RFM_SEGMENT_NEW", 2)],
    ),
    "RFM segments": (
        ["segment", "currency_code", "customers", "mean_recency_days", "orders", "monetary"],
        [
            ("RFM_SEGMENT_AT_RISK", "EUR", 1, 20.0, 3, 120.0),
            ("RFM_SEGMENT_CHAMPION", "EUR", 1, 1.0, 2, 950.0),
            ("RFM_SEGMENT_NEW", "EUR", 1, 0.0, 1, 30.0),
            ("RFM_SEGMENT_NEW", "USD", 1, 0.0, 1, 25.0),
        ],
    ),
}


@pytest.fixture(scope="module")
def client(superset):  # noqa: F811 (the fixture above)
    return RestClient(superset.url)


def test_login_and_the_provisioned_objects(client):
    dashboards = client.get_all("dashboard")
    assert {d["slug"] for d in dashboards} == SLUGS
    assert len(dashboards) == len(SLUGS)
    charts = client.charts_by_name()
    assert set(charts) == set(EXPECTED)
    databases = client.get_all("database")
    assert [d["database_name"] for d in databases] == ["Data Pipelines marts"]
    # The connection reaches PostgreSQL with the configured credentials.
    schemas = client.request("GET", "/api/v1/database/%d/schemas/" % databases[0]["id"])["result"]
    assert "mart" in schemas


@pytest.mark.parametrize("chart_name", sorted(EXPECTED))
def test_chart_data_matches_the_mart_rows(client, chart_name):
    chart = client.charts_by_name()[chart_name]
    keys, expected = EXPECTED[chart_name]
    rows = client.chart_data(chart["id"])
    assert rows, "%s returned no rows" % chart_name
    got = sorted(canonical([row[k] for k in keys], keys) for row in rows)
    want = sorted(canonical(row, keys) for row in expected)
    assert len(got) == len(want), (chart_name, got)
    for got_row, want_row in zip(got, want):
        for got_value, want_value in zip(got_row, want_row):
            if isinstance(want_value, float):
                assert math.isclose(got_value, want_value, abs_tol=1e-6), (chart_name, got_row, want_row)
            else:
                assert got_value == want_value, (chart_name, got_row, want_row)


# --- the DAG's dashboard refresh (jobs/commerce/dags/superset.py, tasks.refresh_dashboards) ---------

PROBE = "deploy/superset/refresh_probe"
NEW_DAY_ROW = ("2026-03-03", "Garden", 1, 7, 7000, "EUR", 0, "EUR", 7000, "EUR")


def refresh_probe(*args, **env):
    """Runs the refresh in the Airflow set; its JSON outcome. A traceback fails the test."""
    child_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RUNFILES_DIR", "PYTHONSAFEPATH")}
    child_env.update(env)
    done = subprocess.run([str(runfile(PROBE))] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=child_env, timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, (done.returncode, done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def cached_result(client, chart_id):
    """The chart's saved query as a dashboard view runs it: from the cache when it is there."""
    (result,) = client.request("GET", "/api/v1/chart/%d/data/" % chart_id)["result"]
    return result


def cache_key_rows(superset):  # noqa: F811
    """(datasource_uid, created_on) of every cache key Superset recorded in its metadata (SQLite;
    row ids are reused after a delete, the creation time to the microsecond is not)."""
    db = superset.state_dir / "superset" / "superset.db"
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as conn:
        return conn.execute("SELECT datasource_uid, created_on FROM cache_keys").fetchall()


def units_sold(result):
    return [float(row["units_sold"]) for row in result["data"]]


def test_refresh_invalidates_every_mart_dataset_and_warms_every_chart(superset, client, marts_with_rows):  # noqa: F811
    charts = client.get_all("chart")
    mart_datasets = {d["id"]: d["table_name"] for d in client.get_all("dataset") if d["schema"] == "mart"}
    assert len(mart_datasets) == 5
    assert {c["datasource_id"] for c in charts} == set(mart_datasets)
    units_chart = client.charts_by_name()["Units sold"]["id"]

    # Dashboard views fill the cache (one key per chart query, recorded per dataset).
    for chart in charts:
        cached_result(client, chart["id"])
    assert cached_result(client, units_chart)["is_cached"] is True
    assert units_sold(cached_result(client, units_chart)) == [12.0]
    keys_before = cache_key_rows(superset)
    assert {uid for uid, _ in keys_before} == {"%d__table" % i for i in mart_datasets}

    # A new day lands in the marts: the cached charts do not show it until the refresh.
    insert = ("INSERT INTO mart.daily_category_revenue (event_date, category, order_count, units_sold, "
              "gross_revenue_amount_minor, gross_revenue_currency_code, refunded_amount_minor, refunded_currency_code, "
              "net_revenue_amount_minor, net_revenue_currency_code) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
    with psycopg.connect(marts_with_rows.app_dsn, autocommit=True) as conn:
        conn.execute(insert, NEW_DAY_ROW)
    try:
        assert units_sold(cached_result(client, units_chart)) == [12.0]

        outcome = refresh_probe("client", superset.url, ADMIN, DP_SUPERSET_PASSWORD=ADMIN_PASSWORD)
        assert outcome["outcome"] == "ok", outcome
        report = outcome["report"]
        assert sorted(report["datasets"]) == sorted(mart_datasets.values())
        assert report["chart_errors"] == []
        assert report["charts_warmed"] == len(charts) == 11

        # Invalidated: every key recorded before the refresh is gone; warmed: every chart
        # answers from the cache, with rows, and the new row is in them.
        keys_after = cache_key_rows(superset)
        assert min(created for _, created in keys_after) > max(created for _, created in keys_before)
        assert {uid for uid, _ in keys_after} == {"%d__table" % i for i in mart_datasets}
        for chart in charts:
            result = cached_result(client, chart["id"])
            assert result["is_cached"] is True, chart["slice_name"]
            assert result["data"], chart["slice_name"]
        assert units_sold(cached_result(client, units_chart)) == [19.0]
    finally:
        with psycopg.connect(marts_with_rows.app_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM mart.daily_category_revenue WHERE event_date = %s", [NEW_DAY_ROW[0]])


def test_refresh_with_a_wrong_password_is_a_clear_superset_error(superset):  # noqa: F811
    outcome = refresh_probe("client", superset.url, ADMIN, DP_SUPERSET_PASSWORD="not-the-password")
    assert outcome["outcome"] == "error" and "SupersetError" in outcome["classes"], outcome
    assert outcome["type"] == "SupersetLoginError"  # configuration: the task does not retry it
    assert "refused the login of user 'admin' (HTTP 401)" in outcome["message"]
    assert "DP_SUPERSET_PASSWORD" in outcome["message"]


def test_the_airflow_task_refreshes_the_live_server(superset):  # noqa: F811
    outcome = refresh_probe("task", "2026-03-02", DP_SUPERSET_URL=superset.url, DP_SUPERSET_USER=ADMIN,
                            DP_SUPERSET_PASSWORD=ADMIN_PASSWORD)
    assert outcome == {"outcome": "ok",
                       "description": "5 datasets on schema mart invalidated, 11 charts warmed, 0 failed"}
    # A refused login is configuration: the task fails without Airflow retrying it.
    wrong = refresh_probe("task", "2026-03-02", DP_SUPERSET_URL=superset.url, DP_SUPERSET_PASSWORD="wrong")
    assert wrong["type"] == "PermanentError", wrong
    assert wrong["message"].startswith("refreshing the dashboards for 2026-03-02 failed: Superset at %s refused "
                                       "the login" % superset.url), wrong


def test_second_start_is_idempotent_and_sigterm_stops_gracefully(superset, client):  # noqa: F811
    before_dashboards = {d["slug"]: d["id"] for d in client.get_all("dashboard")}
    before_charts = {c["slice_name"]: c["id"] for c in client.get_all("chart")}

    superset.process.process.send_signal(signal.SIGTERM)
    assert superset.process.process.wait(90) == 0, superset.process.log_text()[-3000:]
    assert "superset stopped" in superset.process.log_text()

    superset.process = superset.start_again("launcher-2.log")
    again = RestClient(superset.url)
    assert {d["slug"]: d["id"] for d in again.get_all("dashboard")} == before_dashboards
    assert {c["slice_name"]: c["id"] for c in again.get_all("chart")} == before_charts
    assert len(again.get_all("dataset")) == 5
    assert len(again.get_all("database")) == 1
    assert [float(row["units_sold"]) for row in again.chart_data(before_charts["Units sold"])] == [12.0]
    # The second bootstrap skipped `superset init` (same Superset version, same state).
    second = superset.state_dir / "launcher-2.log"
    text = second.read_text(errors="replace")
    assert "superset bootstrap: import assets done" in text
    assert "superset bootstrap: init ..." not in text


def test_the_airflow_task_fails_readably_when_superset_is_stopped(superset):  # noqa: F811
    assert superset.process.terminate() == 0
    outcome = refresh_probe("task", "2026-03-02", DP_SUPERSET_URL=superset.url, DP_SUPERSET_PASSWORD=ADMIN_PASSWORD)
    assert outcome["type"] == "TaskError", outcome
    assert outcome["message"] == (
        "refreshing the dashboards for 2026-03-02 failed: Superset at %s is unreachable (POST "
        "/api/v1/security/login: [Errno 111] Connection refused); is it running? (bazel run "
        "//deploy/superset:server)" % superset.url)
