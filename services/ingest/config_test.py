"""Settings: defaults for the local stack, environment, flags, and fail-fast checks."""

import pathlib

import pytest

from services.ingest import config


def test_defaults_run_the_local_stack():
    settings = config.load([], env={"BUILD_WORKSPACE_DIRECTORY": "/ws"})
    assert (settings.host, settings.port, settings.bootstrap) == ("127.0.0.1", 50051, "127.0.0.1:9092")
    assert settings.metrics_port == config.DEFAULT_METRICS_PORT
    assert settings.api_keys_file == pathlib.Path("/ws/.state/ingest/api_keys.jsonl")
    assert settings.api_keys_file_is_default
    assert settings.tls_cert is None
    assert settings.limits == config.Limits()


def test_environment_then_flags():
    env = {"DP_INGEST_PORT": "6000", "DP_KAFKA_BOOTSTRAP": "k:1", "DP_INGEST_API_KEYS_FILE": "/keys.jsonl",
           "DP_INGEST_MAX_BATCH_EVENTS": "50", "DP_INGEST_METRICS_PORT": "-1"}
    settings = config.load([], env=env)
    assert (settings.port, settings.bootstrap, settings.limits.max_batch_events) == (6000, "k:1", 50)
    assert settings.api_keys_file == pathlib.Path("/keys.jsonl") and not settings.api_keys_file_is_default
    assert settings.metrics_port is None
    assert config.load(["--port", "7000"], env=env).port == 7000


def test_bad_settings_fail_fast(tmp_path, capsys):
    with pytest.raises(SystemExit):
        config.load(["--tls-cert", str(tmp_path / "missing.pem")], env={})
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config.load(["--max-in-flight-events", "10", "--max-batch-events", "100"], env={})
    with pytest.raises(SystemExit):
        config.load([], env={"DP_INGEST_PORT": "http"})


def test_describe_names_the_essentials():
    text = config.load([], env={}).describe()
    assert "listen=127.0.0.1:50051" in text and "tls=off" in text and "bootstrap=127.0.0.1:9092" in text
