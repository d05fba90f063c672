import pathlib

import pytest

from datapipelines import topics
from deploy.connect import worker
from deploy.connect.worker import WorkerConfig


def test_internal_topics_and_converters_come_from_the_registry():
    properties = worker.worker_properties(WorkerConfig(state_dir=pathlib.Path("/s"), bootstrap="127.0.0.1:19092",
                                                       rest_port=18083))
    assert properties["bootstrap.servers"] == "127.0.0.1:19092"
    assert properties["config.storage.topic"] == topics.CONNECT_CONFIGS.name
    assert properties["offset.storage.topic"] == topics.CONNECT_OFFSETS.name
    assert properties["status.storage.topic"] == topics.CONNECT_STATUS.name
    assert properties["offset.storage.partitions"] == str(topics.CONNECT_OFFSETS.partitions)
    assert properties["listeners"] == "http://127.0.0.1:18083"
    assert properties["value.converter"] == worker.JSON_CONVERTER
    assert properties["value.converter.schemas.enable"] == "false"
    assert properties["key.converter.schemas.enable"] == "false"
    assert properties["plugin.path"] == "/s/connect/plugins"
    assert properties["exactly.once.source.support"] == "enabled"
    assert worker.internal_topics() == (topics.CONNECT_CONFIGS, topics.CONNECT_OFFSETS, topics.CONNECT_STATUS)


def test_exactly_once_off_and_overrides_win():
    properties = worker.worker_properties(WorkerConfig(
        state_dir=pathlib.Path("/s"), exactly_once=False, overrides=(("offset.flush.interval.ms", "1000"),)))
    assert properties["exactly.once.source.support"] == "disabled"
    assert properties["offset.flush.interval.ms"] == "1000"


def test_plugin_directory_leaves_out_what_the_worker_provides(tmp_path):
    names = [
        "io.debezium.debezium-connector-postgres-3.7.0.Final.jar",
        "org.postgresql.postgresql-42.7.13.jar",
        "com.fasterxml.jackson.core.jackson-databind-2.21.2.jar",
        "org.apache.kafka.connect-api-4.3.1.jar",
        "org.apache.kafka.kafka-clients-4.3.1.jar",
        "org.slf4j.slf4j-api-1.7.36.jar",
        "com.github.luben.zstd-jni-1.5.6-10.jar",
        "at.yawk.lz4.lz4-java-1.10.2.jar",
        "org.xerial.snappy.snappy-java-1.1.10.7.jar",
    ]
    source = tmp_path / "jars"
    source.mkdir()
    for name in names:
        (source / name).write_bytes(name.encode())
    kept = worker.plugin_jars_for([str(source / name) for name in names])
    assert [pathlib.Path(jar).name for jar in kept] == names[:3]

    plugins = tmp_path / "plugins"
    (plugins / worker.DEBEZIUM_PLUGIN).mkdir(parents=True)
    (plugins / worker.DEBEZIUM_PLUGIN / "stale-1.0.jar").write_bytes(b"old")
    directory = worker.lay_out_plugin(plugins, kept)
    assert sorted(p.name for p in directory.iterdir()) == sorted(names[:3])
    assert not (directory / "stale-1.0.jar").exists()


def test_flags_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DP_CONNECT_PORT", "18083")
    monkeypatch.setenv("DP_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    config = worker.parse_args([])
    assert (config.rest_port, config.bootstrap, config.state_dir) == (18083, "127.0.0.1:19092", tmp_path)
    assert config.exactly_once
    config = worker.parse_args(["--rest-port", "28083", "--no-exactly-once", "--group-id", "g"])
    assert (config.rest_port, config.exactly_once, config.group_id) == (28083, False, "g")
    monkeypatch.setenv("DP_CONNECT_PORT", "http")
    with pytest.raises(SystemExit, match="DP_CONNECT_PORT='http' is not a port number"):
        worker.parse_args([])


def test_defaults_are_the_local_stack(monkeypatch):
    for name in ("DP_STATE_DIR", "DP_CONNECT_PORT", "DP_KAFKA_BOOTSTRAP", "DP_CONNECT_EXACTLY_ONCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", "/ws")
    config = worker.parse_args([])
    assert (config.bootstrap, config.rest_port, config.state_dir) == ("127.0.0.1:9092", 8083, pathlib.Path("/ws/.state"))
    assert config.connect_dir == pathlib.Path("/ws/.state/connect")
