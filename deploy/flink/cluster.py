"""A Flink standalone session cluster on loopback: one JobManager and N TaskManagers (default 2).

    bazel run //deploy/flink:cluster -- --help

The Flink distribution is the one inside the PyFlink wheel (@py_flink: `pyflink/bin`,
`pyflink/lib`); the JVMs run its `jobmanager.sh start-foreground` / `taskmanager.sh
start-foreground`, so Flink computes their memory settings itself. The project's Flink jar set
(@maven_flink: Kafka SQL connector, protobuf format, protobuf-java) is on every JVM's classpath
next to Flink's own `lib/`. Everything the cluster writes lives under
`<state-dir>/flink-cluster/`: `conf/` (rewritten on every start), `lib/` (links), `log/`,
`tmp/<process>/`, `processes.json` (the PID of each JVM, for operators and fault tests).

Ready means the REST API reports every TaskManager registered. A TaskManager that dies is
restarted (jobs fail over to the free slots meanwhile, then back); SIGTERM or Ctrl-C stops the
TaskManagers, then the JobManager.
"""

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

LOG = logging.getLogger("flink_cluster")

CLEAN_EXIT_CODES = (0, 128 + signal.SIGTERM, -signal.SIGTERM)


class FlinkClusterError(RuntimeError):
    """The cluster could not be started; the message carries what to look at."""


@dataclasses.dataclass(frozen=True)
class FlinkClusterConfig:
    state_dir: pathlib.Path
    host: str = "127.0.0.1"
    rest_port: int = 18081
    rpc_port: int = 16123
    taskmanagers: int = 2
    slots_per_taskmanager: int = 2  # one TaskManager alone can run a parallelism-2 job
    jobmanager_memory: str = "768m"  # process size; the heap is about 256 MB of it
    taskmanager_memory: str = "1024m"  # process size; the heap is about 320 MB of it
    start_timeout: float = 120.0
    stop_timeout: float = 30.0
    restart_taskmanagers: bool = True
    extra_jars: tuple = ()  # default: the @maven_flink jars in runfiles
    overrides: tuple = ()  # extra config.yaml entries (flattened keys)

    @property
    def cluster_dir(self) -> pathlib.Path:
        return self.state_dir / "flink-cluster"

    @property
    def rest_url(self) -> str:
        return "http://%s:%d" % (self.host, self.rest_port)

    @property
    def jobmanager(self) -> str:
        """What `--jobmanager` of a job takes (the REST endpoint)."""
        return "%s:%d" % (self.host, self.rest_port)


def flink_home() -> pathlib.Path:
    """The Flink distribution inside the installed PyFlink wheel."""
    try:
        import pyflink
    except ImportError:
        raise FlinkClusterError("PyFlink is not importable: run this through its Bazel target "
                                "(bazel run //deploy/flink:cluster), which brings @py_flink") from None
    home = pathlib.Path(pyflink.__file__).resolve().parent
    if not (home / "bin" / "jobmanager.sh").is_file():
        raise FlinkClusterError("%s has no bin/jobmanager.sh: not a PyFlink with the Flink distribution" % home)
    return home


def configuration(config: FlinkClusterConfig) -> Dict[str, str]:
    """config.yaml of every JVM of the cluster (flattened keys)."""
    settings = {
        "jobmanager.bind-host": config.host,
        "jobmanager.rpc.address": config.host,
        "jobmanager.rpc.port": str(config.rpc_port),
        "jobmanager.memory.process.size": config.jobmanager_memory,
        "jobmanager.execution.failover-strategy": "region",
        "taskmanager.bind-host": config.host,
        "taskmanager.host": config.host,
        "taskmanager.numberOfTaskSlots": str(config.slots_per_taskmanager),
        "taskmanager.memory.process.size": config.taskmanager_memory,
        "taskmanager.memory.managed.fraction": "0.1",
        "rest.address": config.host,
        "rest.bind-address": config.host,
        "rest.port": str(config.rest_port),
        "blob.server.port": "0",
        "taskmanager.rpc.port": "0",
        "taskmanager.data.port": "0",
        "parallelism.default": "2",
        # A killed TaskManager is noticed within seconds (its RPC connection drops), not the
        # default 50 s heartbeat timeout.
        "heartbeat.interval": "2000",
        "heartbeat.timeout": "15000",
        # Jobs bring the same jars in pipeline.jars; resolving parent-first keeps one copy of
        # each class (the connector and protobuf-java are on the cluster's classpath).
        "classloader.resolve-order": "parent-first",
        "env.java.opts.all": " ".join(_JAVA_OPENS),
        "env.log.dir": str(config.cluster_dir / "log"),
        "env.pid.dir": str(config.cluster_dir / "pids"),
    }
    settings.update(dict(config.overrides))
    return settings


# What Flink's own conf/config.yaml passes to every JVM on Java 17.
_JAVA_OPENS = (
    "-XX:-UsePerfData",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.time=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED",
)


def _yaml(settings: Dict[str, str]) -> str:
    lines = ["# Written by deploy/flink/cluster.py on every start."]
    for key, value in settings.items():
        lines.append("%s: %s" % (key, json.dumps(value)))
    return "\n".join(lines) + "\n"


class FlinkCluster:
    """JobManager + TaskManagers as child JVMs. `start()` returns when all TaskManagers registered."""

    def __init__(self, config: FlinkClusterConfig):
        self.config = config
        self.processes: Dict[str, subprocess.Popen] = {}
        self.restarts: Dict[str, int] = {}
        self._home: Optional[pathlib.Path] = None
        self._env: Dict[str, str] = {}
        self._stopping = False

    def __enter__(self) -> "FlinkCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def taskmanager_names(self) -> List[str]:
        return ["taskmanager-%d" % i for i in range(1, self.config.taskmanagers + 1)]

    def _prepare(self) -> None:
        config = self.config
        for port in (config.rest_port, config.rpc_port):
            if process.port_is_open(config.host, port):
                raise FlinkClusterError("%s:%d is already in use: another Flink cluster running? (stop it, or "
                                        "choose --rest-port/--rpc-port)" % (config.host, port))
        java, _version = process.find_java(None, 17, needed_by="Flink 2")
        self._home = flink_home()
        jars = list(config.extra_jars)
        if not jars:
            from tools.jvm import classpath

            jars = classpath.jars("maven_flink")
        cluster_dir = config.cluster_dir
        for name in ("conf", "lib", "log", "pids", "tmp"):
            (cluster_dir / name).mkdir(parents=True, exist_ok=True)
        lib = cluster_dir / "lib"
        for old in lib.iterdir():
            old.unlink()
        for jar in sorted((self._home / "lib").glob("*.jar")) + [pathlib.Path(j) for j in jars]:
            (lib / jar.name).symlink_to(jar.resolve())
        conf = cluster_dir / "conf"
        (conf / "config.yaml").write_text(_yaml(configuration(config)), encoding="utf-8")
        for name in ("log4j-console.properties", "logback-console.xml"):
            shutil.copyfile(self._home / "conf" / name, conf / name)
        self._env = dict(
            os.environ,
            FLINK_CONF_DIR=str(conf),
            FLINK_LIB_DIR=str(lib),
            FLINK_LOG_DIR=str(cluster_dir / "log"),
            FLINK_PID_DIR=str(cluster_dir / "pids"),
            JAVA_HOME=os.environ.get("JAVA_HOME") or str(pathlib.Path(shutil.which(java) or java).resolve().parents[1]),
            # Logs to files only (the .log via log4j, stdout/stderr into .out/.err).
            STD_REDIRECT_TO_FILE="true",
        )

    def _launch(self, name: str) -> None:
        assert self._home is not None
        if name == "jobmanager":
            argv = [str(self._home / "bin" / "jobmanager.sh"), "start-foreground"]
        else:
            tmp = self.config.cluster_dir / "tmp" / name
            tmp.mkdir(parents=True, exist_ok=True)
            argv = [str(self._home / "bin" / "taskmanager.sh"), "start-foreground",
                    "-D", "taskmanager.resource-id=%s" % name, "-D", "io.tmp.dirs=%s" % tmp]
        console = self.config.cluster_dir / "log" / ("%s.console" % name)
        with open(console, "ab") as out:
            self.processes[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self._env,
                cwd=str(self.config.cluster_dir), start_new_session=True,
                preexec_fn=process.die_with_parent(signal.SIGTERM),
            )
        LOG.info("event=jvm_started name=%s pid=%d", name, self.processes[name].pid)
        self._write_pids()

    def _write_pids(self) -> None:
        pids = {name: p.pid for name, p in self.processes.items() if p.poll() is None}
        target = self.config.cluster_dir / "processes.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(pids, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(target)

    def overview(self, timeout: float = 3.0) -> Optional[dict]:
        """The REST API's /overview (TaskManagers, slots, jobs), or None when it does not answer."""
        try:
            with urllib.request.urlopen(self.config.rest_url + "/overview", timeout=timeout) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def healthy(self) -> bool:
        overview = self.overview()
        return bool(overview) and overview.get("taskmanagers") == self.config.taskmanagers

    def start(self, cancel: Optional[threading.Event] = None) -> None:
        cancel = cancel or threading.Event()
        began = time.monotonic()
        self._stopping = False
        self._prepare()
        try:
            self._launch("jobmanager")
            for name in self.taskmanager_names:
                self._launch(name)
            self._wait_healthy(began + self.config.start_timeout, cancel)
        except BaseException:
            self.stop()
            raise
        LOG.info("event=cluster_ready rest=%s taskmanagers=%d seconds=%.1f",
                 self.config.rest_url, self.config.taskmanagers, time.monotonic() - began)

    def _wait_healthy(self, deadline: float, cancel: threading.Event) -> None:
        while not self.healthy():
            if cancel.is_set():
                raise FlinkClusterError("start-up of the Flink cluster was cancelled")
            for name, jvm in self.processes.items():
                if jvm.poll() is not None:
                    raise FlinkClusterError("%s exited with %s during start-up; see %s:\n%s" % (
                        name, jvm.returncode, self.config.cluster_dir / "log",
                        process.tail(self.config.cluster_dir / "log" / ("%s.console" % name))))
            if time.monotonic() > deadline:
                raise FlinkClusterError("Flink REST %s did not report %d TaskManagers within %.0f s (now: %s); "
                                        "see %s" % (self.config.rest_url, self.config.taskmanagers,
                                                    self.config.start_timeout, self.overview(),
                                                    self.config.cluster_dir / "log"))
            cancel.wait(0.5)

    def pid(self, name: str) -> Optional[int]:
        jvm = self.processes.get(name)
        return jvm.pid if jvm and jvm.poll() is None else None

    def kill(self, name: str) -> None:
        """SIGKILL one JVM (fault tests); a supervised TaskManager comes back via `supervise`."""
        jvm = self.processes[name]
        LOG.warning("event=sigkill name=%s pid=%d", name, jvm.pid)
        jvm.kill()
        jvm.wait()

    def supervise(self) -> List[str]:
        """Restarts TaskManagers that died; returns the names of JVMs that are down for good."""
        down = []
        for name, jvm in list(self.processes.items()):
            if jvm.poll() is None or self._stopping:
                continue
            if name != "jobmanager" and self.config.restart_taskmanagers:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                LOG.warning("event=taskmanager_restart name=%s exit=%s restarts=%d",
                            name, jvm.returncode, self.restarts[name])
                self._launch(name)
            else:
                down.append(name)
        return down

    def stop(self) -> Dict[str, Optional[int]]:
        """SIGTERM to the TaskManagers, then the JobManager; SIGKILL after the stop timeout."""
        self._stopping = True
        codes: Dict[str, Optional[int]] = {}
        order = [n for n in self.processes if n != "jobmanager"] + [n for n in self.processes if n == "jobmanager"]
        for group in (order[:-1], order[-1:]) if "jobmanager" in self.processes else (order,):
            for name in group:
                if self.processes[name].poll() is None:
                    self.processes[name].send_signal(signal.SIGTERM)
            for name in group:
                jvm = self.processes[name]
                try:
                    jvm.wait(self.config.stop_timeout)
                except subprocess.TimeoutExpired:
                    LOG.warning("event=killed name=%s reason=no_exit_within_%.0fs", name, self.config.stop_timeout)
                    jvm.kill()
                    jvm.wait()
                codes[name] = jvm.returncode
        self.processes.clear()
        if self.config.cluster_dir.exists():
            self._write_pids()
        LOG.info("event=cluster_stopped exits=%s", codes)
        return codes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flink-rest-port", type=int,
                        default=process.env_int("DP_FLINK_REST_PORT", 18081, "a port number"),
                        help="JobManager REST/web port; jobs take --jobmanager HOST:PORT "
                             "[env DP_FLINK_REST_PORT, default 18081]")
    parser.add_argument("--flink-rpc-port", type=int,
                        default=process.env_int("DP_FLINK_RPC_PORT", 16123, "a port number"),
                        help="JobManager RPC port [env DP_FLINK_RPC_PORT, default 16123]")
    parser.add_argument("--taskmanagers", type=int, default=process.env_int("DP_FLINK_TASKMANAGERS", 2),
                        help="number of TaskManagers [env DP_FLINK_TASKMANAGERS, default 2]")
    parser.add_argument("--slots", type=int, default=2, help="task slots per TaskManager [2]")
    parser.add_argument("--no-restart-taskmanagers", action="store_true",
                        help="leave a dead TaskManager dead (default: restart it)")
    parser.add_argument("--flink-start-timeout", type=float, default=180.0,
                        help="seconds to wait until every TaskManager registered [180]")


def config_from_args(args: argparse.Namespace) -> FlinkClusterConfig:
    if args.taskmanagers < 1 or args.slots < 1:
        raise SystemExit("--taskmanagers and --slots must be at least 1")
    state_dir = (args.state_dir or process.workspace_state_dir()).absolute()
    return FlinkClusterConfig(
        state_dir=state_dir, rest_port=args.flink_rest_port, rpc_port=args.flink_rpc_port,
        taskmanagers=args.taskmanagers, slots_per_taskmanager=args.slots,
        restart_taskmanagers=not args.no_restart_taskmanagers, start_timeout=args.flink_start_timeout,
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> FlinkClusterConfig:
    parser = argparse.ArgumentParser(
        prog="cluster",
        description="Run a Flink standalone session cluster (JobManager + TaskManagers) on loopback "
                    "until SIGTERM/Ctrl-C.",
        epilog="State, config and logs live in <state-dir>/flink-cluster/. Submit the behaviour job with: "
               "bazel run //jobs/behaviour/metrics -- --jobmanager 127.0.0.1:18081",
    )
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ["DP_STATE_DIR"]) if os.environ.get("DP_STATE_DIR") else None,
                        help="state root [env DP_STATE_DIR, default <workspace>/.state]")
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def run_until_signalled(cluster: FlinkCluster) -> int:
    stop_requested = process.stop_on_signals(LOG)
    try:
        cluster.start(cancel=stop_requested)
    except (FlinkClusterError, process.JavaNotFound) as err:
        print("flink cluster failed to start: %s" % err, file=sys.stderr)
        return 1
    print("flink cluster up: rest=%s taskmanagers=%d slots=%d (state: %s)" % (
        cluster.config.rest_url, cluster.config.taskmanagers,
        cluster.config.taskmanagers * cluster.config.slots_per_taskmanager, cluster.config.cluster_dir), flush=True)
    while not stop_requested.wait(1.0):
        down = cluster.supervise()
        if down:
            print("flink %s exited by itself; stopping the cluster (logs: %s)"
                  % (down, cluster.config.cluster_dir / "log"), file=sys.stderr)
            cluster.stop()
            return 1
    cluster.stop()
    print("flink cluster stopped", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return run_until_signalled(FlinkCluster(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
