"""Test helpers for deploy/superset: known mart rows, the launcher as a child, a REST client.

    from deploy.superset.testing import marts_with_rows, superset  # noqa: F401 (fixtures)

`marts_with_rows` is a real PostgreSQL server (tests/fixtures/postgres_server.py, migrated, so
schema `mart` exists) holding the handful of rows below, inserted as the application role the
dashboards read with. `superset` (module scope: one server per test module, start-up costs
~1 min) runs `//deploy/superset:server` against it on a free loopback port with a temporary
state directory. The rows are written here, not by the Spark job (tested elsewhere), so every
chart's expected values can be worked out by hand: see EXPECTED_* in the tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.cookiejar
import json
import pathlib
import urllib.error
import urllib.request
from typing import Dict, Iterator, List, Optional

import psycopg
import pytest

from deploy.common.process import free_port
from deploy.common.service import ServiceProcess
from tests.fixtures.postgres_server import start_server

ADMIN = "admin"
ADMIN_PASSWORD = "superset-test-admin"

DAY1, DAY2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)

CATEGORY_REVENUE = [
    # event_date, category, orders, units, gross, gross cur, refunded, refunded cur, net, net cur
    (DAY1, "Electronics", 3, 5, 150000, "EUR", 20000, "EUR", 130000, "EUR"),
    (DAY1, "Books", 2, 4, 6000, "EUR", 0, "EUR", 6000, "EUR"),
    (DAY2, "Electronics", 1, 1, 45000, "EUR", 0, "EUR", 45000, "EUR"),
    (DAY2, "Books", 1, 2, 3000, "USD", 500, "USD", 2500, "USD"),
]
FUNNEL = [
    # event_date, stage, stage_number, sessions, visitors, conversion from previous
    (DAY1, "FUNNEL_STAGE_VISIT", 1, 100, 80, 1.0),
    (DAY1, "FUNNEL_STAGE_PRODUCT_VIEW", 2, 60, 50, 0.6),
    (DAY1, "FUNNEL_STAGE_CART", 3, 20, 18, 20 / 60),
    (DAY1, "FUNNEL_STAGE_CHECKOUT", 4, 10, 9, 0.5),
    (DAY1, "FUNNEL_STAGE_PURCHASE", 5, 5, 5, 0.5),
    (DAY2, "FUNNEL_STAGE_VISIT", 1, 50, 40, 1.0),
    (DAY2, "FUNNEL_STAGE_PRODUCT_VIEW", 2, 30, 25, 0.6),
    (DAY2, "FUNNEL_STAGE_CART", 3, 10, 9, 10 / 30),
    (DAY2, "FUNNEL_STAGE_CHECKOUT", 4, 6, 6, 0.6),
    (DAY2, "FUNNEL_STAGE_PURCHASE", 5, 3, 3, 0.5),
]
COHORTS = [
    # period, cohort start, offset, size, retained, rate, activity period start
    ("COHORT_PERIOD_DAY", DAY1, 0, 4, 4, 1.0, DAY1),
    ("COHORT_PERIOD_DAY", DAY1, 1, 4, 1, 0.25, DAY2),
    ("COHORT_PERIOD_DAY", DAY2, 0, 2, 2, 1.0, DAY2),
    # A weekly cell: the daily charts must leave it out.
    ("COHORT_PERIOD_WEEK", dt.date(2026, 2, 23), 0, 6, 6, 1.0, dt.date(2026, 2, 23)),
]
TOP_PRODUCTS = [
    # event_date, rank, product_id, name, category, units, revenue, currency, views
    (DAY1, 1, "SKU-1", "Laptop", "Electronics/Computers", 2, 120000, "EUR", 30),
    (DAY1, 2, "SKU-2", "Headphones", "Electronics/Audio", 3, 30000, "EUR", 12),
    (DAY2, 1, "SKU-1", "Laptop", "Electronics/Computers", 1, 45000, "EUR", 9),
    (DAY2, 1, "SKU-9", "Novel", "Books/Fiction", 2, 3000, "USD", 4),
]
RFM = [
    # as_of_date, user, recency days, orders, monetary, currency, R, F, M, segment
    (DAY1, "u1", 0, 1, 50000, "EUR", 5, 3, 5, "RFM_SEGMENT_CHAMPION"),  # an older day: not shown
    (DAY2, "u1", 1, 2, 95000, "EUR", 4, 5, 5, "RFM_SEGMENT_CHAMPION"),
    (DAY2, "u2", 0, 1, 3000, "EUR", 5, 3, 2, "RFM_SEGMENT_NEW"),
    (DAY2, "u3", 0, 1, 2500, "USD", 5, 3, 1, "RFM_SEGMENT_NEW"),
    (DAY2, "u4", 20, 3, 12000, "EUR", 1, 5, 3, "RFM_SEGMENT_AT_RISK"),
]

INSERTS = [
    ("INSERT INTO mart.daily_category_revenue (event_date, category, order_count, units_sold, "
     "gross_revenue_amount_minor, gross_revenue_currency_code, refunded_amount_minor, refunded_currency_code, "
     "net_revenue_amount_minor, net_revenue_currency_code) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
     CATEGORY_REVENUE),
    ("INSERT INTO mart.daily_funnel_step (event_date, stage, stage_number, session_count, visitor_count, "
     "conversion_rate_from_previous) VALUES (%s, %s, %s, %s, %s, %s)", FUNNEL),
    ("INSERT INTO mart.cohort_retention (cohort_period, cohort_start_date, period_offset, cohort_size, "
     "retained_count, retention_rate, activity_period_start_date) "
     "VALUES (%s, %s, %s, %s, %s, %s, %s)", COHORTS),
    ("INSERT INTO mart.daily_top_product (event_date, rank, product_id, product_name, category, units_sold, "
     "revenue_amount_minor, revenue_currency_code, view_count) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
     TOP_PRODUCTS),
    ("INSERT INTO mart.customer_rfm (as_of_date, user_id, recency_days, order_count, monetary_amount_minor, "
     "monetary_currency_code, recency_score, frequency_score, monetary_score, segment) "
     "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", RFM),
]


@pytest.fixture(scope="module")
def marts_with_rows(tmp_path_factory):
    """A migrated PostgreSQL whose mart tables hold exactly the rows above."""
    server = start_server(tmp_path_factory.mktemp("postgres"))
    try:
        with psycopg.connect(server.app_dsn) as conn:
            with conn.cursor() as cur:
                for statement, rows in INSERTS:
                    cur.executemany(statement, rows)
        yield server
    finally:
        server.stop()


def database_uri(postgres) -> str:
    """The SQLAlchemy URI Superset uses: the application role over TCP."""
    return "postgresql+psycopg2://dp_app:%s@127.0.0.1:%d/datapipelines" % (postgres.app_password, postgres.port)


@dataclasses.dataclass
class Superset:
    url: str
    state_dir: pathlib.Path
    process: ServiceProcess
    database_uri: str

    def start_again(self, log_name: str) -> ServiceProcess:
        """Another launcher on the same state directory and port (the previous one stopped)."""
        return start_launcher(self.state_dir, int(self.url.rsplit(":", 1)[1]), self.database_uri, log_name)


def start_launcher(state_dir: pathlib.Path, port: int, uri: str, log_name: str) -> ServiceProcess:
    service = ServiceProcess(
        "superset",
        ["deploy/superset/server", "--port", str(port), "--state-dir", str(state_dir), "--database-uri", uri],
        state_dir / log_name,
        health_url="http://127.0.0.1:%d/health" % port,
        env={"DP_SUPERSET_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    # The first start migrates the metadata (~13 s) and runs `superset init` (~18 s) on 2 cores
    # shared with other work: be generous, the test asserts behaviour, not speed.
    service.start(timeout=420)
    return service


@pytest.fixture(scope="module")
def superset(marts_with_rows, tmp_path_factory) -> Iterator[Superset]:
    state_dir = tmp_path_factory.mktemp("superset-state")
    port = free_port()
    uri = database_uri(marts_with_rows)
    service = start_launcher(state_dir, port, uri, "launcher.log")
    instance = Superset("http://127.0.0.1:%d" % port, state_dir, service, uri)
    try:
        yield instance
    finally:
        instance.process.terminate()


class RestClient:
    """Superset's REST API as the admin: JWT from /api/v1/security/login, JSON in and out."""

    def __init__(self, url: str, username: str = ADMIN, password: str = ADMIN_PASSWORD):
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        body = self.request("POST", "/api/v1/security/login",
                            {"username": username, "password": password, "provider": "db", "refresh": False},
                            auth=False)
        self.token = body["access_token"]

    def request(self, method: str, path: str, payload: Optional[dict] = None, auth: bool = True) -> dict:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:  # a GET with a JSON content type and no body is a 400 in Superset
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with self.opener.open(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise AssertionError("%s %s -> HTTP %d: %s" % (method, path, err.code, err.read()[:2000])) from None

    def get_all(self, resource: str) -> List[dict]:
        query = "(page_size:100)"
        return self.request("GET", "/api/v1/%s/?q=%s" % (resource, query))["result"]

    def charts_by_name(self) -> Dict[str, dict]:
        return {chart["slice_name"]: chart for chart in self.get_all("chart")}

    def chart_data(self, chart_id: int) -> List[dict]:
        """Rows of the chart's saved query context (what the dashboard's refresh runs)."""
        body = self.request("GET", "/api/v1/chart/%d/data/?force=true" % chart_id)
        (result,) = body["result"]
        return result["data"]


def as_date(value) -> str:
    """A temporal value as Superset's JSON gives it (epoch ms or ISO text) as YYYY-MM-DD."""
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value / 1000, tz=dt.timezone.utc).date().isoformat()
    return str(value)[:10]
