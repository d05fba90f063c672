"""Settings: defaults, environment, flags, and fail-fast checks."""

import pathlib

import pytest

from services.analytics import config


def test_defaults_make_the_local_stack_work():
    settings = config.load([], env={"BUILD_WORKSPACE_DIRECTORY": "/ws"})
    assert settings.bootstrap == "127.0.0.1:9092"
    assert settings.port == 8400
    assert settings.data_dir == pathlib.Path("/ws/.state/analytics")
    assert settings.clickhouse is None
    assert settings.group == "analytics-sink"


def test_environment_then_flags():
    env = {"DP_KAFKA_BOOTSTRAP": "k:1", "DP_ANALYTICS_PORT": "9001", "DP_ANALYTICS_DATA": "/data",
           "DP_ANALYTICS_BATCH_SIZE": "10"}
    settings = config.load([], env=env)
    assert (settings.bootstrap, settings.port, settings.data_dir, settings.batch_size) == \
        ("k:1", 9001, pathlib.Path("/data"), 10)
    assert config.load(["--port", "9002", "--bootstrap", "x:2"], env=env).port == 9002


def test_server_mode_takes_the_password_from_the_environment():
    settings = config.load(["--clickhouse-url", "https://reader:inurl@ch.example:8443/analytics"],
                           env={"DP_CLICKHOUSE_PASSWORD": "fromenv"})
    address = settings.clickhouse
    assert (address.host, address.port, address.user, address.password, address.database, address.secure) == \
        ("ch.example", 8443, "reader", "fromenv", "analytics", True)
    assert "fromenv" not in settings.describe() and "inurl" not in settings.describe()
    assert settings.database == "analytics"


@pytest.mark.parametrize("argv", [
    ["--batch-size", "0"], ["--batch-max-ms", "1"], ["--port", "70000"], ["--clickhouse-url", "tcp://x:9000"],
])
def test_bad_settings_fail_fast(argv, capsys):
    with pytest.raises(SystemExit):
        config.load(argv, env={})
    assert "analytics: error:" in capsys.readouterr().err


def test_help_names_every_environment_variable(capsys):
    with pytest.raises(SystemExit):
        config.load(["--help"], env={})
    text = capsys.readouterr().out
    for name in ("DP_KAFKA_BOOTSTRAP", "DP_ANALYTICS_PORT", "DP_ANALYTICS_DATA", "DP_CLICKHOUSE_URL",
                 "DP_CLICKHOUSE_PASSWORD"):
        assert name in text
