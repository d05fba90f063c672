"""The multi-node profile's flags and the settings it hands each cluster, without starting a JVM."""

import pytest

from deploy.local import cluster


def test_defaults_start_every_component(tmp_path):
    args = cluster.parse_args(["--state-dir", str(tmp_path)])
    assert args.components == ["kafka", "flink", "spark", "hdfs"]
    hdfs = cluster.hdfs_config(args)
    assert hdfs.datanodes == 3 and hdfs.effective_replication == 3
    assert hdfs.hdfs_url == "hdfs://127.0.0.1:18020"


def test_only_picks_components_and_refuses_unknown_ones(tmp_path, capsys):
    assert cluster.parse_args(["--only", "kafka, flink"]).components == ["kafka", "flink"]
    with pytest.raises(SystemExit):
        cluster.parse_args(["--only", "kafka,storm"])
    assert "unknown component(s) ['storm']" in capsys.readouterr().err


def test_child_launchers_get_the_profile_ports(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "runfile", lambda path: tmp_path / path)
    args = cluster.parse_args(["--state-dir", str(tmp_path), "--flink-rest-port", "28081", "--spark-workers", "3"])
    flink = cluster.flink_launcher(args)
    assert flink.argv[0].endswith("deploy/flink/cluster")
    assert flink.argv[flink.argv.index("--flink-rest-port") + 1] == "28081"
    spark = cluster.spark_launcher(args)
    assert spark.argv[spark.argv.index("--workers") + 1] == "3"
    assert spark.log_path == tmp_path / "spark-standalone" / "launcher.out"
