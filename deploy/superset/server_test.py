"""`bazel run //deploy/superset:server` for real: PostgreSQL with known mart rows, the launcher,
Superset's REST API.

One Superset per module (start-up is the expensive part). Each chart's saved query context runs
through the chart data API and must return exactly the rows worked out by hand from
testing.py's inserts; then a second start on the same state directory must find everything in
place (no duplicate dashboards or charts, same IDs) and still answer.
"""

import math
import signal

import pytest

from deploy.superset.testing import RestClient, as_date, marts_with_rows, superset  # noqa: F401 (fixtures)

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
