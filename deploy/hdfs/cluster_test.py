"""A real HDFS from @maven_hadoop: WebHDFS round trips, replication, clean stop, restart keeps files."""

import gzip
import json
import os
import urllib.request

import pytest

from deploy.hdfs.cluster import CLEAN_EXIT_CODES
from deploy.hdfs.webhdfs import WebHdfsClient, WebHdfsError
from tests.fixtures.hdfs_cluster import hdfs_cluster, hdfs_cluster_factory  # noqa: F401 (fixtures)


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_webhdfs_write_read_list_rename_delete(hdfs_cluster):
    assert hdfs_cluster.version == "3.5.0"
    client = WebHdfsClient(hdfs_cluster.webhdfs_url, user="cluster-test")
    payload = gzip.compress(b"".join(b'{"n": %d}\n' % n for n in range(5000)))
    client.create("/test/round/part-00000.jsonl.gz", payload)
    assert client.read("/test/round/part-00000.jsonl.gz") == payload
    status = client.status("/test/round/part-00000.jsonl.gz")
    assert status["type"] == "FILE" and status["length"] == len(payload)
    assert status["owner"] == "cluster-test"
    # Written through the DataNode pipeline with the default replication: both DataNodes.
    assert status["replication"] == 2

    client.create("/test/round/empty", b"")
    assert client.read("/test/round/empty") == b""
    assert [entry["pathSuffix"] for entry in client.list("/test/round")] == ["empty", "part-00000.jsonl.gz"]

    client.mkdirs("/test/moved")
    client.rename("/test/round", "/test/moved/round")
    assert client.status("/test/round") is None
    assert client.read("/test/moved/round/part-00000.jsonl.gz") == payload
    assert client.delete("/test/moved", recursive=True) is True
    assert client.delete("/test/moved", recursive=True) is False

    with pytest.raises(WebHdfsError) as missing:
        client.read("/test/nothing-here")
    assert missing.value.status == 404 and missing.value.exception == "FileNotFoundException"


def test_health_metrics_and_replicas_on_both_datanodes(hdfs_cluster):
    health = hdfs_cluster.health()
    assert health["ready"] and health["live_datanodes"] == 2 and health["safemode"] == ""
    client = WebHdfsClient(hdfs_cluster.webhdfs_url)
    client.create("/test/replicas.bin", os.urandom(4096))
    # Every block of the file has a replica on each DataNode.
    url = hdfs_cluster.webhdfs_url + "/test/replicas.bin?op=GETFILEBLOCKLOCATIONS"
    with urllib.request.urlopen(url, timeout=30) as response:
        blocks = json.loads(response.read())["BlockLocations"]["BlockLocation"]
    assert blocks, "no block locations for a 4 KiB file"
    expected = {"127.0.0.1:%d" % node.transfer for node in hdfs_cluster.config.datanode_ports}
    assert all(set(block["names"]) == expected for block in blocks)
    with urllib.request.urlopen(hdfs_cluster.namenode_http_url + "/prom", timeout=30) as response:
        metrics = response.read().decode()
    live = [line for line in metrics.splitlines() if line.startswith("fs_namesystem_num_live_data_nodes{")]
    assert live and live[0].rsplit(" ", 1)[1] == "2", live


def test_restart_on_the_same_state_keeps_files(hdfs_cluster_factory, tmp_path):
    state = tmp_path / "durable"
    first = hdfs_cluster_factory(state_dir=state)
    assert first.formatted
    data = os.urandom(300_000)
    WebHdfsClient(first.webhdfs_url).create("/keep/blob.bin", data)
    pids = first.pids
    codes = first.stop()
    assert set(codes) == {"namenode", "datanode-1", "datanode-2"}
    assert all(code in CLEAN_EXIT_CODES for code in codes.values()), codes
    assert all(process_is_gone(pid) for pid in pids)

    # New free ports, same namespace and blocks, and a third (empty) DataNode joins.
    second = hdfs_cluster_factory(state_dir=state, datanodes=3)
    assert not second.formatted
    client = WebHdfsClient(second.webhdfs_url)
    assert client.read("/keep/blob.bin") == data
    assert second.health()["live_datanodes"] == 3
    client.create("/keep/three.bin", b"x" * 1000)
    assert client.status("/keep/three.bin")["replication"] == 3
