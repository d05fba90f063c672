"""Flags over environment over defaults; bad values stop the process before it starts."""

import pytest

from jobs.iot.aggregator import config


def test_defaults_fit_the_local_stack():
    c = config.load([], environ={})
    assert c.bootstrap == "127.0.0.1:9092" and c.group_id == "iot-aggregator"
    assert c.transactional_id == "iot-aggregator-0"
    settings = c.settings()
    assert settings.grace_us == 30_000_000 and settings.pane_us == 60_000_000
    assert [(w.size_us, w.advance_us) for w in settings.windows] == [(60_000_000, 60_000_000),
                                                                    (300_000_000, 60_000_000)]


def test_environment_then_flags():
    env = {"DP_KAFKA_BOOTSTRAP": "kafka:9092", "DP_IOT_AGGREGATOR_GRACE_SECONDS": "5",
           "DP_IOT_AGGREGATOR_INSTANCE": "b"}
    c = config.load([], environ=env)
    assert (c.bootstrap, c.grace_seconds, c.transactional_id) == ("kafka:9092", 5.0, "iot-aggregator-b")
    c = config.load(["--grace-seconds", "7", "--batch-size", "10"], environ=env)
    assert (c.grace_seconds, c.batch_size) == (7.0, 10)


@pytest.mark.parametrize("argv,message", [
    (["--grace-seconds", "-1"], "--grace-seconds"),
    (["--batch-size", "0"], "--batch-size"),
    (["--group-id", "a b"], "--group-id"),
    (["--hopping-size-seconds", "90"], "windows"),
    (["--http-port", "70000"], "--http-port"),
])
def test_bad_values_fail_fast_naming_the_flag(argv, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(argv, environ={})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(config.ConfigError, match="DP_IOT_AGGREGATOR_BATCH_SIZE"):
        config.load([], environ={"DP_IOT_AGGREGATOR_BATCH_SIZE": "many"})


def test_help_lists_flags_and_environment(capsys):
    with pytest.raises(SystemExit) as exit_:
        config.load(["--help"], environ={})
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--grace-seconds" in out and "DP_KAFKA_BOOTSTRAP" in out
