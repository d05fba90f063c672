"""The multi-node profile (`//deploy/local:cluster`) as the fault tests start it: the real launcher
as a child process, every port free on loopback, state in a temporary folder.

    with local_profile(state_dir) as profile:
        profile.bootstrap, profile.hdfs_url, profile.webhdfs_url
        profile.flink            # tests.fixtures.flink_cluster.FlinkClusterProcess, attached
        profile.spark            # tests.cluster.spark_cluster.SparkStandalone, attached
        profile.pids()           # {"kafka-1": pid, ..., "namenode": pid, "datanode-1": pid, ...}
        profile.kill("kafka-2")  # SIGKILL; returns once the profile has started the node again

On leaving the block the launcher gets SIGTERM and must stop everything (`profile.exit_code`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import random
import signal
import socket
import subprocess
import time
from typing import Dict, Iterator, Optional, Sequence

from deploy.common.process import die_with_parent, free_ports, stop_child, tail
from deploy.common.service import runfile
from tests.cluster.spark_cluster import SparkStandalone
from tests.fixtures.flink_cluster import FlinkClusterProcess

LAUNCHER = "deploy/local/cluster"
READY = "local cluster up:"
START_TIMEOUT = 900.0
KAFKA_OFFSETS = (0, 1, 2, 100, 101, 102)  # clients on base+i, controllers on base+100+i
DATANODE_OFFSETS = tuple(10 * k + j for k in range(3) for j in range(3))  # DataNode k: base+10k .. +2


def _block_is_free(base: int, offsets: Sequence[int]) -> bool:
    sockets = []
    try:
        for offset in offsets:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", base + offset))
        return True
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()


def free_block(offsets: Sequence[int], taken: Sequence[int] = ()) -> int:
    """A base port such that base+offset is free for every offset (the profile's flags take bases)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - max(offsets))
        if not {base + o for o in offsets} & set(taken) and _block_is_free(base, offsets):
            return base
    raise RuntimeError("no free block of loopback ports for offsets %s" % (offsets,))


class LocalProfile:
    def __init__(self, state_dir: pathlib.Path):
        self.state_dir = pathlib.Path(state_dir)
        self.log = self.state_dir / "local-cluster.out"
        self.kafka_base = free_block(KAFKA_OFFSETS)
        self.datanode_base = free_block(DATANODE_OFFSETS, [self.kafka_base + o for o in KAFKA_OFFSETS])
        taken = {self.kafka_base + o for o in KAFKA_OFFSETS} | {self.datanode_base + o for o in DATANODE_OFFSETS}
        ports = [p for p in free_ports(12) if p not in taken][:6]
        (self.flink_rest_port, self.flink_rpc_port, self.spark_port, self.spark_ui_port,
         self.namenode_port, self.namenode_http_port) = ports
        self.process: Optional[subprocess.Popen] = None
        self.exit_code: Optional[int] = None
        self.start_seconds: Optional[float] = None
        self.flink = FlinkClusterProcess.attach(self.state_dir, self.flink_rest_port,
                                                self.state_dir / "flink-cluster" / "launcher.out")
        self.spark = SparkStandalone(self.state_dir, self.spark_port, self.spark_ui_port,
                                     self.state_dir / "spark-standalone" / "launcher.out")

    @property
    def argv(self):
        return [str(runfile(LAUNCHER)), "--state-dir", str(self.state_dir),
                "--kafka-base-port", str(self.kafka_base),
                "--flink-rest-port", str(self.flink_rest_port), "--flink-rpc-port", str(self.flink_rpc_port),
                "--spark-port", str(self.spark_port), "--spark-ui-port", str(self.spark_ui_port),
                "--hdfs-namenode-port", str(self.namenode_port), "--hdfs-http-port", str(self.namenode_http_port),
                "--hdfs-datanode-base-port", str(self.datanode_base)]

    @property
    def bootstrap(self) -> str:
        return ",".join("127.0.0.1:%d" % (self.kafka_base + i) for i in range(3))

    @property
    def hdfs_url(self) -> str:
        return "hdfs://127.0.0.1:%d" % self.namenode_port

    @property
    def webhdfs_url(self) -> str:
        return "http://127.0.0.1:%d/webhdfs/v1" % self.namenode_http_port

    def start(self) -> "LocalProfile":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE")}  # the launcher's own set
        began = time.monotonic()
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, preexec_fn=die_with_parent(signal.SIGTERM))
        while READY not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() - began > START_TIMEOUT:
                self.stop()
                raise RuntimeError("the profile did not come up (exit %s) within %.0f s:\n%s"
                                   % (self.exit_code, START_TIMEOUT, tail(self.log, 60)))
            time.sleep(1.0)
        self.start_seconds = time.monotonic() - began
        return self

    def pids(self) -> Dict[str, int]:
        """The Kafka and HDFS JVMs' PIDs as the profile records them (Flink and Spark: their own files)."""
        return json.loads((self.state_dir / "local-cluster" / "processes.json").read_text(encoding="utf-8"))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, name: str, timeout: float = 120.0) -> int:
        """SIGKILLs the JVM `name` of pids(); returns the PID of the one the profile starts instead."""
        pid = self.pids()[name]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self.pids().get(name) in (None, pid):
            assert self.alive(), "the profile stopped after %s was killed:\n%s" % (name, tail(self.log, 40))
            assert time.monotonic() < deadline, "the profile did not restart %s within %.0f s:\n%s" % (
                name, timeout, tail(self.log, 40))
            time.sleep(0.5)
        return self.pids()[name]

    def stop(self, timeout: float = 300.0) -> Optional[int]:
        self.exit_code = stop_child(self.process, timeout)
        return self.exit_code


@contextlib.contextmanager
def local_profile(state_dir: pathlib.Path) -> Iterator[LocalProfile]:
    profile = LocalProfile(state_dir).start()
    try:
        yield profile
    finally:
        profile.stop()
