"""The multi-node profile on one machine: real clusters on loopback, for running the pipelines on.

    bazel run //deploy/local:cluster -- --help
    bazel run //deploy/local:cluster                      # Kafka, Flink, Spark, HDFS
    bazel run //deploy/local:cluster -- --only kafka,flink

Components:
  kafka  3 combined broker+controller nodes, replication factor 3, min.insync.replicas 2
         (deploy/kafka/cluster.py, in this process): bootstrap 127.0.0.1:29092,29093,29094
  flink  a standalone session cluster, JobManager + 2 TaskManagers x 2 slots (deploy/flink, its
         own launcher as a child process: it runs in the flink Python set): REST 127.0.0.1:18081
  spark  a standalone master + 2 workers (deploy/spark/standalone.py, a child process in the spark
         Python set): spark://127.0.0.1:7177, status http://127.0.0.1:18080/json/
  hdfs   a NameNode + 3 DataNodes, replication 3 (deploy/hdfs, in this process):
         hdfs://127.0.0.1:18020, WebHDFS http://127.0.0.1:19870

Point the pipelines at them with their usual flags, e.g.
  bazel run //jobs/behaviour/metrics -- --bootstrap 127.0.0.1:29092 --jobmanager 127.0.0.1:18081
State lives in <state-dir>/{kafka-cluster,flink-cluster,spark-standalone,hdfs}. A Kafka node or a
DataNode that dies is started again on its storage (as the Flink and Spark launchers restart their
TaskManagers and workers), at most --max-restarts times within 10 minutes; the PIDs of the Kafka
and HDFS JVMs are kept in <state-dir>/local-cluster/processes.json. SIGTERM or Ctrl-C stops
everything in reverse start order; if the NameNode or the Flink/Spark launcher dies, or a node
keeps dying, the rest is stopped (exit 1).
"""

import argparse
import collections
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Sequence

from deploy.common import process
from deploy.common.service import runfile
from deploy.hdfs import cluster as hdfs_cluster
from deploy.kafka import cluster as kafka_cluster
from deploy.kafka.broker import BrokerError

LOG = logging.getLogger("local_cluster")

COMPONENTS = ("kafka", "flink", "spark", "hdfs")
RESTART_WINDOW_S = 600.0


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cluster",
        description="Run the multi-node profile on loopback: a 3-node Kafka cluster, a Flink standalone "
                    "cluster (JobManager + 2 TaskManagers), a Spark standalone cluster (master + 2 workers) "
                    "and HDFS (NameNode + 3 DataNodes), until SIGTERM/Ctrl-C.",
        epilog="Example: bazel run //deploy/local:cluster -- --only kafka --kafka-base-port 39092",
    )
    kafka_cluster.add_state_argument(parser)
    parser.add_argument("--only", default=os.environ.get("DP_CLUSTER_COMPONENTS", ",".join(COMPONENTS)),
                        help="comma-separated components to start: kafka, flink, spark, hdfs "
                             "[env DP_CLUSTER_COMPONENTS, default all four]")
    kafka_cluster.add_arguments(parser)
    parser.add_argument("--flink-rest-port", type=int,
                        default=process.env_int("DP_FLINK_REST_PORT", 18081, "a port number"),
                        help="Flink REST port [env DP_FLINK_REST_PORT, default 18081]")
    parser.add_argument("--flink-rpc-port", type=int,
                        default=process.env_int("DP_FLINK_RPC_PORT", 16123, "a port number"),
                        help="Flink JobManager RPC port [env DP_FLINK_RPC_PORT, default 16123]")
    parser.add_argument("--taskmanagers", type=int, default=process.env_int("DP_FLINK_TASKMANAGERS", 2),
                        help="Flink TaskManagers [env DP_FLINK_TASKMANAGERS, default 2]")
    parser.add_argument("--spark-port", type=int, default=process.env_int("DP_SPARK_MASTER_PORT", 7177, "a port number"),
                        help="Spark master port [env DP_SPARK_MASTER_PORT, default 7177]")
    parser.add_argument("--spark-ui-port", type=int,
                        default=process.env_int("DP_SPARK_MASTER_UI_PORT", 18080, "a port number"),
                        help="Spark master UI/JSON port [env DP_SPARK_MASTER_UI_PORT, default 18080]")
    parser.add_argument("--spark-workers", type=int, default=process.env_int("DP_SPARK_WORKERS", 2),
                        help="Spark workers [env DP_SPARK_WORKERS, default 2]")
    parser.add_argument("--hdfs-datanodes", type=int, default=3, help="HDFS DataNodes [3]")
    parser.add_argument("--hdfs-namenode-port", type=int, default=18020, help="NameNode RPC port [18020]")
    parser.add_argument("--hdfs-http-port", type=int, default=19870, help="NameNode HTTP/WebHDFS port [19870]")
    parser.add_argument("--hdfs-datanode-base-port", type=int, default=19866,
                        help="first DataNode port; DataNode K uses base+10(K-1) .. +2 [19866]")
    parser.add_argument("--restart-delay-seconds", type=float,
                        default=float(os.environ.get("DP_CLUSTER_RESTART_DELAY_SECONDS", "12")),
                        help="how long a dead Kafka node or DataNode stays down before it is started again: "
                             "longer than Kafka's broker session timeout (9 s), so its partitions move to "
                             "the other nodes first, as after a real crash [env DP_CLUSTER_RESTART_DELAY_SECONDS, "
                             "default 12]")
    parser.add_argument("--max-restarts", type=int, default=process.env_int("DP_CLUSTER_MAX_RESTARTS", 5),
                        help="restarts of one Kafka node or DataNode within 10 minutes before the profile "
                             "gives up and stops [env DP_CLUSTER_MAX_RESTARTS, default 5; 0 = never restart]")
    args = parser.parse_args(argv)
    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(COMPONENTS))
    if unknown or not wanted:
        parser.error("--only: unknown component(s) %s; choose from %s" % (unknown, ", ".join(COMPONENTS)))
    args.components = wanted
    args.state_dir = (args.state_dir or process.workspace_state_dir()).absolute()
    return args


class ChildLauncher:
    """A launcher of this repository run as a child process (it needs another Python set)."""

    def __init__(self, name: str, launcher: str, argv: Sequence[str], ready: str, log_path: pathlib.Path):
        self.name = name
        self.log_path = log_path
        self.argv = [str(runfile(launcher))] + list(argv)
        self.ready = ready
        self.process: Optional[subprocess.Popen] = None

    def start(self, cancel: threading.Event, timeout: float = 300.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the launcher's own set only
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True,
                                            preexec_fn=process.die_with_parent(signal.SIGTERM))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not cancel.is_set():
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                if self.ready in log.read().decode(errors="replace"):
                    return
            if self.process.poll() is not None:
                raise RuntimeError("the %s launcher exited with %s:\n%s"
                                   % (self.name, self.process.returncode, process.tail(self.log_path, 30)))
            cancel.wait(0.5)
        self.stop()
        raise RuntimeError("%s did not come up within %.0f s (or was cancelled); see %s"
                           % (self.name, timeout, self.log_path))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 120.0) -> Optional[int]:
        return process.stop_child(self.process, timeout)


class RestartBudget:
    """At most `limit` restarts of one node within `window` seconds: a node that keeps dying is a
    fault to report, not one to hide behind restarts."""

    def __init__(self, limit: int, window: float = RESTART_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self.restarts: Dict[str, Deque[float]] = collections.defaultdict(collections.deque)

    def allow(self, name: str) -> bool:
        """Whether `name` may restart now; counts the restart when it may."""
        now = self.clock()
        recent = self.restarts[name]
        while recent and now - recent[0] > self.window:
            recent.popleft()
        if len(recent) >= self.limit:
            return False
        recent.append(now)
        return True


class Supervisor:
    """Watches the profile: restarts dead Kafka nodes and DataNodes, records the JVMs' PIDs, and
    names the failure that must stop everything (the NameNode, a launcher, a node that keeps dying)."""

    def __init__(self, state_dir: pathlib.Path, budget: RestartBudget,
                 kafka: Optional["kafka_cluster.KafkaCluster"] = None, hdfs: Optional["hdfs_cluster.HdfsCluster"] = None,
                 children: Sequence[ChildLauncher] = (), restart_delay: float = 0.0):
        self.pids_path = state_dir / "local-cluster" / "processes.json"
        self.budget, self.kafka, self.hdfs, self.children = budget, kafka, hdfs, list(children)
        self.restart_delay = restart_delay
        self.down_since: Dict[str, float] = {}

    def _due(self, name: str) -> bool:
        """Whether dead node `name` has stayed down for the restart delay (the first call starts it)."""
        now = self.budget.clock()
        since = self.down_since.setdefault(name, now)
        if now - since < self.restart_delay:
            return False
        del self.down_since[name]
        return True

    def pids(self) -> Dict[str, int]:
        pids: Dict[str, int] = {}
        if self.kafka is not None:
            pids.update(("kafka-%d" % node_id, node.pid) for node_id, node in self.kafka.nodes.items() if node.pid)
        if self.hdfs is not None:
            pids.update(self.hdfs.daemon_pids())
        pids.update(("%s-launcher" % c.name, c.process.pid) for c in self.children if c.process is not None)
        return pids

    def record(self) -> None:
        self.pids_path.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.pids_path.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.pids(), sort_keys=True) + "\n", encoding="utf-8")
        scratch.replace(self.pids_path)  # readers never see half a file

    def _may_restart(self, name: str, code: Optional[int]) -> Optional[str]:
        if not self.budget.allow(name):
            return "%s exited (%s) after %d restarts within %.0f s" % (
                name, code, self.budget.limit, self.budget.window)
        print("%s exited with %s; starting it again on its storage" % (name, code), file=sys.stderr, flush=True)
        return None

    def check(self) -> Optional[str]:
        """One round: restarts what may restart; returns the problem that stops the profile, if any."""
        restarted = False
        if self.kafka is not None:
            for node_id, node in sorted(self.kafka.nodes.items()):
                if node.process is not None and node.process.poll() is None:
                    continue
                if not self._due("kafka-%d" % node_id):
                    continue
                code = node.stop()  # collects the exit code of the dead JVM
                problem = self._may_restart("kafka-%d" % node_id, code)
                if problem:
                    return problem
                try:
                    node.launch()  # no wait: it catches up with its peers and rejoins the ISRs by itself
                except (BrokerError, OSError) as err:
                    return "kafka-%d could not start again: %s" % (node_id, err)
                restarted = True
        if self.hdfs is not None:
            if self.hdfs.namenode is None or self.hdfs.namenode.poll() is not None:
                return "the HDFS NameNode exited by itself (see %s)" % self.hdfs.log_file("namenode")
            for index, jvm in enumerate(self.hdfs.datanodes, start=1):
                if jvm.poll() is None or not self._due("datanode-%d" % index):
                    continue
                problem = self._may_restart("datanode-%d" % index, jvm.returncode)
                if problem:
                    return problem
                try:
                    self.hdfs.restart_datanode(index)
                except (hdfs_cluster.HdfsError, OSError) as err:
                    return "datanode-%d could not start again: %s" % (index, err)
                restarted = True
        if restarted:
            self.record()
        dead = [c for c in self.children if not c.alive()]
        if dead:
            return "the %s cluster exited by itself (see %s)" % (dead[0].name, dead[0].log_path)
        return None


def flink_launcher(args: argparse.Namespace) -> ChildLauncher:
    return ChildLauncher(
        "flink", "deploy/flink/cluster",
        ["--state-dir", str(args.state_dir), "--flink-rest-port", str(args.flink_rest_port),
         "--flink-rpc-port", str(args.flink_rpc_port), "--taskmanagers", str(args.taskmanagers)],
        "flink cluster up:", args.state_dir / "flink-cluster" / "launcher.out")


def spark_launcher(args: argparse.Namespace) -> ChildLauncher:
    return ChildLauncher(
        "spark", "deploy/spark/standalone",
        ["--state-dir", str(args.state_dir), "--port", str(args.spark_port), "--web-ui-port", str(args.spark_ui_port),
         "--workers", str(args.spark_workers)],
        "spark standalone cluster up:", args.state_dir / "spark-standalone" / "launcher.out")


def hdfs_config(args: argparse.Namespace) -> "hdfs_cluster.HdfsConfig":
    return hdfs_cluster.HdfsConfig(
        state_dir=args.state_dir, namenode_port=args.hdfs_namenode_port, namenode_http_port=args.hdfs_http_port,
        datanode_ports=hdfs_cluster.datanode_ports_from_base(args.hdfs_datanode_base_port, args.hdfs_datanodes),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = parse_args(argv)
    stop_requested = process.stop_on_signals(LOG)

    kafka: Optional[kafka_cluster.KafkaCluster] = None
    hdfs: Optional["hdfs_cluster.HdfsCluster"] = None
    children: List[ChildLauncher] = []
    lines: List[str] = []
    code = 0
    try:
        if "kafka" in args.components:
            kafka = kafka_cluster.KafkaCluster(kafka_cluster.config_from_args(args))
            print("starting kafka: %d nodes ..." % args.kafka_nodes, flush=True)
            kafka.start(cancel=stop_requested)
            lines.append("kafka  bootstrap=%s (replication %d, min ISR %d; state %s)" % (
                kafka.bootstrap, kafka.config.replication_factor, kafka.config.min_insync_replicas,
                kafka.config.cluster_dir))
        if "hdfs" in args.components and not stop_requested.is_set():
            hdfs = hdfs_cluster.HdfsCluster(hdfs_config(args))
            print("starting hdfs: NameNode + %d DataNodes ..." % args.hdfs_datanodes, flush=True)
            hdfs.start(cancel=stop_requested)
            lines.append("hdfs   %s, WebHDFS %s (state %s)" % (hdfs.hdfs_url, hdfs.webhdfs_url, hdfs.config.hdfs_dir))
        for name, make in (("flink", flink_launcher), ("spark", spark_launcher)):
            if name in args.components and not stop_requested.is_set():
                child = make(args)
                children.append(child)
                print("starting %s ..." % name, flush=True)
                child.start(stop_requested)
        if "flink" in args.components:
            lines.append("flink  rest=http://127.0.0.1:%d (jobs: --jobmanager 127.0.0.1:%d; state %s)" % (
                args.flink_rest_port, args.flink_rest_port, args.state_dir / "flink-cluster"))
        if "spark" in args.components:
            lines.append("spark  master=spark://127.0.0.1:%d status=http://127.0.0.1:%d/json/ (state %s)" % (
                args.spark_port, args.spark_ui_port, args.state_dir / "spark-standalone"))
        supervisor = Supervisor(args.state_dir, RestartBudget(args.max_restarts), kafka, hdfs, children,
                                args.restart_delay_seconds)
        supervisor.record()
        if not stop_requested.is_set():
            print("local cluster up:\n  " + "\n  ".join(lines) + "\n  pids   %s" % supervisor.pids_path, flush=True)
        while not stop_requested.wait(1.0):
            problem = supervisor.check()
            if problem:
                print(problem + "; stopping everything", file=sys.stderr)
                code = 1
                break
    except (BrokerError, hdfs_cluster.HdfsError, RuntimeError, process.JavaNotFound) as err:
        print("local cluster failed to start: %s" % err, file=sys.stderr)
        code = 1
    finally:
        for child in reversed(children):
            child.stop()
        if hdfs is not None:
            hdfs.stop()
        if kafka is not None:
            kafka.stop()
    print("local cluster stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
