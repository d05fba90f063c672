"""Settings resolution: Variable, then Connection, then environment, then default; bad values named."""

import datetime

import pytest

from jobs.commerce.dags import settings
from jobs.commerce.dags.settings import ConnectionInfo, SettingsError


def resolve(variables=None, connections=None, env=None):
    variables = variables or {}
    connections = connections or {}
    return settings.resolve(variables.get, connections.get, env or {})


def test_defaults_fit_the_local_stack():
    s = resolve()
    assert s.webhdfs_url == "http://127.0.0.1:9870/webhdfs/v1"
    assert s.raw_root == "hdfs://127.0.0.1:8020/raw/commerce/events"
    assert s.spark_remote == "sc://127.0.0.1:15002"
    assert "user=dp_app" in s.postgres_dsn and "port=5432" in s.postgres_dsn
    assert s.superset_url is None and s.job_launcher is None
    assert s.partition_path("2026-01-05") == "/raw/commerce/events/dt=2026-01-05"
    assert set(s.sources.values()) == {"default"}


def test_environment_overrides_defaults_and_variables_override_environment():
    env = {"DP_WEBHDFS_URL": "http://127.0.0.1:19870", "DP_SPARK_REMOTE": "sc://127.0.0.1:25002",
           "DP_COMMERCE_RAW_ROOT": "hdfs://127.0.0.1:18020/data/shop", "DP_COMMERCE_POSTGRES_DSN": "host=h dbname=d",
           "DP_SUPERSET_URL": "http://127.0.0.1:8088/", "DP_COMMERCE_JOB": "/opt/job"}
    s = resolve(env=env)
    assert s.webhdfs_url == "http://127.0.0.1:19870/webhdfs/v1"  # the REST prefix is added
    assert s.spark_remote == "sc://127.0.0.1:25002"
    assert s.partition_path("2026-01-05") == "/data/shop/dt=2026-01-05"
    assert s.postgres_dsn == "host=h dbname=d"
    assert s.superset_url == "http://127.0.0.1:8088"
    assert s.job_launcher == "/opt/job"
    assert s.sources["spark_remote"] == "env DP_SPARK_REMOTE"

    s = resolve(variables={"commerce_spark_remote": "sc://spark.internal:15002",
                           "commerce_postgres_dsn": "host=db dbname=shop"}, env=env)
    assert s.spark_remote == "sc://spark.internal:15002"
    assert s.postgres_dsn == "host=db dbname=shop"
    assert s.sources["spark_remote"] == "variable commerce_spark_remote"


def test_postgres_connection_wins_over_environment():
    conn = ConnectionInfo(conn_type="postgres", host="db.internal", port=6432, login="etl", password="s3 cret'",
                          schema="shop", extra={"sslmode": "require"})
    s = resolve(connections={"commerce_postgres": conn}, env={"DP_COMMERCE_POSTGRES_DSN": "host=ignored"})
    assert s.postgres_dsn == "host=db.internal port=6432 dbname=shop user=etl password='s3 cret\\'' sslmode=require"
    assert s.sources["postgres_dsn"] == "connection commerce_postgres"
    assert "s3 cret" not in s.describe() and "password=***" in s.describe()


def test_superset_connection_gives_url_and_credentials():
    conn = ConnectionInfo(conn_type="http", host="127.0.0.1", port=8088, login="bi", password="pw")
    s = resolve(connections={"commerce_superset": conn})
    assert (s.superset_url, s.superset_user, s.superset_password) == ("http://127.0.0.1:8088", "bi", "pw")
    s = resolve(env={"DP_SUPERSET_URL": "http://127.0.0.1:8088", "DP_SUPERSET_PASSWORD": "x"})
    assert (s.superset_user, s.superset_password) == ("admin", "x")


@pytest.mark.parametrize("env, message", [
    ({"DP_WEBHDFS_URL": "127.0.0.1:9870"}, "want http://HOST:PORT[/webhdfs/v1]"),
    ({"DP_COMMERCE_RAW_ROOT": "/raw/commerce"}, "raw root '/raw/commerce' (env DP_COMMERCE_RAW_ROOT): want hdfs://"),
    ({"DP_SPARK_REMOTE": "http://127.0.0.1:15002"}, "(env DP_SPARK_REMOTE): want sc://HOST:PORT"),
    ({"DP_SUPERSET_URL": "superset:8088"}, "Superset URL 'superset:8088' (env DP_SUPERSET_URL)"),
])
def test_malformed_settings_say_which_and_where(env, message):
    with pytest.raises(SettingsError) as err:
        resolve(env=env)
    assert message in str(err.value)


def test_redaction_hides_passwords_in_both_dsn_forms():
    assert settings.redact_dsn("host=h password=secret user=u") == "host=h password=*** user=u"
    assert settings.redact_dsn("host=h password='a b' user=u") == "host=h password=*** user=u"
    assert settings.redact_dsn("postgresql://u:secret@h:5432/d") == "postgresql://u:***@h:5432/d"


def test_dag_settings_from_environment():
    s = settings.dag_settings({})
    assert s.start_date == datetime.date(2026, 1, 1)
    assert (s.retries, s.retry_delay, s.max_retry_delay) == (3, datetime.timedelta(minutes=1), datetime.timedelta(minutes=30))
    assert s.sensor_timeout == datetime.timedelta(hours=12)
    s = settings.dag_settings({"DP_COMMERCE_START_DATE": "2026-11-01", "DP_COMMERCE_RETRIES": "5",
                               "DP_COMMERCE_RETRY_DELAY_SECONDS": "2", "DP_COMMERCE_SENSOR_POKE_SECONDS": "5"})
    assert (s.start_date, s.retries, s.retry_delay.total_seconds(), s.sensor_poke_interval.total_seconds()) == \
        (datetime.date(2026, 11, 1), 5, 2.0, 5.0)


@pytest.mark.parametrize("env, message", [
    ({"DP_COMMERCE_START_DATE": "yesterday"}, "DP_COMMERCE_START_DATE='yesterday' is not a day"),
    ({"DP_COMMERCE_RETRIES": "three"}, "DP_COMMERCE_RETRIES='three' is not a whole number"),
    ({"DP_COMMERCE_RETRY_DELAY_SECONDS": "0"}, "DP_COMMERCE_RETRY_DELAY_SECONDS=0 must be at least 1"),
])
def test_bad_dag_settings_fail_with_the_variable_name(env, message):
    with pytest.raises(SettingsError) as err:
        settings.dag_settings(env)
    assert message in str(err.value)
