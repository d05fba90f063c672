"""The multi-node profile's flags and the settings it hands each cluster, without starting a JVM."""

import json

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


def test_restart_budget_counts_restarts_per_node_within_the_window():
    now = [0.0]
    budget = cluster.RestartBudget(limit=2, window=600.0, clock=lambda: now[0])
    assert budget.allow("kafka-1") and budget.allow("kafka-1")
    assert not budget.allow("kafka-1")  # a third death within 10 minutes: give up
    assert budget.allow("datanode-3")  # other nodes have their own count
    now[0] = 601.0
    assert budget.allow("kafka-1")  # the old restarts left the window
    assert not cluster.RestartBudget(limit=0).allow("kafka-2")  # 0: never restart


class _Jvm:
    def __init__(self, pid, code=None):
        self.pid, self.returncode = pid, code

    def poll(self):
        return self.returncode


class _Node:
    def __init__(self, pid, code=None):
        self.process, self.launched = _Jvm(pid, code), 0

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def stop(self):
        code, self.process = self.process.returncode, None
        return code

    def launch(self):
        self.launched += 1
        self.process = _Jvm(900 + self.launched)


class _Hdfs:
    def __init__(self, namenode_code=None, datanode_codes=(None, None, None)):
        self.namenode = _Jvm(100, namenode_code)
        self.datanodes = [_Jvm(101 + i, code) for i, code in enumerate(datanode_codes)]
        self.restarted = []

    def log_file(self, daemon):
        return "logs/%s.log" % daemon

    def daemon_pids(self):
        pids = {"namenode": self.namenode.pid}
        pids.update(("datanode-%d" % i, jvm.pid) for i, jvm in enumerate(self.datanodes, start=1))
        return pids

    def restart_datanode(self, index):
        self.restarted.append(index)
        self.datanodes[index - 1] = _Jvm(800 + index)


class _Kafka:
    def __init__(self, nodes):
        self.nodes = nodes


def test_supervisor_restarts_dead_nodes_and_records_their_pids(tmp_path, capsys):
    kafka = _Kafka({1: _Node(11), 2: _Node(12, code=-9), 3: _Node(13)})
    hdfs = _Hdfs(datanode_codes=(None, None, -9))
    supervisor = cluster.Supervisor(tmp_path, cluster.RestartBudget(limit=1), kafka, hdfs)
    assert supervisor.check() is None
    assert kafka.nodes[2].launched == 1 and kafka.nodes[1].launched == 0 and hdfs.restarted == [3]
    recorded = json.loads((tmp_path / "local-cluster" / "processes.json").read_text())
    assert recorded["kafka-2"] == 901 and recorded["datanode-3"] == 803 and recorded["kafka-1"] == 11
    assert "kafka-2 exited with -9; starting it again" in capsys.readouterr().err
    # The same node dies again: over the budget, the profile must stop and say why.
    kafka.nodes[2].process.returncode = 1
    assert supervisor.check() == "kafka-2 exited (1) after 1 restarts within 600 s"


def test_supervisor_waits_the_restart_delay_before_starting_a_dead_node(tmp_path):
    now = [100.0]
    kafka = _Kafka({1: _Node(11, code=-9)})
    supervisor = cluster.Supervisor(tmp_path, cluster.RestartBudget(limit=5, clock=lambda: now[0]), kafka,
                                    restart_delay=12.0)
    assert supervisor.check() is None and kafka.nodes[1].launched == 0  # just seen dead: stays down
    now[0] = 111.0
    assert supervisor.check() is None and kafka.nodes[1].launched == 0
    now[0] = 112.5
    assert supervisor.check() is None and kafka.nodes[1].launched == 1


def test_supervisor_names_a_node_that_cannot_start_again(tmp_path):
    class _Unstartable(_Node):
        def launch(self):
            raise OSError("no space left on device")

    kafka = _Kafka({1: _Unstartable(11, code=-9)})
    supervisor = cluster.Supervisor(tmp_path, cluster.RestartBudget(limit=5), kafka)
    assert supervisor.check() == "kafka-1 could not start again: no space left on device"


def test_supervisor_stops_the_profile_when_the_namenode_dies(tmp_path):
    supervisor = cluster.Supervisor(tmp_path, cluster.RestartBudget(limit=5), hdfs=_Hdfs(namenode_code=1))
    assert supervisor.check().startswith("the HDFS NameNode exited by itself")
