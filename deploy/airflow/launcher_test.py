"""The environment every Airflow process gets: loopback, the state directory, kept secrets, PATH."""

import json
import os
import stat
import subprocess
import sys

from deploy.airflow import launcher


def config(tmp_path, **kwargs):
    return launcher.AirflowConfig(state_dir=tmp_path / "airflow", api_port=18080, worker_log_port=18793,
                                  trigger_log_port=18794, **kwargs)


def test_everything_points_at_loopback_and_the_state_dir(tmp_path):
    env = launcher.airflow_env(config(tmp_path), base={"PATH": "/usr/bin"})
    home = str(tmp_path / "airflow")
    assert env["AIRFLOW_HOME"] == home
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "sqlite:///%s/airflow.db" % home
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:18080"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert (env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"], env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"]) == \
        ("18793", "18794")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"].endswith("jobs/commerce/dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"
    assert env["PATH"] == "%s/bin:/usr/bin" % home


def test_a_database_url_replaces_sqlite(tmp_path):
    env = launcher.airflow_env(config(tmp_path, database_url="postgresql+psycopg://a@h/airflow"), base={})
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg://a@h/airflow"


def test_secrets_and_password_are_made_once_and_kept(tmp_path):
    first = launcher.airflow_env(config(tmp_path), base={})
    second = launcher.airflow_env(config(tmp_path), base={})
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY",
                "DP_AIRFLOW_ADMIN_PASSWORD"):
        assert first[key] and first[key] == second[key], key
    secrets_file = tmp_path / "airflow" / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    passwords = tmp_path / "airflow" / "simple_auth_manager_passwords.json"
    assert json.loads(passwords.read_text()) == {"admin": first["DP_AIRFLOW_ADMIN_PASSWORD"]}
    # A password given in the config replaces the kept one, in the file the auth manager reads.
    third = launcher.airflow_env(config(tmp_path, admin_password="chosen"), base={})
    assert third["DP_AIRFLOW_ADMIN_PASSWORD"] == "chosen"
    assert json.loads(passwords.read_text()) == {"admin": "chosen"}


def test_the_airflow_wrapper_runs_this_interpreter(tmp_path):
    env = launcher.airflow_env(config(tmp_path), base={"PATH": os.environ["PATH"]})
    wrapper = tmp_path / "airflow" / "bin" / "airflow"
    assert os.access(wrapper, os.X_OK)
    assert "exec '%s' -m airflow" % sys.executable in wrapper.read_text()
    # Through PATH, as Airflow starts its subcommands; `python -c` stands in for `-m airflow`.
    probe = subprocess.run(["sh", "-c", "command -v airflow"], env=env, stdout=subprocess.PIPE, text=True)
    assert probe.stdout.strip() == str(wrapper)


def test_the_job_launcher_comes_from_config_unless_the_environment_sets_it(tmp_path):
    job = tmp_path / "job"
    job.write_text("#!/bin/sh\n")
    env = launcher.airflow_env(config(tmp_path, job_launcher=job), base={})
    assert env["DP_COMMERCE_JOB"] == str(job)
    env = launcher.airflow_env(config(tmp_path, job_launcher=job), base={"DP_COMMERCE_JOB": "/elsewhere/job"})
    assert env["DP_COMMERCE_JOB"] == "/elsewhere/job"


def test_zero_ports_become_free_ports(tmp_path):
    picked = launcher.with_free_ports(launcher.AirflowConfig(state_dir=tmp_path, api_port=0))
    ports = {picked.api_port, picked.worker_log_port, picked.trigger_log_port}
    assert len(ports) == 3 and 0 not in ports
    kept = launcher.with_free_ports(launcher.AirflowConfig(state_dir=tmp_path, api_port=18080, worker_log_port=1,
                                                           trigger_log_port=2))
    assert (kept.api_port, kept.worker_log_port, kept.trigger_log_port) == (18080, 1, 2)


def test_health_document_interpretation():
    healthy = {k: {"status": "healthy"} for k in launcher.HEALTH_KEYS}
    assert launcher.unhealthy(healthy) == []
    assert launcher.unhealthy(None) == ["api-server"]
    assert launcher.unhealthy(dict(healthy, scheduler={"status": "unhealthy"})) == ["scheduler"]
