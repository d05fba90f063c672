"""Refreshing the commerce dashboards through Superset's REST API after a day is published.

Log in (JWT), fetch a CSRF token, find the datasets on schema `mart`, invalidate their cached
query results, then warm the cache of every chart built on them, so the next dashboard view
shows the new day without waiting for a query. Charts that fail to warm are reported by name.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import requests

MART_SCHEMA = "mart"


class SupersetError(RuntimeError):
    """Superset refused or failed a request; the message names the endpoint and Superset's reason."""


@dataclasses.dataclass
class RefreshReport:
    datasets: List[str] = dataclasses.field(default_factory=list)
    charts_warmed: int = 0
    chart_errors: List[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        return "%d datasets on schema %s invalidated, %d charts warmed, %d failed%s" % (
            len(self.datasets), MART_SCHEMA, self.charts_warmed, len(self.chart_errors),
            (": " + "; ".join(self.chart_errors)) if self.chart_errors else "")


class SupersetClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 60.0,
                 session: Optional[requests.Session] = None):
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self.session = session or requests.Session()

    def _call(self, method: str, path: str, **kwargs) -> Dict:
        url = self.base_url + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as err:
            raise SupersetError("Superset at %s is unreachable (%s %s: %s)" % (self.base_url, method, path, err)) from None
        if response.status_code >= 400:
            raise SupersetError("Superset %s %s answered HTTP %d: %s"
                                % (method, path, response.status_code, response.text[:500]))
        return response.json() if response.content else {}

    def login(self) -> None:
        if not self.password:
            raise SupersetError("no Superset password: set the password of Connection commerce_superset "
                                "or DP_SUPERSET_PASSWORD")
        body = {"username": self.username, "password": self.password, "provider": "db", "refresh": True}
        token = self._call("POST", "/api/v1/security/login", json=body)["access_token"]
        self.session.headers["Authorization"] = "Bearer " + token
        csrf = self._call("GET", "/api/v1/security/csrf_token/")["result"]
        self.session.headers["X-CSRFToken"] = csrf
        self.session.headers["Referer"] = self.base_url

    def mart_datasets(self) -> List[Dict]:
        query = "(filters:!((col:schema,opr:eq,value:%s)),page:0,page_size:100)" % MART_SCHEMA
        result = self._call("GET", "/api/v1/dataset/", params={"q": query})["result"]
        return [d for d in result if d.get("schema") == MART_SCHEMA]

    def refresh(self) -> RefreshReport:
        """Invalidate and warm every chart on a `mart` dataset."""
        self.login()
        report = RefreshReport()
        datasets = self.mart_datasets()
        if not datasets:
            return report
        uids = ["%d__table" % d["id"] for d in datasets]
        self._call("POST", "/api/v1/cachekey/invalidate", json={"datasource_uids": uids})
        for dataset in datasets:
            report.datasets.append(dataset["table_name"])
            body = {"db_name": dataset["database"]["database_name"], "table_name": dataset["table_name"]}
            for chart in self._call("PUT", "/api/v1/dataset/warm_up_cache", json=body).get("result", []):
                if chart.get("viz_error"):
                    report.chart_errors.append("chart %s on %s: %s" % (chart.get("chart_id"), dataset["table_name"],
                                                                        chart["viz_error"]))
                else:
                    report.charts_warmed += 1
        return report
