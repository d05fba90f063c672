"""Settings: defaults, environment, flags over environment, fail-fast checks, the API key."""

import pytest

from services.ws_gateway import config


@pytest.fixture
def key_env(tmp_path):
    key = tmp_path / ".state" / "ingest" / "dev-api-key"
    key.parent.mkdir(parents=True)
    key.write_text("dpk_abc_secret\n")
    return {"BUILD_WORKSPACE_DIRECTORY": str(tmp_path)}


def test_defaults_use_the_local_dev_key(key_env):
    s = config.load([], env=key_env)
    assert (s.host, s.port, s.ingest_target) == ("127.0.0.1", 8765, "127.0.0.1:50051")
    assert s.api_key == "dpk_abc_secret" and "dev-api-key" in s.api_key_source
    assert s.tenant == "dev" and s.users == 10 and s.rate == 20 and s.duration == 0
    assert "secret" not in s.describe() and "secret" not in repr(s)


def test_environment_then_flags(key_env):
    env = dict(key_env, DP_WS_PORT="9000", DP_WS_USERS="3", DP_WS_RATE="5.5", DP_WS_INGEST_TARGET="h:1",
               DP_WS_LATE_FRACTION="0.1", DP_WS_API_KEY="dpk_env")
    s = config.load([], env=env)
    assert (s.port, s.users, s.rate, s.ingest_target, s.late_fraction, s.api_key) == (9000, 3, 5.5, "h:1", 0.1, "dpk_env")
    s = config.load(["--port", "0", "--users", "0", "--duration", "2"], env=env)
    assert (s.port, s.users, s.duration) == (0, 0, 2)


def test_api_key_file_flag(tmp_path):
    path = tmp_path / "k"
    path.write_text("dpk_file\n")
    assert config.load(["--api-key-file", str(path)], env={}).api_key == "dpk_file"


def test_missing_key_says_where_to_get_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        config.load([], env={"BUILD_WORKSPACE_DIRECTORY": str(tmp_path)})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no ingestion API key" in err and "DP_WS_API_KEY" in err and "bazel run //services/ingest" in err


@pytest.mark.parametrize("argv,message", [
    (["--rate", "0"], "--rate must be positive"),
    (["--late-fraction", "2"], "--late-fraction must be within 0..1"),
    (["--users", "-1"], "--users must not be negative"),
    (["--batch-size", "500", "--queue-events", "100"], "--queue-events must be at least --batch-size"),
    (["--ingest-target", "nohostport"], "--ingest-target must be host:port"),
    (["--exit-after-emulation"], "--exit-after-emulation needs --users and --duration"),
])
def test_bad_settings_fail_fast(key_env, argv, message, capsys):
    with pytest.raises(SystemExit):
        config.load(argv, env=key_env)
    assert message in capsys.readouterr().err


def test_bad_environment_number(key_env):
    with pytest.raises(SystemExit, match="DP_WS_RATE"):
        config.load([], env=dict(key_env, DP_WS_RATE="fast"))


def test_settings_are_frozen(key_env):
    s = config.load([], env=key_env)
    with pytest.raises(Exception):
        s.port = 1
