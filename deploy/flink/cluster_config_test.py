"""The Flink cluster launcher's configuration and flags, without starting a JVM."""

import pytest

from deploy.flink import cluster
from deploy.flink.cluster import FlinkClusterConfig


def test_loopback_session_cluster_settings(tmp_path):
    config = FlinkClusterConfig(state_dir=tmp_path, rest_port=28081, rpc_port=26123)
    settings = cluster.configuration(config)
    assert settings["rest.port"] == "28081"
    assert settings["jobmanager.rpc.port"] == "26123"
    assert {settings[k] for k in ("jobmanager.bind-host", "taskmanager.bind-host", "rest.bind-address")} == {"127.0.0.1"}
    assert settings["taskmanager.numberOfTaskSlots"] == "2"
    assert settings["classloader.resolve-order"] == "parent-first"
    assert settings["env.log.dir"] == str(tmp_path / "flink-cluster" / "log")
    assert config.jobmanager == "127.0.0.1:28081"


def test_yaml_quotes_values():
    text = cluster._yaml({"env.java.opts.all": "--add-opens=a=b -X", "rest.port": "1"})
    assert 'env.java.opts.all: "--add-opens=a=b -X"' in text
    assert 'rest.port: "1"' in text


def test_flags_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DP_FLINK_REST_PORT", "38081")
    config = cluster.parse_args(["--state-dir", str(tmp_path), "--taskmanagers", "3", "--slots", "1"])
    assert (config.rest_port, config.taskmanagers, config.slots_per_taskmanager) == (38081, 3, 1)
    assert config.cluster_dir == tmp_path / "flink-cluster"
    assert config.restart_taskmanagers
    with pytest.raises(SystemExit, match="at least 1"):
        cluster.parse_args(["--taskmanagers", "0"])


def test_flink_home_is_the_pyflink_distribution():
    home = cluster.flink_home()
    assert (home / "bin" / "taskmanager.sh").is_file()
    assert any(home.joinpath("lib").glob("flink-dist-*.jar"))
