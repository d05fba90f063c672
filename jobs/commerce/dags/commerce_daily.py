"""commerce_daily: one day of shop events from HDFS to the published commerce marts.

    wait_for_partition >> submit_spark_job >> check_quality >> publish >> refresh_dashboards

- `wait_for_partition`: WebHDFS sensor on <raw root>/dt=<day>/_SUCCESS (reschedule mode: no
  worker slot is held while waiting).
- `submit_spark_job`: the commerce marts job (jobs/commerce/marts) as a child process against
  the Spark Connect server; it replaces the day in PostgreSQL schema `mart` atomically.
- `check_quality`: row counts against the raw partition and the job's run log, no negative
  revenue, a monotone funnel, gross revenue reconciled with the raw orders.
- `publish`: upserts the day into mart.published_day, which the dashboards filter on.
- `refresh_dashboards`: invalidates and warms Superset's charts on schema `mart`; skipped when
  no Superset is configured.

The logical date is the day processed: the run of day D starts once D is over (data interval
[D, D+1)), catch-up runs the missed days in order, one run at a time. Configuration:
jobs/commerce/dags/README.md. This file only wires; the work is in tasks.py.
"""

import datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, CronDataIntervalTimetable

from jobs.commerce.dags import callables
from jobs.commerce.dags.settings import dag_settings

SETTINGS = dag_settings()

with DAG(
    dag_id="commerce_daily",
    description="HDFS shop events -> Spark marts -> quality checks -> published PostgreSQL marts -> Superset",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=datetime.datetime.combine(SETTINGS.start_date, datetime.time(), tzinfo=datetime.timezone.utc),
    catchup=True,
    max_active_runs=1,
    dagrun_timeout=datetime.timedelta(days=1),
    default_args={
        "owner": "data-pipelines",
        "retries": SETTINGS.retries,
        "retry_delay": SETTINGS.retry_delay,
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": SETTINGS.max_retry_delay,
        "depends_on_past": False,
    },
    tags=["commerce", "batch"],
    doc_md=__doc__,
) as dag:
    wait_for_partition = PythonSensor(
        task_id="wait_for_partition",
        python_callable=callables.wait_for_partition,
        mode="reschedule",
        poke_interval=SETTINGS.sensor_poke_interval,
        timeout=SETTINGS.sensor_timeout,
    )
    submit_spark_job = PythonOperator(
        task_id=callables.SUBMIT_TASK_ID,
        python_callable=callables.submit_spark_job,
        execution_timeout=SETTINGS.job_timeout,
    )
    check_quality = PythonOperator(
        task_id=callables.CHECK_TASK_ID,
        python_callable=callables.check_quality,
        execution_timeout=datetime.timedelta(hours=1),
    )
    publish = PythonOperator(
        task_id="publish",
        python_callable=callables.publish,
        execution_timeout=datetime.timedelta(minutes=10),
    )
    refresh_dashboards = PythonOperator(
        task_id="refresh_dashboards",
        python_callable=callables.refresh_dashboards,
        execution_timeout=datetime.timedelta(minutes=30),
    )

    wait_for_partition >> submit_spark_job >> check_quality >> publish >> refresh_dashboards
