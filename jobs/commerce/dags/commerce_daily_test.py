"""The DAG folder as Airflow's DagBag loads it: no import errors, and the DAG is shaped as designed."""

import datetime
import os
import pathlib
import sys
import tempfile

# Airflow reads its home when first imported: keep it inside the test's own directory.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-", dir=os.environ.get("TEST_TMPDIR")))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"

import pytest  # noqa: E402
from airflow.dag_processing.dagbag import DagBag  # noqa: E402

DAGS_FOLDER = pathlib.Path(__file__).absolute().parent
EXPECTED_CHAIN = ["wait_for_partition", "submit_spark_job", "check_quality", "publish", "refresh_dashboards"]


def load(monkeypatch, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for name in [m for m in sys.modules if m.startswith("jobs.commerce.dags")]:
        del sys.modules[name]  # re-read DP_* settings at parse time
    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture
def bag(monkeypatch):
    return load(monkeypatch)


def test_the_folder_imports_cleanly_and_holds_only_the_dag(bag):
    assert bag.import_errors == {}
    assert list(bag.dags) == ["commerce_daily"]
    # Helpers and tests are ignored by .airflowignore; only the DAG file is parsed.
    assert [pathlib.Path(stat.file).name for stat in bag.dagbag_stats] == ["commerce_daily.py"]


def test_parsing_does_not_import_spark(bag):
    assert bag.dags
    assert not [m for m in sys.modules if m == "pyspark" or m.startswith("pyspark.")]


def test_daily_with_catch_up_and_one_active_run(bag):
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    dag = bag.dags["commerce_daily"]
    timetable = coerce_to_core_timetable(dag.timetable)
    assert type(timetable).__name__ == "CronDataIntervalTimetable"
    assert timetable.summary == "0 0 * * *"
    # Catch-up starts at the start date; the run of day D covers [D, D+1), its logical date
    # (`ds`, the day the tasks process) is D, and it is due once D is over.
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    first = timetable.next_dagrun_info(last_automated_data_interval=None,
                                       restriction=TimeRestriction(earliest=start, latest=None, catchup=True))
    assert first.logical_date == start
    assert (first.data_interval.start, first.data_interval.end) == (start, start + datetime.timedelta(days=1))
    assert first.run_after == start + datetime.timedelta(days=1)
    second = timetable.next_dagrun_info(last_automated_data_interval=first.data_interval,
                                        restriction=TimeRestriction(earliest=start, latest=None, catchup=True))
    assert second.logical_date == start + datetime.timedelta(days=1)
    assert dag.catchup is True
    assert dag.max_active_runs == 1
    assert dag.start_date == start


def test_task_graph_is_one_chain(bag):
    dag = bag.dags["commerce_daily"]
    assert sorted(dag.task_ids) == sorted(EXPECTED_CHAIN)
    for upstream, downstream in zip(EXPECTED_CHAIN, EXPECTED_CHAIN[1:]):
        assert dag.get_task(downstream).upstream_task_ids == {upstream}
    assert dag.get_task(EXPECTED_CHAIN[0]).upstream_task_ids == set()


def test_retries_back_off_and_the_sensor_gives_its_slot_back(bag):
    dag = bag.dags["commerce_daily"]
    for task in dag.tasks:
        assert task.retries == 3, task.task_id
        assert task.retry_delay == datetime.timedelta(minutes=1)
        assert task.retry_exponential_backoff == 2.0
        assert task.max_retry_delay == datetime.timedelta(minutes=30)
        assert task.execution_timeout is not None or task.task_id == "wait_for_partition"
    sensor = dag.get_task("wait_for_partition")
    assert sensor.mode == "reschedule"
    assert sensor.timeout == datetime.timedelta(hours=12).total_seconds()
    assert sensor.poke_interval == datetime.timedelta(minutes=5).total_seconds()
    assert dag.get_task("submit_spark_job").execution_timeout == datetime.timedelta(hours=2)


def test_environment_shapes_the_dag_at_parse_time(monkeypatch):
    bag = load(monkeypatch, DP_COMMERCE_START_DATE="2026-11-20", DP_COMMERCE_RETRIES="1",
               DP_COMMERCE_RETRY_DELAY_SECONDS="2", DP_COMMERCE_SENSOR_POKE_SECONDS="5")
    dag = bag.dags["commerce_daily"]
    assert dag.start_date == datetime.datetime(2026, 11, 20, tzinfo=datetime.timezone.utc)
    task = dag.get_task("submit_spark_job")
    assert (task.retries, task.retry_delay) == (1, datetime.timedelta(seconds=2))
    assert dag.get_task("wait_for_partition").poke_interval == 5


def test_a_bad_setting_is_an_import_error_naming_it(monkeypatch):
    bag = load(monkeypatch, DP_COMMERCE_RETRIES="many")
    assert not bag.dags
    (message,) = bag.import_errors.values()
    assert "DP_COMMERCE_RETRIES='many' is not a whole number" in message
