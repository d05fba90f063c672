"""Flags and environment of the marts job: defaults, required settings, refusals."""

import datetime

import pytest

from jobs.commerce.marts import config

DSN = "host=127.0.0.1 dbname=datapipelines user=dp_app"


def test_flags_make_a_config(monkeypatch):
    monkeypatch.delenv("DP_SPARK_MASTER", raising=False)
    cfg = config.parse_config(["--day", "2026-11-20", "--raw-root", "hdfs://127.0.0.1:9000/raw/commerce/events/",
                               "--postgres-dsn", DSN, "--spark-remote", "sc://127.0.0.1:15002"])
    assert cfg.day == datetime.date(2026, 11, 20)
    assert cfg.partition_path == "hdfs://127.0.0.1:9000/raw/commerce/events/dt=2026-11-20"
    assert cfg.spark_remote == "sc://127.0.0.1:15002"
    assert cfg.spark_master is None
    assert cfg.spark_target == "sc://127.0.0.1:15002"


def test_environment_and_local_default(monkeypatch):
    monkeypatch.setenv("DP_COMMERCE_DAY", "2026-01-02")
    monkeypatch.setenv("DP_COMMERCE_RAW_ROOT", "file:///data/raw")
    monkeypatch.setenv("DP_COMMERCE_POSTGRES_DSN", DSN)
    monkeypatch.delenv("DP_SPARK_REMOTE", raising=False)
    monkeypatch.delenv("DP_SPARK_MASTER", raising=False)
    cfg = config.parse_config([])
    assert (cfg.day, cfg.raw_root, cfg.postgres_dsn) == (datetime.date(2026, 1, 2), "file:///data/raw", DSN)
    assert cfg.spark_master == "local[2]"
    assert cfg.parse_whole_stage_codegen is False


def test_under_spark_submit_the_submitted_master_stands(monkeypatch):
    monkeypatch.delenv("DP_SPARK_MASTER", raising=False)
    monkeypatch.delenv("DP_SPARK_REMOTE", raising=False)
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "40123")
    base = ["--day", "2026-11-20", "--postgres-dsn", DSN]
    cfg = config.parse_config(base)
    assert (cfg.spark_master, cfg.spark_remote, cfg.spark_target) == (None, None, "spark-submit")
    assert config.parse_config(base + ["--spark-master", "local[1]"]).spark_master == "local[1]"
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT")
    assert config.parse_config(base).spark_master == "local[2]"


def test_parse_codegen_from_flag_and_environment(monkeypatch):
    monkeypatch.delenv("DP_COMMERCE_PARSE_WHOLE_STAGE_CODEGEN", raising=False)
    base = ["--day", "2026-11-20", "--postgres-dsn", DSN]
    assert config.parse_config(base + ["--parse-whole-stage-codegen"]).parse_whole_stage_codegen is True
    monkeypatch.setenv("DP_COMMERCE_PARSE_WHOLE_STAGE_CODEGEN", "1")
    assert config.parse_config(base).parse_whole_stage_codegen is True
    assert config.parse_config(base + ["--no-parse-whole-stage-codegen"]).parse_whole_stage_codegen is False


@pytest.mark.parametrize("argv, message", [
    (["--raw-root", "file:///r", "--postgres-dsn", DSN], "no day"),
    (["--day", "2026-13-01", "--postgres-dsn", DSN], "want a day as YYYY-MM-DD"),
    (["--day", "2026-11-20", "--raw-root", "file:///r"], "no database"),
    (["--day", "2026-11-20", "--raw-root", "/raw", "--postgres-dsn", DSN], "want hdfs://"),
    (["--day", "2026-11-20", "--postgres-dsn", DSN, "--spark-remote", "127.0.0.1:15002"], "want sc://"),
    (["--day", "2026-11-20", "--postgres-dsn", DSN, "--spark-master", "yarn"], "want local"),
    (["--day", "2026-11-20", "--postgres-dsn", DSN, "--spark-master", "local[2]", "--spark-remote", "sc://x:1"],
     "not allowed with"),
])
def test_refuses_bad_settings(monkeypatch, capsys, argv, message):
    for name in ("DP_COMMERCE_DAY", "DP_COMMERCE_POSTGRES_DSN", "DP_POSTGRES_DSN", "DP_SPARK_REMOTE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        config.parse_config(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
