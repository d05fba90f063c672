"""A Spark standalone cluster on loopback: one master and N workers (default 2).

    bazel run //deploy/spark:standalone -- --help

Spark is the distribution inside the pyspark package (@py_spark). Each daemon runs in the
foreground through the distribution's `bin/spark-class` (`org.apache.spark.deploy.master.Master`,
`org.apache.spark.deploy.worker.Worker`), bound to 127.0.0.1, with the master's REST submission
server off (`spark.master.rest.enabled=false`). State under `<state-dir>/spark-standalone/`:
`logs/<daemon>.out`, `work/<worker>/` (executors' work dirs), `local/`, `processes.json` (PID per
JVM, for operators and fault tests).

Ready when the master's JSON status (`http://127.0.0.1:<web-ui-port>/json/`) lists every worker
ALIVE. A worker that dies is restarted; SIGTERM or Ctrl-C stops the workers, then the master.
Jobs take `--master spark://127.0.0.1:<port>` (default 7177) or go through the Spark Connect
server started with that master (`//deploy/spark:connect_server -- --master spark://...`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Sequence

from deploy.common import process

LOG = logging.getLogger("spark_standalone")

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


class StandaloneError(RuntimeError):
    """The cluster could not be started; the message says where to look."""


@dataclasses.dataclass(frozen=True)
class StandaloneConfig:
    state_dir: pathlib.Path
    host: str = "127.0.0.1"
    port: int = 7177  # not Spark's 7077, so a stray system Spark does not collide
    web_ui_port: int = 18080
    workers: int = 2
    worker_cores: int = 1
    worker_memory: str = "768m"  # what executors on the worker may use in all
    daemon_memory: str = "256m"  # heap of the master and worker daemons themselves
    start_timeout: float = 180.0
    stop_timeout: float = 30.0
    restart_workers: bool = True

    @property
    def cluster_dir(self) -> pathlib.Path:
        return self.state_dir / "spark-standalone"

    @property
    def master_url(self) -> str:
        return "spark://%s:%d" % (self.host, self.port)

    @property
    def status_url(self) -> str:
        return "http://%s:%d/json/" % (self.host, self.web_ui_port)


def spark_home() -> pathlib.Path:
    try:
        import pyspark
    except ImportError:
        raise StandaloneError("pyspark is not importable: run this through //deploy/spark:standalone") from None
    home = pathlib.Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-class").exists() or not (home / "jars").is_dir():
        raise StandaloneError("%s has no bin/spark-class or jars/: not a full pyspark distribution" % home)
    return home


def daemon_options(config: StandaloneConfig) -> str:
    """SPARK_DAEMON_JAVA_OPTS: settings of the master and worker JVMs."""
    return " ".join([
        "-Dspark.master.rest.enabled=false",
        "-Dspark.ui.reverseProxy=false",
        "-Dspark.worker.cleanup.enabled=true",
        "-Dspark.local.dir=%s" % (config.cluster_dir / "local"),
        "-XX:-UsePerfData",
    ])


def commands(config: StandaloneConfig) -> Dict[str, List[str]]:
    """spark-class arguments of every daemon, by name."""
    home = spark_home()
    spark_class = str(home / "bin" / "spark-class")
    argv = {"master": [spark_class, MASTER_CLASS, "--host", config.host, "--port", str(config.port),
                       "--webui-port", str(config.web_ui_port)]}
    for i in range(1, config.workers + 1):
        argv["worker-%d" % i] = [
            spark_class, WORKER_CLASS, "--host", config.host, "--port", "0", "--webui-port", "0",
            "--cores", str(config.worker_cores), "--memory", config.worker_memory,
            "--work-dir", str(config.cluster_dir / "work" / ("worker-%d" % i)), config.master_url,
        ]
    return argv


class SparkStandalone:
    """Master + workers as child JVMs; `start()` returns when every worker is ALIVE."""

    def __init__(self, config: StandaloneConfig):
        self.config = config
        self.processes: Dict[str, subprocess.Popen] = {}
        self.restarts: Dict[str, int] = {}
        self._commands: Dict[str, List[str]] = {}
        self._env: Dict[str, str] = {}
        self._stopping = False

    def __enter__(self) -> "SparkStandalone":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def status(self, timeout: float = 3.0) -> Optional[dict]:
        try:
            with urllib.request.urlopen(self.config.status_url, timeout=timeout) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def alive_workers(self) -> int:
        status = self.status() or {}
        return int(status.get("aliveworkers", 0))

    def _launch(self, name: str) -> None:
        log_path = self.config.cluster_dir / "logs" / ("%s.out" % name)
        with open(log_path, "ab") as log:
            self.processes[name] = subprocess.Popen(
                self._commands[name], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env, cwd=str(self.config.cluster_dir), start_new_session=True,
                preexec_fn=process.die_with_parent(signal.SIGTERM),
            )
        LOG.info("event=jvm_started name=%s pid=%d", name, self.processes[name].pid)
        pids = {n: p.pid for n, p in self.processes.items() if p.poll() is None}
        (self.config.cluster_dir / "processes.json").write_text(json.dumps(pids, sort_keys=True), encoding="utf-8")

    def start(self, cancel: Optional[threading.Event] = None) -> None:
        cancel = cancel or threading.Event()
        config = self.config
        for port in (config.port, config.web_ui_port):
            if process.port_is_open(config.host, port):
                raise StandaloneError("%s:%d is already in use (another Spark master?): stop it or choose "
                                      "--port/--web-ui-port" % (config.host, port))
        java, _ = process.find_java(None, 17, needed_by="Spark 4")
        for sub in ("logs", "work", "local"):
            (config.cluster_dir / sub).mkdir(parents=True, exist_ok=True)
        self._commands = commands(config)
        self._env = dict(os.environ, SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP=config.host,
                         SPARK_LOG_DIR=str(config.cluster_dir / "logs"), SPARK_DAEMON_MEMORY=config.daemon_memory,
                         SPARK_DAEMON_JAVA_OPTS=daemon_options(config), SPARK_NO_DAEMONIZE="1",
                         PYSPARK_PYTHON=sys.executable)
        if not self._env.get("JAVA_HOME"):
            self._env["JAVA_HOME"] = str(pathlib.Path(shutil.which(java) or java).resolve().parents[1])
        began = time.monotonic()
        self._stopping = False
        try:
            self._launch("master")
            for name in self._commands:
                if name != "master":
                    self._launch(name)
            deadline = began + config.start_timeout
            while self.alive_workers() < config.workers:
                for name, jvm in self.processes.items():
                    if jvm.poll() is not None:
                        raise StandaloneError("%s exited with %s during start-up:\n%s" % (
                            name, jvm.returncode, process.tail(config.cluster_dir / "logs" / ("%s.out" % name))))
                if cancel.is_set():
                    raise StandaloneError("start-up cancelled")
                if time.monotonic() > deadline:
                    raise StandaloneError("%s did not list %d ALIVE workers within %.0f s (status: %s); logs in %s"
                                          % (config.status_url, config.workers, config.start_timeout,
                                             self.status(), config.cluster_dir / "logs"))
                cancel.wait(0.5)
        except BaseException:
            self.stop()
            raise
        LOG.info("event=cluster_ready master=%s workers=%d seconds=%.1f",
                 config.master_url, config.workers, time.monotonic() - began)

    def kill(self, name: str) -> None:
        """SIGKILL one daemon (fault tests); `supervise` restarts a worker."""
        jvm = self.processes[name]
        jvm.kill()
        jvm.wait()

    def supervise(self) -> List[str]:
        """Restarts dead workers; returns daemons that are down for good (the master)."""
        down = []
        for name, jvm in list(self.processes.items()):
            if jvm.poll() is None or self._stopping:
                continue
            if name != "master" and self.config.restart_workers:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                LOG.warning("event=worker_restart name=%s exit=%s", name, jvm.returncode)
                self._launch(name)
            else:
                down.append(name)
        return down

    def stop(self) -> Dict[str, Optional[int]]:
        """SIGTERM to the workers, then the master; SIGKILL after the stop timeout."""
        self._stopping = True
        codes: Dict[str, Optional[int]] = {}
        workers = [n for n in self.processes if n != "master"]
        groups = [workers, [n for n in self.processes if n == "master"]]
        for group in groups:
            for name in group:
                if self.processes[name].poll() is None:
                    self.processes[name].send_signal(signal.SIGTERM)
            for name in group:
                jvm = self.processes[name]
                try:
                    jvm.wait(self.config.stop_timeout)
                except subprocess.TimeoutExpired:
                    jvm.kill()
                    jvm.wait()
                codes[name] = jvm.returncode
        self.processes.clear()
        LOG.info("event=cluster_stopped exits=%s", codes)
        return codes


def parse_args(argv: Optional[Sequence[str]] = None) -> StandaloneConfig:
    parser = argparse.ArgumentParser(
        prog="standalone",
        description="Run a Spark standalone cluster (master + workers) on loopback until SIGTERM/Ctrl-C.",
        epilog="Jobs: --master spark://127.0.0.1:7177. State and logs: <state-dir>/spark-standalone/.",
    )
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ["DP_STATE_DIR"]) if os.environ.get("DP_STATE_DIR") else None,
                        help="state root [env DP_STATE_DIR, default <workspace>/.state]")
    parser.add_argument("--port", type=int, default=process.env_int("DP_SPARK_MASTER_PORT", 7177, "a port number"),
                        help="master port [env DP_SPARK_MASTER_PORT, default 7177]")
    parser.add_argument("--web-ui-port", type=int,
                        default=process.env_int("DP_SPARK_MASTER_UI_PORT", 18080, "a port number"),
                        help="master web UI and JSON status [env DP_SPARK_MASTER_UI_PORT, default 18080]")
    parser.add_argument("--workers", type=int, default=process.env_int("DP_SPARK_WORKERS", 2),
                        help="worker daemons [env DP_SPARK_WORKERS, default 2]")
    parser.add_argument("--worker-cores", type=int, default=1, help="cores each worker offers [1]")
    parser.add_argument("--worker-memory", default="768m", help="memory each worker offers executors [768m]")
    parser.add_argument("--no-restart-workers", action="store_true", help="leave a dead worker dead")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds until all workers are ALIVE [180]")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.worker_cores < 1:
        parser.error("--workers and --worker-cores must be at least 1")
    return StandaloneConfig(
        state_dir=(args.state_dir or process.workspace_state_dir()).absolute(), port=args.port,
        web_ui_port=args.web_ui_port, workers=args.workers, worker_cores=args.worker_cores,
        worker_memory=args.worker_memory, restart_workers=not args.no_restart_workers,
        start_timeout=args.start_timeout,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = parse_args(argv)
    stop_requested = process.stop_on_signals(LOG)
    cluster = SparkStandalone(config)
    try:
        cluster.start(cancel=stop_requested)
    except (StandaloneError, process.JavaNotFound) as err:
        print("spark standalone cluster failed to start: %s" % err, file=sys.stderr)
        return 1
    print("spark standalone cluster up: master=%s ui=http://%s:%d workers=%d (state: %s)" % (
        config.master_url, config.host, config.web_ui_port, config.workers, config.cluster_dir), flush=True)
    while not stop_requested.wait(1.0):
        down = cluster.supervise()
        if down:
            print("spark %s exited by itself; stopping (logs: %s)" % (down, config.cluster_dir / "logs"),
                  file=sys.stderr)
            cluster.stop()
            return 1
    cluster.stop()
    print("spark standalone cluster stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
