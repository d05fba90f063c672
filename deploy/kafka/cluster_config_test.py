"""The cluster profile's node configurations and flags, without starting a JVM."""

import pytest

from deploy.kafka import broker, cluster
from deploy.kafka.cluster import ClusterConfig


def test_three_combined_nodes_in_a_static_quorum(tmp_path):
    config = cluster.with_base_port(tmp_path, 39092)
    assert config.bootstrap == "127.0.0.1:39092,127.0.0.1:39093,127.0.0.1:39094"
    nodes = [broker.server_properties(config.node_config(i, "id")) for i in (1, 2, 3)]
    voters = "1@127.0.0.1:39192,2@127.0.0.1:39193,3@127.0.0.1:39194"
    for node_id, properties in enumerate(nodes, start=1):
        assert properties["node.id"] == str(node_id)
        assert properties["process.roles"] == "broker,controller"
        assert properties["controller.quorum.voters"] == voters
        assert "controller.quorum.bootstrap.servers" not in properties
        assert properties["default.replication.factor"] == "3"
        assert properties["min.insync.replicas"] == "2"
        assert properties["offsets.topic.replication.factor"] == "3"
        assert properties["transaction.state.log.min.isr"] == "2"
        assert properties["num.partitions"] == "3"
    assert nodes[1]["listeners"] == "PLAINTEXT://127.0.0.1:39093,CONTROLLER://127.0.0.1:39193"
    assert len({p["log.dirs"] for p in nodes}) == 3


def test_single_broker_defaults_are_unchanged(tmp_path):
    properties = broker.server_properties(broker.BrokerConfig(state_dir=tmp_path))
    assert properties["node.id"] == "1"
    assert "controller.quorum.voters" not in properties
    assert properties["default.replication.factor"] == "1"


@pytest.mark.parametrize("settings, message", [
    (dict(replication_factor=4), "replication factor 4"),
    (dict(min_insync_replicas=3, replication_factor=2), "min.insync.replicas 3"),
    (dict(ports=(1, 2, 3), controller_ports=(3, 4, 5)), "distinct"),
])
def test_inconsistent_settings_are_refused(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        ClusterConfig(state_dir=tmp_path, **settings)


def test_flags_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DP_KAFKA_CLUSTER_BASE_PORT", "49092")
    config = cluster.parse_args(["--state-dir", str(tmp_path), "--kafka-heap", "256m"])
    assert config.ports == (49092, 49093, 49094)
    assert config.controller_ports == (49192, 49193, 49194)
    assert config.heap == "256m"
    assert config.cluster_dir == tmp_path / "kafka-cluster"
    with pytest.raises(SystemExit, match="min.insync.replicas"):
        cluster.parse_args(["--kafka-min-insync-replicas", "5"])


def test_a_cluster_node_needs_the_cluster_id(tmp_path):
    config = cluster.with_base_port(tmp_path, 39092).node_config(2, "")
    with pytest.raises(broker.BrokerError, match="needs the cluster's id"):
        broker.KafkaBroker(config)._format_once("java", tmp_path / "server.properties")
