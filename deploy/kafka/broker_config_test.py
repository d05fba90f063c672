"""The broker's generated configuration and flags, without starting a JVM."""


import pytest

from deploy.kafka import broker
from deploy.kafka.broker import BrokerConfig


def test_single_node_kraft_properties(tmp_path):
    config = BrokerConfig(state_dir=tmp_path, port=19092, controller_port=19093,
                          overrides=(("num.partitions", "3"),))
    properties = broker.server_properties(config)
    assert properties["process.roles"] == "broker,controller"
    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert properties["log.dirs"] == str(tmp_path / "kafka" / "data")
    assert properties["offsets.topic.replication.factor"] == "1"
    assert properties["auto.create.topics.enable"] == "false"
    assert properties["num.partitions"] == "3"  # overrides win


def test_flags_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DP_KAFKA_PORT", "29092")
    monkeypatch.setenv("DP_STATE_DIR", str(tmp_path))
    config = broker.parse_args(["--controller-port", "29093", "--heap", "256m", "--override", "a.b=c"])
    assert (config.port, config.controller_port, config.heap) == (29092, 29093, "256m")
    assert config.kafka_dir == tmp_path / "kafka"
    assert config.logs == tmp_path / "kafka" / "logs"
    assert config.overrides == (("a.b", "c"),)


def test_state_defaults_to_the_workspace(monkeypatch, tmp_path):
    monkeypatch.delenv("DP_STATE_DIR", raising=False)
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", str(tmp_path))
    assert broker.parse_args([]).state_dir == tmp_path / ".state"


def test_bad_port_environment_is_explained(monkeypatch):
    monkeypatch.setenv("DP_KAFKA_PORT", "nine")
    with pytest.raises(SystemExit, match="DP_KAFKA_PORT='nine' is not a port number"):
        broker.parse_args([])


def test_cluster_ids_look_like_kafkas():
    ids = {broker.new_cluster_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_old_java_is_refused(tmp_path):
    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake.chmod(0o755)
    with pytest.raises(broker.BrokerError, match="Kafka 4 needs Java 17"):
        broker.find_java(str(fake))
