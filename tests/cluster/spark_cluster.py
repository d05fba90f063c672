"""A Spark standalone cluster (deploy/spark/standalone.py: master + workers) for the cluster tests.

    with standalone_cluster(tmp_path, workers=2) as spark:
        spark.master_url       # "spark://127.0.0.1:<port>"
        spark.status()         # the master's /json/ status (workers, apps)
        spark.pids()           # {"master": pid, "worker-1": pid, ...} from the launcher's state
        spark.wait(condition, timeout, what)

Started through its own launcher as a child process on free loopback ports; on leaving the block
the launcher gets SIGTERM and must stop everything with exit 0 (`spark.exit_code`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import time
import urllib.request
from typing import Callable, Dict, Iterator

from deploy.common.process import die_with_parent, free_ports, tail
from deploy.common.service import runfile

LAUNCHER = "deploy/spark/standalone"


class SparkStandalone:
    def __init__(self, state_dir: pathlib.Path, port: int, ui_port: int, log: pathlib.Path):
        self.state_dir, self.port, self.ui_port, self.log = state_dir, port, ui_port, log
        self.master_url = "spark://127.0.0.1:%d" % port
        self.exit_code = None

    def status(self) -> dict:
        with urllib.request.urlopen("http://127.0.0.1:%d/json/" % self.ui_port, timeout=5) as response:
            return json.load(response)

    def pids(self) -> Dict[str, int]:
        return json.loads((self.state_dir / "spark-standalone" / "processes.json").read_text())

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out waiting for %s:\n%s" % (what, tail(self.log, 40))
            time.sleep(1.0)


@contextlib.contextmanager
def standalone_cluster(state_dir: pathlib.Path, workers: int = 2, worker_memory: str = "512m") -> Iterator[SparkStandalone]:
    port, ui_port = free_ports(2)
    log = state_dir / "spark-launcher.out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [str(runfile(LAUNCHER)), "--state-dir", str(state_dir), "--port", str(port), "--web-ui-port", str(ui_port),
             "--workers", str(workers), "--worker-memory", worker_memory],
            stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent(signal.SIGTERM))
    cluster = SparkStandalone(state_dir, port, ui_port, log)
    try:
        cluster.wait(lambda: "spark standalone cluster up: master=%s" % cluster.master_url in log.read_text()
                     or launcher.poll() is not None, 300, "the ready line")
        assert launcher.poll() is None, "the Spark launcher exited:\n%s" % tail(log, 40)
        yield cluster
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            cluster.exit_code = launcher.wait(120)
        except subprocess.TimeoutExpired:
            launcher.kill()
            cluster.exit_code = launcher.wait(30)
