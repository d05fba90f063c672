"""The cluster's configuration and flags, without starting a JVM."""

import xml.etree.ElementTree as ElementTree

import pytest

from deploy.hdfs import cluster
from deploy.hdfs.cluster import DataNodePorts, HdfsConfig


def parse_xml(text: str) -> dict:
    root = ElementTree.fromstring(text)
    return {prop.findtext("name"): prop.findtext("value") for prop in root.iter("property")}


def test_defaults_are_the_hadoop_ports_on_loopback(tmp_path):
    config = cluster.parse_args(["--state-dir", str(tmp_path)])
    assert config.hdfs_url == "hdfs://127.0.0.1:8020"
    assert config.webhdfs_url == "http://127.0.0.1:9870/webhdfs/v1"
    assert config.webhdfs_fs_url == "webhdfs://127.0.0.1:9870"
    assert config.datanode_ports == (DataNodePorts(9866, 9867, 9868), DataNodePorts(9876, 9877, 9878))
    assert config.effective_replication == 2
    assert config.hdfs_dir == tmp_path / "hdfs"


def test_flags_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DP_HDFS_NAMENODE_PORT", "18020")
    monkeypatch.setenv("DP_HDFS_DATANODES", "3")
    monkeypatch.setenv("DP_STATE_DIR", str(tmp_path))
    config = cluster.parse_args(["--namenode-http-port", "19870", "--datanode-base-port", "19900"])
    assert config.hdfs_url == "hdfs://127.0.0.1:18020"
    assert config.namenode_http_port == 19870
    assert [node.transfer for node in config.datanode_ports] == [19900, 19910, 19920]
    assert config.effective_replication == 3
    assert config.state_dir == tmp_path
    # A flag wins over the environment.
    assert cluster.parse_args(["--datanodes", "1"]).datanodes == 1


def test_bad_settings_are_refused(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        cluster.parse_args(["--state-dir", str(tmp_path), "--datanodes", "0"])
    assert "at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cluster.parse_args(["--state-dir", str(tmp_path), "--replication", "3"])
    assert "replication 3 needs 1..2" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # NameNode HTTP port inside the DataNode port range
        cluster.parse_args(["--state-dir", str(tmp_path), "--namenode-http-port", "9867"])
    assert "used twice: 9867" in capsys.readouterr().err
    monkeypatch.setenv("DP_HDFS_NAMENODE_PORT", "eighty")
    with pytest.raises(SystemExit, match="DP_HDFS_NAMENODE_PORT='eighty' is not a port number"):
        cluster.parse_args([])


def test_site_files_point_each_daemon_at_its_own_state(tmp_path):
    config = HdfsConfig(state_dir=tmp_path, overrides=(("dfs.blocksize", "1048576"),))
    namenode = parse_xml(cluster.configuration_xml(cluster.namenode_site(config)))
    assert namenode["dfs.namenode.name.dir"] == str(tmp_path / "hdfs" / "name")
    assert namenode["dfs.namenode.rpc-address"] == "127.0.0.1:8020"
    assert namenode["dfs.webhdfs.enabled"] == "true"
    assert namenode["dfs.blocksize"] == "1048576"
    second = parse_xml(cluster.configuration_xml(cluster.datanode_site(config, 2)))
    assert second["dfs.datanode.data.dir"] == str(tmp_path / "hdfs" / "data" / "datanode-2")
    assert second["dfs.datanode.http.address"] == "127.0.0.1:9877"
    assert second["dfs.datanode.hostname"] == "127.0.0.1"
    core = parse_xml(cluster.configuration_xml(cluster.core_site(config)))
    assert core["fs.defaultFS"] == "hdfs://127.0.0.1:8020"


def test_xml_values_are_escaped():
    text = cluster.configuration_xml({"a": "x<y & z"})
    assert parse_xml(text) == {"a": "x<y & z"}
