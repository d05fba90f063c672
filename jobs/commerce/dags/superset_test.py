"""SupersetClient's handling of answers, against a small HTTP server on loopback.

What a real Superset 6.1 answers (login, CSRF, datasets, invalidation, warm-up) is tested in
deploy/superset/server_test.py against the real server; here only the answers that server
cannot be made to give on demand: a failed chart query, a body that is not JSON, an answer
from something that is not Superset.
"""

import http.server
import json
import threading

import pytest

from jobs.commerce.dags.superset import SupersetClient, SupersetError, SupersetLoginError

DATASETS = {"result": [
    {"id": 1, "table_name": "daily_funnel_step", "schema": "mart", "database": {"database_name": "marts"}},
    {"id": 2, "table_name": "elsewhere", "schema": "public", "database": {"database_name": "marts"}},
]}


class Handler(http.server.BaseHTTPRequestHandler):
    routes = {}
    calls = []

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.calls.append((self.command, self.path.split("?")[0], json.loads(body) if body else None))
        status, payload = self.routes.get((self.command, self.path.split("?")[0]), (404, {"message": "Not found"}))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *_args):
        pass


@pytest.fixture
def server():
    Handler.routes = {
        ("POST", "/api/v1/security/login"): (200, {"access_token": "t"}),
        ("GET", "/api/v1/security/csrf_token/"): (200, {"result": "c"}),
        ("GET", "/api/v1/dataset/"): (200, DATASETS),
        ("POST", "/api/v1/cachekey/invalidate"): (201, {}),
        ("PUT", "/api/v1/dataset/warm_up_cache"): (200, {"result": [
            {"chart_id": 7, "viz_error": None, "viz_status": "success"},
            {"chart_id": 8, "viz_error": "relation \"mart.x\" does not exist", "viz_status": "failed"},
            {"chart_id": 9, "viz_error": None, "viz_status": None},
        ]}),
    }
    Handler.calls = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d" % httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_only_mart_datasets_are_refreshed_and_failed_charts_are_named(server):
    report = SupersetClient(server, "admin", "pw", timeout=10).refresh()
    assert report.datasets == ["daily_funnel_step"]
    assert report.charts_warmed == 1
    assert report.chart_errors == [
        'chart 8 on daily_funnel_step: relation "mart.x" does not exist',
        "chart 9 on daily_funnel_step: query status unknown",
    ]
    assert ("POST", "/api/v1/cachekey/invalidate", {"datasource_uids": ["1__table"]}) in Handler.calls
    assert ("PUT", "/api/v1/dataset/warm_up_cache", {"db_name": "marts", "table_name": "daily_funnel_step"}) \
        in Handler.calls
    assert report.describe() == ("1 datasets on schema mart invalidated, 1 charts warmed, 2 failed: "
                                 'chart 8 on daily_funnel_step: relation "mart.x" does not exist; '
                                 "chart 9 on daily_funnel_step: query status unknown")


def test_a_refused_login_names_the_user_and_where_the_password_comes_from(server):
    Handler.routes[("POST", "/api/v1/security/login")] = (401, {"message": "Not authorized"})
    with pytest.raises(SupersetLoginError) as err:
        SupersetClient(server, "admin", "wrong", timeout=10).refresh()
    assert str(err.value) == ("Superset at %s refused the login of user 'admin' (HTTP 401): check the login and "
                              "password of Connection commerce_superset or DP_SUPERSET_USER/DP_SUPERSET_PASSWORD"
                              % server)


def test_an_answer_that_is_not_json_is_a_superset_error(server):
    Handler.routes[("POST", "/api/v1/security/login")] = (200, b"<html>a proxy's login page</html>")
    with pytest.raises(SupersetError) as err:
        SupersetClient(server, "admin", "pw", timeout=10).refresh()
    assert "answered HTTP 200 with something that is not a JSON object (is %s a Superset?)" % server in str(err.value)


def test_no_password_is_refused_before_any_request(server):
    with pytest.raises(SupersetLoginError) as err:
        SupersetClient(server, "admin", "").refresh()
    assert "no Superset password" in str(err.value)
    assert Handler.calls == []
