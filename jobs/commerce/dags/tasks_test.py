"""The task functions against real child processes and real (closed) sockets.

The Spark job is stood in for by small shell scripts that behave like its launcher (print a
summary, fail, get killed), because what is tested here is the runner: exit codes, signals,
the summary line, the environment handed down. The real job runs in tests/e2e/commerce_test.py.
"""

import json
import os
import signal
import threading

import pytest

from deploy.common.process import free_port
from jobs.commerce.dags import tasks
from jobs.commerce.dags.settings import resolve


def settings_with(job=None, **env):
    values = {"DP_COMMERCE_POSTGRES_DSN": "host=127.0.0.1 dbname=d user=u password=topsecret"}
    if job:
        values["DP_COMMERCE_JOB"] = str(job)
    values.update(env)
    return resolve(lambda _: None, lambda _: None, values)


def script(tmp_path, body, name="job"):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_the_summary_is_the_last_stdout_line_and_arguments_are_the_job_interface(tmp_path):
    job = script(tmp_path, 'echo "progress on stderr" >&2\necho "starting"\n'
                           'printf \'{"run_id": "r-1", "args": "%s", "dsn": "%s", "pythonpath": "%s"}\\n\' '
                           '"$*" "$DP_COMMERCE_POSTGRES_DSN" "${PYTHONPATH:-unset}"\n')
    os.environ["PYTHONPATH"] = "/somewhere/site-packages"
    try:
        summary = tasks.run_spark_job("2026-01-05", settings_with(job))
    finally:
        del os.environ["PYTHONPATH"]
    assert summary["run_id"] == "r-1"
    assert summary["args"] == ("--day 2026-01-05 --raw-root hdfs://127.0.0.1:8020/raw/commerce/events "
                               "--spark-remote sc://127.0.0.1:15002")
    # The DSN travels in the environment, not on the command line; our Python path does not.
    assert "topsecret" in summary["dsn"] and "topsecret" not in summary["args"]
    assert summary["pythonpath"] == "unset"


def test_a_failing_job_is_a_retryable_error_with_its_last_lines(tmp_path):
    job = script(tmp_path, 'echo "cannot reach sc://127.0.0.1:15002" >&2\nexit 1\n')
    with pytest.raises(tasks.TaskError) as err:
        tasks.run_spark_job("2026-01-05", settings_with(job))
    assert "spark job for 2026-01-05 exited with 1" in str(err.value)
    assert "cannot reach sc://127.0.0.1:15002" in str(err.value)


def test_a_usage_error_is_permanent(tmp_path):
    job = script(tmp_path, 'echo "job: error: --raw-root bad" >&2\nexit 2\n')
    with pytest.raises(tasks.PermanentError) as err:
        tasks.run_spark_job("2026-01-05", settings_with(job))
    assert "--raw-root bad" in str(err.value)


def test_a_killed_job_is_a_retryable_error_naming_the_signal(tmp_path):
    job = script(tmp_path, 'echo started\nexec sleep 60\n')
    started = threading.Event()
    pid = []

    def on_start(child_pid):
        pid.append(child_pid)
        started.set()

    def killer():
        started.wait(10)
        os.kill(pid[0], signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    with pytest.raises(tasks.TaskError) as err:
        tasks.run_spark_job("2026-01-05", settings_with(job), on_start=on_start)
    thread.join()
    assert "was killed by SIGKILL" in str(err.value)


def test_success_without_a_summary_is_an_error(tmp_path):
    job = script(tmp_path, 'echo "done, no json"\n')
    with pytest.raises(tasks.TaskError) as err:
        tasks.run_spark_job("2026-01-05", settings_with(job))
    assert "last stdout line is not the JSON summary: 'done, no json'" in str(err.value)


def test_a_missing_launcher_fails_permanently_and_says_how_to_set_it(tmp_path):
    with pytest.raises(tasks.PermanentError) as err:
        tasks.run_spark_job("2026-01-05", settings_with(None))
    assert "DP_COMMERCE_JOB is not set" in str(err.value)
    with pytest.raises(tasks.PermanentError) as err:
        tasks.run_spark_job("2026-01-05", settings_with(tmp_path / "absent"))
    assert "is not an executable file" in str(err.value)


def test_sensor_treats_unreachable_webhdfs_as_not_ready():
    port = free_port()  # nothing listens there
    assert tasks.partition_ready("2026-01-05", settings_with(DP_WEBHDFS_URL="http://127.0.0.1:%d" % port)) is False


def test_dashboard_refresh_is_skipped_without_superset_and_fails_clearly_when_unreachable():
    assert tasks.refresh_dashboards("2026-01-05", settings_with()) is None
    port = free_port()
    with pytest.raises(tasks.TaskError) as err:
        tasks.refresh_dashboards("2026-01-05", settings_with(DP_SUPERSET_URL="http://127.0.0.1:%d" % port,
                                                             DP_SUPERSET_PASSWORD="pw"))
    assert "refreshing the dashboards for 2026-01-05 failed: Superset at http://127.0.0.1:%d is unreachable" % port \
        in str(err.value)


def test_summary_parsing():
    assert tasks.parse_summary(["x", '{"run_id": "r"}', ""]) == {"run_id": "r"}
    with pytest.raises(tasks.TaskError):
        tasks.parse_summary(['{"run_id": "r"}', "trailing text"])
    assert json.loads('{"a": 1}') == tasks.parse_summary(['{"a": 1}'])
