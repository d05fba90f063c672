"""Runs the commerce DAG's dashboard refresh in the Airflow Python set, for server_test.py.

    refresh_probe client URL USER     SupersetClient(URL, USER, $DP_SUPERSET_PASSWORD).refresh()
    refresh_probe task DAY            tasks.refresh_dashboards(DAY, settings from the environment:
                                      DP_SUPERSET_URL, DP_SUPERSET_USER, DP_SUPERSET_PASSWORD)

server_test.py runs in the core set beside the Superset it starts; the refresh code runs inside
Airflow (jobs/commerce/dags, @py_airflow), so the test calls it through this child process. The
last stdout line is one JSON object: {"outcome": "ok", "report": {...}} for the client,
{"outcome": "ok", "description": ...} for the task, or {"outcome": "error", "type": the
exception class, "classes": it and its bases, "message": its text} for the errors the callers
are meant to handle (SupersetError, TaskError, PermanentError). Anything else escapes with its traceback and exit 1, which the test
reports as a failure: a wrong password or a stopped Superset must never end that way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from jobs.commerce.dags import tasks
from jobs.commerce.dags.settings import resolve
from jobs.commerce.dags.superset import SupersetClient, SupersetError


def main(argv) -> int:
    if len(argv) == 3 and argv[0] == "client":
        try:
            report = SupersetClient(argv[1], argv[2], os.environ.get("DP_SUPERSET_PASSWORD", "")).refresh()
        except SupersetError as err:
            return emit(error(err))
        return emit({"outcome": "ok", "report": dataclasses.asdict(report), "description": report.describe()})
    if len(argv) == 2 and argv[0] == "task":
        settings = resolve(lambda _name: None, lambda _conn_id: None, os.environ)
        try:
            description = tasks.refresh_dashboards(argv[1], settings)
        except (tasks.TaskError, tasks.PermanentError) as err:
            return emit(error(err))
        return emit({"outcome": "ok", "description": description})
    print(__doc__, file=sys.stderr)
    return 2


def error(err: Exception) -> dict:
    """The outcome of a handled error: its class, the classes it is an instance of, its text."""
    classes = [c.__name__ for c in type(err).__mro__ if c not in (BaseException, Exception, object)]
    return {"outcome": "error", "type": type(err).__name__, "classes": classes, "message": str(err)}


def emit(result: dict) -> int:
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
