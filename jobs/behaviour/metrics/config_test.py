"""Settings fail fast with the flag's name; the Flink settings say what the job will do."""

from __future__ import annotations

import pathlib

import pytest

from jobs.behaviour.metrics import config, io

ENV = {"BUILD_WORKSPACE_DIRECTORY": "/ws"}


def test_defaults_fit_the_local_stack():
    cfg = config.from_args([], ENV)
    assert cfg.bootstrap == "127.0.0.1:9092"
    assert cfg.startup_mode == "group-offsets"
    assert cfg.jobmanager is None
    assert cfg.checkpoint_dir == pathlib.Path("/ws/.state/flink/behaviour-metrics/checkpoints")
    assert cfg.windows.session_gap_seconds == 1800
    assert cfg.late_events_topic is None  # the registry's topic, read from contracts.json


def test_environment_then_flags():
    env = dict(ENV, DP_KAFKA_BOOTSTRAP="k:1", DP_BEHAVIOUR_PARALLELISM="3")
    assert config.from_args([], env).parallelism == 3
    assert config.from_args(["--parallelism", "1", "--bootstrap", "x:2"], env).bootstrap == "x:2"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--parallelism", "0"], "--parallelism"),
        (["--jobmanager", "nohostport"], "--jobmanager"),
        (["--allowed-lateness-seconds", "-1"], "--allowed-lateness-seconds"),
        (["--transaction-timeout-ms", "3600000"], "transaction.max.timeout.ms"),
        (["--checkpoint-interval-seconds", "400", "--transaction-timeout-ms", "600000"], "twice the checkpoint"),
        (["--group-id", "a b"], "--group-id"),
        (["--hopping-size-seconds", "300", "--hopping-slide-seconds", "70"], "multiple of its slide"),
    ],
)
def test_bad_values_name_the_flag(argv, message):
    with pytest.raises(config.ConfigError, match=message):
        config.from_args(argv, ENV)


def test_bad_environment_number_names_the_variable():
    with pytest.raises(config.ConfigError, match="DP_BEHAVIOUR_PARALLELISM"):
        config.from_args([], dict(ENV, DP_BEHAVIOUR_PARALLELISM="many"))


def test_flink_settings_exactly_once_and_checkpoints():
    cfg = config.from_args(["--checkpoint-interval-seconds", "5"], ENV)
    settings = io.flink_settings(cfg, ["/jars/a.jar", "/jars/b.jar"])
    assert settings["execution.checkpointing.interval"] == "5000 ms"
    assert settings["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert settings["execution.checkpointing.dir"] == "file:///ws/.state/flink/behaviour-metrics/checkpoints"
    assert settings["pipeline.jars"] == "file:///jars/a.jar;file:///jars/b.jar"
    assert "execution.target" not in settings  # mini-cluster


def test_jobmanager_submits_remotely():
    settings = io.flink_settings(config.from_args(["--jobmanager", "flink-jm:8081"], ENV), [])
    assert (settings["execution.target"], settings["rest.address"], settings["rest.port"]) == ("remote", "flink-jm", "8081")


def test_restore_latest_picks_the_newest_checkpoint(tmp_path):
    cfg = config.from_args(["--state-dir", str(tmp_path), "--restore-from", "latest"], ENV)
    with pytest.raises(FileNotFoundError, match="no completed checkpoint"):
        io.flink_settings(cfg, [])
    older = tmp_path / "checkpoints" / "job1" / "chk-3"
    newer = tmp_path / "checkpoints" / "job2" / "chk-7"
    for directory in (older, newer):
        directory.mkdir(parents=True)
        (directory / "_metadata").write_bytes(b"x")
    settings = io.flink_settings(cfg, [])
    assert settings["execution.state-recovery.path"] == newer.as_uri()


def test_sinks_are_transactional_with_contract_headers():
    contracts = io.Contracts.load()
    assert contracts.events.topic == "behaviour.events.v1"
    metrics_insert, sessions_insert, late_insert = io.insert_statements(contracts)
    assert "'dp.schema', CAST('datapipelines.behaviour.v1.BehaviourMetric' AS BYTES)" in metrics_insert
    assert f"CAST('{contracts.sessions.fingerprint}' AS BYTES)" in sessions_insert
    assert "'dp.late.watermark.ms'" in late_insert
    options = io._sink_options(config.from_args([], ENV), "t", "metrics", "C")
    assert options["sink.delivery-guarantee"] == "exactly-once"
    assert options["sink.transactional-id-prefix"] == "behaviour-metrics-metrics"
