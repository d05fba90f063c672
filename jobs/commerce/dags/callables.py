"""The Airflow-facing callables of commerce_daily: settings from Airflow, errors as Airflow outcomes.

Each callable reads the day from the task context (`ds`), resolves `RuntimeSettings` through
Airflow Variables and Connections (then environment, then defaults), runs the matching
function of tasks.py, and maps its errors: `TaskError` -> AirflowException (retried with
backoff), `PermanentError` -> AirflowFailException (fails now: a retry would not help).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional

from airflow.sdk import Connection, Variable
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException, AirflowSkipException

from jobs.commerce.dags import tasks
from jobs.commerce.dags.settings import ConnectionInfo, RuntimeSettings, SettingsError, resolve

LOG = logging.getLogger("commerce_daily")
SUBMIT_TASK_ID = "submit_spark_job"
CHECK_TASK_ID = "check_quality"


def _variable(key: str) -> Optional[str]:
    return Variable.get(key, default=None)


def _connection(conn_id: str) -> Optional[ConnectionInfo]:
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    if conn is None:
        return None
    return ConnectionInfo(conn_type=conn.conn_type or "", host=conn.host or "", port=conn.port, login=conn.login or "",
                          password=conn.password or "", schema=conn.schema or "", extra=conn.extra_dejson or {})


def runtime_settings() -> RuntimeSettings:
    try:
        settings = resolve(_variable, _connection)
    except SettingsError as err:
        raise AirflowFailException("commerce_daily is misconfigured: %s" % err) from None
    LOG.info("event=settings %s", settings.describe())
    return settings


def _day(context: dict) -> str:
    day = context.get("ds")
    if not day:
        raise AirflowFailException("this DAG run has no logical date; trigger commerce_daily with one "
                                   "(the day to process), e.g. `airflow dags trigger -l 2026-01-05 commerce_daily`")
    return day


def airflow_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """TaskError -> AirflowException (retry); PermanentError -> AirflowFailException (no retry)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except tasks.PermanentError as err:
            raise AirflowFailException(str(err)) from None
        except tasks.TaskError as err:
            raise AirflowException(str(err)) from None

    return wrapper


@airflow_errors
def wait_for_partition(**context) -> bool:
    return tasks.partition_ready(_day(context), runtime_settings())


@airflow_errors
def submit_spark_job(**context) -> dict:
    """Runs the job; its JSON summary becomes this task's XCom (`run_id` is what the checks read)."""
    return tasks.run_spark_job(_day(context), runtime_settings())


@airflow_errors
def check_quality(**context) -> dict:
    """{"job_run_id", "report"}: which run of the job was checked, and the checks' report."""
    summary = context["ti"].xcom_pull(task_ids=SUBMIT_TASK_ID) or {}
    return tasks.check_quality(_day(context), runtime_settings(), run_id=summary.get("run_id"))


@airflow_errors
def publish(**context) -> None:
    ti = context["ti"]
    day = _day(context)
    checked = ti.xcom_pull(task_ids=CHECK_TASK_ID) or {}
    if not checked.get("job_run_id"):
        raise AirflowFailException("no data-quality result for %s in XCom of %s; clear the DAG run from %s"
                                   % (day, CHECK_TASK_ID, CHECK_TASK_ID))
    tasks.publish(day, runtime_settings(), run_id=checked["job_run_id"], dag_run_id=context["run_id"],
                  quality_report=checked.get("report", ""))


@airflow_errors
def refresh_dashboards(**context) -> Optional[str]:
    day = _day(context)
    result = tasks.refresh_dashboards(day, runtime_settings())
    if result is None:
        raise AirflowSkipException("no Superset configured (Variable commerce_superset_url, Connection "
                                   "commerce_superset or DP_SUPERSET_URL): dashboards not refreshed for %s" % day)
    return result
