"""A Spark Connect server on loopback: the job server the commerce pipeline submits Spark work to.

    bazel run //deploy/spark:connect_server -- --help

The server is the one the pyspark distribution ships (`org.apache.spark.sql.connect.service.
SparkConnectServer`, started through the distribution's own `bin/spark-submit`): one long-lived
Spark driver that runs DataFrame plans sent by clients over gRPC (`sc://host:port`). It runs a
`local[N]` master by default and can drive a standalone cluster with `--master spark://...`.

Everything it keeps lives under `<state-dir>/spark/` (scratch space, warehouse, logs). The
launcher prints `spark connect server ready on sc://127.0.0.1:PORT` once a real query through
the Connect client has answered (the health check, also available as `--check URL`), and on
SIGTERM or Ctrl-C stops the JVM (Spark's shutdown hooks stop the SparkContext) and exits 0.
See docs/adr/0013-spark-job-server.md for why Spark Connect and not Apache Livy.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Sequence

from deploy.common import process

LOG = logging.getLogger("spark_connect_server")

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
DEFAULT_PORT = 15002  # Spark Connect's own default
# The JVM's exit status after SIGTERM when its shutdown hooks completed (128 + 15).
CLEAN_EXIT_CODES = (0, 128 + signal.SIGTERM)
READY_PREFIX = "spark connect server ready on "


class ConnectServerError(RuntimeError):
    """The server could not be started or stopped; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class ConnectServerConfig:
    state_dir: pathlib.Path
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"
    master: str = "local[2]"
    driver_memory: str = "1g"
    ui_port: int = 0  # 0: no web UI (and no Prometheus servlet)
    shuffle_partitions: int = 4
    start_timeout: float = 240.0
    confs: tuple = ()  # extra (key, value) Spark settings

    @property
    def spark_dir(self) -> pathlib.Path:
        return self.state_dir / "spark"

    @property
    def log_path(self) -> pathlib.Path:
        return self.spark_dir / "logs" / "connect-server.log"

    @property
    def url(self) -> str:
        return "sc://%s:%d" % (self.host, self.port)


def spark_home() -> pathlib.Path:
    """The pyspark package directory: it holds bin/spark-submit and jars/ (a full Spark)."""
    import pyspark

    home = pathlib.Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-submit").exists() or not (home / "jars").is_dir():
        raise ConnectServerError("%s has no bin/spark-submit or jars/: not a full pyspark distribution" % home)
    return home


def spark_version() -> str:
    import pyspark

    return pyspark.__version__


def server_confs(config: ConnectServerConfig) -> List[tuple]:
    """The Spark settings the server starts with (loopback only, state under the state dir)."""
    spark_dir = config.spark_dir
    confs = [
        ("spark.connect.grpc.binding.address", config.host),
        ("spark.connect.grpc.binding.port", str(config.port)),
        ("spark.driver.host", config.host),
        ("spark.driver.bindAddress", config.host),
        ("spark.local.dir", str(spark_dir / "local")),
        ("spark.sql.warehouse.dir", str(spark_dir / "warehouse")),
        ("spark.sql.catalogImplementation", "in-memory"),
        ("spark.sql.session.timeZone", "UTC"),
        ("spark.sql.shuffle.partitions", str(config.shuffle_partitions)),
        ("spark.master.rest.enabled", "false"),
    ]
    if config.ui_port:
        confs += [
            ("spark.ui.enabled", "true"),
            ("spark.ui.port", str(config.ui_port)),
            ("spark.port.maxRetries", "0"),
            # Prometheus text format on the UI port: driver metrics and executor metrics.
            ("spark.ui.prometheus.enabled", "true"),
            ("spark.metrics.conf.*.sink.prometheusServlet.class", "org.apache.spark.metrics.sink.PrometheusServlet"),
            ("spark.metrics.conf.*.sink.prometheusServlet.path", "/metrics/prometheus"),
        ]
    else:
        confs.append(("spark.ui.enabled", "false"))
    return confs + list(config.confs)


def parse_url(url: str) -> tuple:
    """(host, port) of sc://HOST:PORT[/;params]; ValueError otherwise."""
    match = re.fullmatch(r"sc://([^:/;]+):(\d+)(?:[/;].*)?", url)
    if not match:
        raise ValueError("not a Spark Connect URL (want sc://HOST:PORT): %r" % url)
    return match.group(1), int(match.group(2))


def check_health(url: str) -> str:
    """Runs `SELECT 1` through the Connect client; returns the server's Spark version or raises.

    A closed port fails at once (the client itself would retry for minutes)."""
    from pyspark.sql import SparkSession

    host, port = parse_url(url)
    if not process.port_is_open(host, port, timeout=2.0):
        raise ConnectServerError("nothing listens on %s:%d" % (host, port))

    session = SparkSession.builder.remote(url).getOrCreate()
    try:
        row = session.sql("SELECT 1 AS one").collect()[0]
        if row.one != 1:
            raise ConnectServerError("health query through %s returned %r" % (url, row))
        return session.version
    finally:
        session.stop()


class SparkConnectServer:
    """One Spark Connect server JVM, started and stopped by this process."""

    def __init__(self, config: ConnectServerConfig):
        self.config = config
        self.process: Optional[subprocess.Popen] = None
        self.version: Optional[str] = None
        self.start_seconds: Optional[float] = None

    @property
    def url(self) -> str:
        return self.config.url

    def command(self) -> List[str]:
        home = spark_home()
        argv = [
            str(home / "bin" / "spark-submit"),
            "--class", SERVER_CLASS,
            "--name", "data-pipelines spark connect server",
            "--master", self.config.master,
            "--driver-memory", self.config.driver_memory,
        ]
        for key, value in server_confs(self.config):
            argv += ["--conf", "%s=%s" % (key, value)]
        return argv

    def environment(self) -> dict:
        env = dict(os.environ)
        env["SPARK_HOME"] = str(spark_home())
        env["SPARK_LOCAL_IP"] = self.config.host  # the web UI and block manager bind here too
        env["SPARK_LOG_DIR"] = str(self.config.log_path.parent)
        # Python workers (UDFs) would use this interpreter; the job needs none, but be exact.
        env.setdefault("PYSPARK_PYTHON", sys.executable)
        if not env.get("JAVA_HOME"):
            java = shutil.which("java")
            if java:
                env["JAVA_HOME"] = str(pathlib.Path(java).resolve().parent.parent)
        return env

    def start(self, cancel: Optional[threading.Event] = None) -> "SparkConnectServer":
        if process.port_is_open(self.config.host, self.config.port):
            raise ConnectServerError(
                "%s:%d is already in use: stop what listens there or pass another --port (0 picks a free one)"
                % (self.config.host, self.config.port)
            )
        process.find_java(needed_by="Spark %s" % spark_version())
        for sub in ("local", "warehouse", "logs"):
            (self.config.spark_dir / sub).mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        log = open(self.config.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment(), cwd=str(self.config.spark_dir),
                preexec_fn=process.die_with_parent(signal.SIGTERM),
            )
        finally:
            log.close()
        LOG.info("event=server_starting pid=%d url=%s master=%s log=%s", self.process.pid, self.url,
                 self.config.master, self.config.log_path)
        deadline = began + self.config.start_timeout
        while not process.port_is_open(self.config.host, self.config.port):
            self._check_alive("while starting")
            if cancel is not None and cancel.is_set():
                self.stop()
                raise ConnectServerError("start cancelled")
            if time.monotonic() > deadline:
                self.stop()
                raise ConnectServerError(
                    "no Spark Connect server on %s after %.0f s; last log lines:\n%s"
                    % (self.url, self.config.start_timeout, process.tail(self.config.log_path))
                )
            time.sleep(0.5)
        last_error = None
        while time.monotonic() < deadline:
            self._check_alive("before answering its health query")
            try:
                self.version = check_health(self.url)
                break
            except Exception as err:  # the session may not be ready the moment the port opens
                last_error = err
                time.sleep(1.0)
        else:
            self.stop()
            raise ConnectServerError("%s does not answer queries: %s" % (self.url, last_error))
        self.start_seconds = time.monotonic() - began
        LOG.info("event=server_ready url=%s spark=%s seconds=%.1f", self.url, self.version, self.start_seconds)
        return self

    def _check_alive(self, when: str) -> None:
        code = self.process.poll() if self.process else None
        if code is not None:
            raise ConnectServerError(
                "the Spark Connect server exited with %s %s; last log lines:\n%s"
                % (code, when, process.tail(self.config.log_path))
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 60.0) -> Optional[int]:
        """SIGTERM (Spark stops its context in a shutdown hook); SIGKILL after `timeout`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                LOG.warning("event=server_kill reason='no exit %.0f s after SIGTERM'", timeout)
                self.process.kill()
                self.process.wait()
        LOG.info("event=server_stopped exit=%s", self.process.returncode)
        return self.process.returncode


def _conf(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("spark."):
        raise argparse.ArgumentTypeError("want spark.KEY=VALUE, got %r" % text)
    return key, value


def _master(text: str) -> str:
    if not re.fullmatch(r"local(\[(\d+|\*)\])?|spark://[^\s]+", text):
        raise argparse.ArgumentTypeError("want local[N] or spark://HOST:PORT, got %r" % text)
    return text


def default_state_dir() -> pathlib.Path:
    if os.environ.get("BUILD_WORKSPACE_DIRECTORY"):
        return process.workspace_state_dir()
    return pathlib.Path(tempfile.mkdtemp(prefix="dp-spark-"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connect_server",
        description="Run a Spark Connect server (the job server of the commerce pipeline) on loopback "
                    "until SIGTERM/Ctrl-C. Clients connect with sc://HOST:PORT.",
        epilog="Examples: bazel run //deploy/spark:connect_server -- --port 15002 ; "
               "--master spark://10.0.0.5:7077 to drive a standalone cluster ; "
               "--check sc://127.0.0.1:15002 to probe a running server (exit 0 when healthy).",
    )
    parser.add_argument("--port", type=int, default=process.env_int("DP_SPARK_CONNECT_PORT", DEFAULT_PORT, "a port number"),
                        help="gRPC port; 0 picks a free one [env DP_SPARK_CONNECT_PORT, default %d]" % DEFAULT_PORT)
    parser.add_argument("--host", default=os.environ.get("DP_SPARK_CONNECT_HOST", "127.0.0.1"),
                        help="address to bind [env DP_SPARK_CONNECT_HOST, default 127.0.0.1]")
    parser.add_argument("--master", type=_master, default=os.environ.get("DP_SPARK_MASTER", "local[2]"),
                        help="local[N] or spark://HOST:PORT of a standalone master [env DP_SPARK_MASTER, default local[2]]")
    parser.add_argument("--driver-memory", default=os.environ.get("DP_SPARK_DRIVER_MEMORY", "1g"),
                        help="driver JVM heap (in local mode also the executors') [env DP_SPARK_DRIVER_MEMORY, default 1g]")
    parser.add_argument("--ui-port", type=int, default=process.env_int("DP_SPARK_UI_PORT", 0, "a port number"),
                        help="Spark web UI port, with Prometheus metrics at /metrics/prometheus and "
                             "/metrics/executors/prometheus; 0 = no UI [env DP_SPARK_UI_PORT, default 0]")
    parser.add_argument("--shuffle-partitions", type=int, default=process.env_int("DP_SPARK_SHUFFLE_PARTITIONS", 4),
                        help="spark.sql.shuffle.partitions [env DP_SPARK_SHUFFLE_PARTITIONS, default 4: small days, 2 cores]")
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ["DP_STATE_DIR"]) if os.environ.get("DP_STATE_DIR") else None,
                        help="state root; the server uses <state-dir>/spark [env DP_STATE_DIR, default "
                             "<workspace>/.state under bazel run, else a new temp dir]")
    parser.add_argument("--conf", type=_conf, action="append", default=[], metavar="spark.KEY=VALUE",
                        help="extra Spark setting (repeatable)")
    parser.add_argument("--start-timeout", type=float, default=240.0, help="seconds to wait for readiness [240]")
    parser.add_argument("--check", metavar="URL", help="only probe the server at URL (sc://HOST:PORT) and exit")
    return parser


def parse_config(args: argparse.Namespace) -> ConnectServerConfig:
    port = args.port or process.free_port(args.host)
    return ConnectServerConfig(
        state_dir=(args.state_dir or default_state_dir()).absolute(),
        port=port,
        host=args.host,
        master=args.master,
        driver_memory=args.driver_memory,
        ui_port=args.ui_port,
        shuffle_partitions=args.shuffle_partitions,
        start_timeout=args.start_timeout,
        confs=tuple(args.conf),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.check:
        try:
            version = check_health(args.check)
        except Exception as err:
            print("unhealthy: %s: %s" % (args.check, err), file=sys.stderr)
            return 1
        print("healthy: %s (Spark %s)" % (args.check, version))
        return 0
    config = parse_config(args)
    stop_requested = process.stop_on_signals(LOG)

    server = SparkConnectServer(config)
    try:
        server.start(cancel=stop_requested)
    except (ConnectServerError, process.JavaNotFound) as err:
        print("spark connect server failed to start: %s" % err, file=sys.stderr)
        return 1
    ui = " ui=http://%s:%d" % (config.host, config.ui_port) if config.ui_port else ""
    print("%s%s (Spark %s, master %s, state %s, log %s%s)" % (
        READY_PREFIX, server.url, server.version, config.master, config.spark_dir, config.log_path, ui), flush=True)
    while not stop_requested.wait(0.5):
        if not server.running():
            code = server.stop()
            print("spark connect server exited by itself with %s; see %s" % (code, config.log_path), file=sys.stderr)
            return 1
    code = server.stop()
    if code not in CLEAN_EXIT_CODES:
        print("spark connect server stopped with exit %s; see %s" % (code, config.log_path), file=sys.stderr)
        return 1
    print("spark connect server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
