"""Refreshing the commerce dashboards through Superset's REST API after a day is published.

Log in (JWT), fetch a CSRF token, find the datasets on schema `mart`, invalidate their cached
query results, then warm the cache of every chart built on them, so the next dashboard view
shows the new day without waiting for a query. Charts that fail to warm are reported by name.

This only means something when Superset caches chart results and records their keys
(deploy/superset/superset_config.py does both; with Superset's default null cache both calls
succeed and change nothing). Tested against the real Superset 6.1 in
//deploy/superset:server_test.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import requests

MART_SCHEMA = "mart"


class SupersetError(RuntimeError):
    """Superset refused or failed a request; the message names the endpoint and Superset's reason."""


class SupersetLoginError(SupersetError):
    """No password, or Superset refused the login: configuration, which a retry cannot fix."""


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
        except requests.ConnectionError as err:
            raise SupersetError("Superset at %s is unreachable (%s %s: %s); is it running? (bazel run "
                                "//deploy/superset:server)" % (self.base_url, method, path, _reason(err))) from None
        except requests.RequestException as err:
            raise SupersetError("Superset at %s is unreachable (%s %s: %s)"
                                % (self.base_url, method, path, _reason(err))) from None
        if response.status_code >= 400:
            raise SupersetError("Superset %s %s answered HTTP %d: %s"
                                % (method, path, response.status_code, response.text[:500]))
        if not response.content:
            return {}
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise SupersetError("Superset %s %s answered HTTP %d with something that is not a JSON object "
                                "(is %s a Superset?): %r" % (method, path, response.status_code, self.base_url,
                                                             response.text[:200]))
        return body

    def login(self) -> None:
        if not self.password:
            raise SupersetLoginError("no Superset password: set the password of Connection commerce_superset "
                                     "or DP_SUPERSET_PASSWORD")
        body = {"username": self.username, "password": self.password, "provider": "db", "refresh": True}
        try:
            answer = self._call("POST", "/api/v1/security/login", json=body)
        except SupersetError as err:
            if "answered HTTP 401" in str(err):
                raise SupersetLoginError("Superset at %s refused the login of user %r (HTTP 401): check the login "
                                         "and password of Connection commerce_superset or DP_SUPERSET_USER/"
                                         "DP_SUPERSET_PASSWORD" % (self.base_url, self.username)) from None
            raise
        token = answer.get("access_token")
        if not token:
            raise SupersetError("Superset at %s answered the login without an access token: %s"
                                % (self.base_url, str(answer)[:300]))
        self.session.headers["Authorization"] = "Bearer " + token
        csrf = self._call("GET", "/api/v1/security/csrf_token/").get("result", "")
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
                status = str(chart.get("viz_status") or "").lower()
                if chart.get("viz_error") or status != "success":
                    report.chart_errors.append("chart %s on %s: %s" % (
                        chart.get("chart_id"), dataset["table_name"],
                        chart.get("viz_error") or "query status %s" % (status or "unknown")))
                else:
                    report.charts_warmed += 1
        return report


def _reason(err: requests.RequestException) -> str:
    """The innermost cause of a requests error ("[Errno 111] Connection refused"), not its wrappers."""
    cause: BaseException = err
    seen = set()
    while True:
        inner = cause.__context__ or cause.__cause__ or (cause.args[0] if cause.args and
                                                          isinstance(cause.args[0], BaseException) else None)
        reason = getattr(cause, "reason", None)
        if isinstance(reason, BaseException):
            inner = reason
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        cause = inner
    text = str(cause)
    # urllib3 prefixes the connection object: "<urllib3.connection.HTTPConnection object at 0x..>: Failed ..."
    if text.startswith("<") and ">: " in text:
        text = text.split(">: ", 1)[1]
    return text or type(cause).__name__
