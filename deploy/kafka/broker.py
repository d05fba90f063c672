"""A single-node Apache Kafka 4 broker (KRaft: broker and controller in one JVM) on loopback.

    bazel run //deploy/kafka:broker -- --help

The jars come from @maven_kafka (third_party/jvm/kafka). Everything the broker keeps lives under
one state directory: `<state-dir>/kafka/{server.properties,log4j2.properties,data/,logs/}`.
The storage is formatted once (a new cluster id) and reused on every later start, so topics and
records survive restarts. SIGTERM or Ctrl-C stops the JVM cleanly (a controlled shutdown).
"""

import argparse
import base64
import dataclasses
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from deploy.common import process

LOG = logging.getLogger("kafka_broker")

JAVA_MIN_MAJOR = 17  # Kafka 4 brokers need Java 17.
MAVEN_REPOSITORY = "maven_kafka"
READY_LINE = "Kafka Server started"
# The JVM's exit status after SIGTERM when its shutdown hooks completed (128 + 15).
CLEAN_EXIT_CODES = (0, 128 + signal.SIGTERM)

# Kafka 4 logs through SLF4J 1.7 to Log4j 2, and its jars carry no Log4j configuration (Log4j's
# fallback shows errors only). Everything at INFO goes to server.log (the broker's ready line is
# read from there); warnings and errors also go to the JVM's stderr, which lands in kafka.out.
# `shutdownHook = disable`: otherwise every stop warns "Unable to register Log4j shutdown hook
# because JVM is shutting down" (the appenders flush every line, so nothing is lost).
_LOG4J2_PROPERTIES = """\
# Written by deploy/kafka/broker.py on every start.
status = warn
shutdownHook = disable
appender.server.type = RollingFile
appender.server.name = server
appender.server.fileName = ${sys:kafka.logs.dir}/server.log
appender.server.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 20MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
appender.stderr.filter.level.type = ThresholdFilter
appender.stderr.filter.level.level = warn
rootLogger.level = info
rootLogger.appenderRef.server.ref = server
rootLogger.appenderRef.stderr.ref = stderr
# Per-request and state-change chatter.
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
"""


class BrokerError(RuntimeError):
    """The broker could not be started or stopped; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    """Everything one broker needs; `from_env` gives the local-stack defaults."""

    state_dir: pathlib.Path
    port: int = 9092
    controller_port: int = 9093
    host: str = "127.0.0.1"
    log_dir: Optional[pathlib.Path] = None  # default: <state_dir>/kafka/logs
    heap: str = "512m"
    java: Optional[str] = None  # default: $JAVA_HOME/bin/java, else java on PATH
    classpath: Tuple[str, ...] = ()  # default: the @maven_kafka jars in runfiles
    start_timeout: float = 90.0
    stop_timeout: float = 30.0
    overrides: Tuple[Tuple[str, str], ...] = ()  # extra server.properties entries, applied last
    # Cluster membership (deploy/kafka/cluster.py). The defaults are the single-node broker: node
    # 1, a dynamic quorum of itself, one replica for everything. With `quorum_voters` (node id,
    # host, controller port of every controller) the node joins a static quorum of combined
    # nodes and is formatted with the shared `cluster_id`.
    node_id: int = 1
    quorum_voters: Tuple[Tuple[int, str, int], ...] = ()
    cluster_id: Optional[str] = None  # only with quorum_voters: every node formats with it
    replication_factor: int = 1  # default and internal-topic replication
    min_insync_replicas: int = 1
    internal_topic_partitions: int = 1  # __consumer_offsets, __transaction_state, share state

    @property
    def kafka_dir(self) -> pathlib.Path:
        return self.state_dir / "kafka"

    @property
    def logs(self) -> pathlib.Path:
        return self.log_dir or self.kafka_dir / "logs"

    @property
    def bootstrap(self) -> str:
        return "%s:%d" % (self.host, self.port)


def default_state_dir() -> pathlib.Path:
    return process.workspace_state_dir()


def server_properties(config: BrokerConfig) -> Dict[str, str]:
    """The broker's configuration: one combined broker+controller node.

    Alone (no `quorum_voters`) it is the whole cluster; otherwise one of a static quorum.
    """
    replicas = str(config.replication_factor)
    min_isr = str(config.min_insync_replicas)
    internal_partitions = str(config.internal_topic_partitions)
    if config.quorum_voters:
        # A static quorum: every node knows every voter; ports are fixed for the state's life.
        quorum = {
            "controller.quorum.voters": ",".join(
                "%d@%s:%d" % (node, host, port) for node, host, port in config.quorum_voters
            )
        }
    else:
        # A dynamic (KIP-853) quorum: the voter set lives in the metadata log from formatting
        # on, so the controller port may change between runs of the same state.
        quorum = {"controller.quorum.bootstrap.servers": "%s:%d" % (config.host, config.controller_port)}
    properties = {
        "process.roles": "broker,controller",
        "node.id": str(config.node_id),
        **quorum,
        "listeners": "PLAINTEXT://%s:%d,CONTROLLER://%s:%d"
        % (config.host, config.port, config.host, config.controller_port),
        "advertised.listeners": "PLAINTEXT://%s:%d" % (config.host, config.port),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(config.kafka_dir / "data"),
        # One node: every internal topic has one replica (a cluster: its replication factor),
        # and few partitions keep start-up, file handles and memory small (the defaults are 50
        # partitions each).
        "num.partitions": "1",
        "default.replication.factor": replicas,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": internal_partitions,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": internal_partitions,
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "share.coordinator.state.topic.num.partitions": internal_partitions,
        "group.initial.rebalance.delay.ms": "0",
        # Topics are declared by the pipelines, never made by a typo in a producer.
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.retention.hours": "168",
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
    properties.update(dict(config.overrides))
    return properties


def _write_properties(path: pathlib.Path, properties: Mapping[str, str], title: str) -> None:
    lines = ["# %s" % title] + ["%s=%s" % (key, value) for key, value in properties.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, not starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def find_java(explicit: Optional[str] = None) -> Tuple[str, str]:
    """The java launcher to use and its version; fails unless it is Java 17 or newer."""
    try:
        return process.find_java(explicit, JAVA_MIN_MAJOR, needed_by="Kafka 4")
    except process.JavaNotFound as err:
        raise BrokerError(str(err)) from None


def kafka_version(classpath: Sequence[str]) -> str:
    """The Kafka version baked into the kafka-clients jar on the classpath."""
    for jar in classpath:
        if "kafka-clients" not in os.path.basename(jar):
            continue
        with zipfile.ZipFile(jar) as archive:
            for line in archive.read("kafka/kafka-version.properties").decode().splitlines():
                if line.startswith("version="):
                    return line.split("=", 1)[1].strip()
    return "unknown"


class KafkaBroker:
    """One Kafka broker process: `start()` returns when it serves requests, `stop()` ends it.

    Usable as a context manager. The JVM runs in its own session, so a Ctrl-C in the
    terminal reaches only this process, which then stops the JVM in order.
    """

    def __init__(self, config: BrokerConfig):
        self.config = config
        self.process: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self.cluster_id: Optional[str] = None
        self.version: Optional[str] = None
        self.java_version: Optional[str] = None
        self.start_seconds: Optional[float] = None
        self._classpath: List[str] = list(config.classpath)
        self._began = 0.0
        self._log_offset = 0
        self._terminating = False

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    @property
    def server_log(self) -> pathlib.Path:
        return self.config.logs / "server.log"

    @property
    def console_log(self) -> pathlib.Path:
        return self.config.logs / "kafka.out"

    def __enter__(self) -> "KafkaBroker":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _jvm(self, java: str, main: str, args: Sequence[str], heap: str) -> List[str]:
        return [
            java,
            "-Xms64m",
            "-Xmx" + heap,
            # A small machine: serial GC keeps threads and footprint low; no pauses matter here.
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            # No hsperfdata files in /tmp (and no lock warnings inside Bazel's sandbox).
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            "-Dkafka.logs.dir=" + str(self.config.logs),
            "-Dlog4j2.configurationFile=" + str(self.config.kafka_dir / "log4j2.properties"),
            "-cp",
            os.pathsep.join(self._classpath),
            main,
        ] + list(args)

    def _format_once(self, java: str, properties_file: pathlib.Path) -> None:
        meta = self.config.kafka_dir / "data" / "meta.properties"
        if meta.exists():
            match = re.search(r"^cluster\.id=(.+)$", meta.read_text(encoding="utf-8"), re.M)
            self.cluster_id = match.group(1).strip() if match else None
            LOG.info("event=storage_reused dir=%s cluster_id=%s", meta.parent, self.cluster_id)
            return
        if self.config.quorum_voters:
            if not self.config.cluster_id:
                raise BrokerError("node %d of a cluster needs the cluster's id to format its storage" % self.config.node_id)
            cluster_id = self.config.cluster_id
            quorum_flags: List[str] = []  # the static voters come from server.properties
        else:
            cluster_id = new_cluster_id()
            quorum_flags = ["--standalone"]
        command = self._jvm(
            java, "kafka.tools.StorageTool",
            ["format", "--cluster-id", cluster_id, "--config", str(properties_file)] + quorum_flags,
            heap="256m",
        )
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            raise BrokerError(
                "formatting Kafka storage in %s failed (exit %d):\n%s"
                % (meta.parent, result.returncode, result.stdout.strip())
            )
        self.cluster_id = cluster_id
        LOG.info("event=storage_formatted dir=%s cluster_id=%s", meta.parent, cluster_id)

    def start(self, cancel: Optional[threading.Event] = None) -> None:
        """Write the config, format storage if new, launch the JVM and wait until it serves.

        Setting `cancel` (e.g. from a signal handler) abandons the wait and stops the JVM.
        """
        self.launch()
        self.wait_ready(cancel)

    def launch(self) -> None:
        """Write the config, format storage if new and start the JVM; does not wait.

        A node of a cluster cannot become ready before a quorum of its peers runs, so a cluster
        launches every node first and then waits for each (`wait_ready`).
        """
        if self.process and self.process.poll() is None:
            raise BrokerError("broker already running (pid %d)" % self.process.pid)
        config = self.config
        self._began = time.monotonic()
        for port in (config.port, config.controller_port):
            if process.port_is_open(config.host, port):
                raise BrokerError(
                    "%s:%d is already in use: another broker running? (stop it, or choose "
                    "--port/--controller-port or DP_KAFKA_PORT/DP_KAFKA_CONTROLLER_PORT)"
                    % (config.host, port)
                )
        if not self._classpath:
            from tools.jvm import classpath

            self._classpath = classpath.jars(MAVEN_REPOSITORY)
        java, self.java_version = find_java(config.java)
        self.version = kafka_version(self._classpath)

        for directory in (config.kafka_dir, config.kafka_dir / "data", config.logs):
            directory.mkdir(parents=True, exist_ok=True)
        (config.kafka_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES, encoding="utf-8")
        properties_file = config.kafka_dir / "server.properties"
        _write_properties(
            properties_file, server_properties(config), "Written by deploy/kafka/broker.py on every start."
        )
        self._format_once(java, properties_file)

        # Each start reads its own ready line: remember where this run's log begins.
        self._log_offset = self.server_log.stat().st_size if self.server_log.exists() else 0
        command = self._jvm(java, "kafka.Kafka", [str(properties_file)], heap=config.heap)
        with open(self.console_log, "ab") as console:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=str(config.kafka_dir),
                start_new_session=True,
                preexec_fn=process.die_with_parent(signal.SIGTERM),
            )
        self.returncode = None
        LOG.info("event=jvm_started pid=%d node=%d version=%s java=%s",
                 self.process.pid, config.node_id, self.version, self.java_version)

    def wait_ready(self, cancel: Optional[threading.Event] = None) -> None:
        """Waits until the launched JVM serves metadata; stops it when it does not in time."""
        config = self.config
        try:
            self._wait_ready(self._log_offset, self._began + config.start_timeout, cancel or threading.Event())
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - self._began
        LOG.info(
            "event=broker_ready bootstrap=%s seconds=%.1f state=%s", self.bootstrap, self.start_seconds, config.kafka_dir
        )

    def _logged_since(self, offset: int) -> str:
        try:
            with open(self.server_log, "rb") as log:
                if log.seek(0, os.SEEK_END) < offset:
                    offset = 0  # rolled over
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, offset: int, deadline: float, cancel: threading.Event) -> None:
        assert self.process is not None
        while True:
            if cancel.is_set():
                raise BrokerError("start-up of the broker on %s was cancelled" % self.bootstrap)
            code = self.process.poll()
            if code is not None:
                self.returncode = code
                raise BrokerError(
                    "the Kafka JVM exited with %d during start-up. Last lines of %s:\n%s\n%s:\n%s"
                    % (code, self.server_log, process.tail(self.server_log), self.console_log, process.tail(self.console_log))
                )
            if READY_LINE in self._logged_since(offset) and process.port_is_open(self.config.host, self.config.port):
                if self._metadata_ready(deadline):
                    return
            if time.monotonic() > deadline:
                raise BrokerError(
                    "Kafka did not become ready on %s within %.0f s. Last lines of %s:\n%s"
                    % (self.bootstrap, self.config.start_timeout, self.server_log, process.tail(self.server_log))
                )
            cancel.wait(0.2)

    def _metadata_ready(self, deadline: float) -> bool:
        """A metadata round trip that lists this broker, when confluent_kafka is available."""
        try:
            from confluent_kafka.admin import AdminClient
        except ImportError:
            return True
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 5000})
        try:
            metadata = admin.list_topics(timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        except Exception:  # KafkaException: not ready yet; retried until the deadline
            return False
        return bool(metadata.brokers)

    def stop(self, timeout: Optional[float] = None) -> Optional[int]:
        """SIGTERM, wait for the controlled shutdown, SIGKILL after `timeout`. Returns the exit code."""
        jvm = self.process
        if jvm is None:
            return self.returncode
        if jvm.poll() is None:
            timeout = self.config.stop_timeout if timeout is None else timeout
            if not self._terminating:
                self.terminate()
            try:
                jvm.wait(timeout)
            except subprocess.TimeoutExpired:
                LOG.warning("event=broker_killed pid=%d reason=no_exit_within_%.0fs", jvm.pid, timeout)
                jvm.kill()
                jvm.wait()
        self.returncode = jvm.returncode
        self.process = None
        self._terminating = False
        LOG.info("event=broker_stopped exit=%s clean=%s", self.returncode, self.returncode in CLEAN_EXIT_CODES)
        return self.returncode

    def terminate(self) -> None:
        """Sends SIGTERM and returns at once; `stop()` then waits. A cluster signals all its nodes
        first: a node stopped after its peers are gone waits in vain for the controller quorum."""
        jvm = self.process
        if jvm is not None and jvm.poll() is None:
            LOG.info("event=broker_stopping pid=%d node=%d", jvm.pid, self.config.node_id)
            jvm.send_signal(signal.SIGTERM)
            self._terminating = True

    def kill(self) -> Optional[int]:
        """SIGKILL, no shutdown at all (a crashed machine, for fault tests). Returns the exit code."""
        jvm = self.process
        if jvm is None:
            return self.returncode
        if jvm.poll() is None:
            LOG.warning("event=broker_sigkill pid=%d node=%d", jvm.pid, self.config.node_id)
            jvm.kill()
        jvm.wait()
        self.returncode = jvm.returncode
        self.process = None
        self._terminating = False
        return self.returncode

    def wait(self) -> int:
        """Blocks until the JVM exits by itself; returns its exit code."""
        assert self.process is not None
        self.returncode = self.process.wait()
        return self.returncode


def _override(text: str) -> Tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError("want KEY=VALUE, got %r" % text)
    return key.strip(), value.strip()


def parse_args(argv: Optional[Sequence[str]] = None) -> BrokerConfig:
    parser = argparse.ArgumentParser(
        prog="broker",
        description="Run a single-node Apache Kafka 4 broker (KRaft) on loopback until SIGTERM/Ctrl-C.",
        epilog=(
            "State (config, data, logs) lives in <state-dir>/kafka and survives restarts; delete "
            "that folder for an empty broker. Example: bazel run //deploy/kafka:broker -- --port 19092"
        ),
    )
    parser.add_argument("--port", type=int, default=process.env_int("DP_KAFKA_PORT", 9092, "a port number"),
                        help="client (PLAINTEXT) port [env DP_KAFKA_PORT, default 9092]")
    parser.add_argument("--controller-port", type=int, default=process.env_int("DP_KAFKA_CONTROLLER_PORT", 9093, "a port number"),
                        help="KRaft controller port [env DP_KAFKA_CONTROLLER_PORT, default 9093]")
    parser.add_argument("--host", default=os.environ.get("DP_KAFKA_HOST", "127.0.0.1"),
                        help="address to listen on and advertise [env DP_KAFKA_HOST, default 127.0.0.1]")
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ["DP_STATE_DIR"]) if os.environ.get("DP_STATE_DIR") else None,
                        help="state root; the broker uses <state-dir>/kafka [env DP_STATE_DIR, "
                             "default <workspace>/.state]")
    parser.add_argument("--log-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ["DP_KAFKA_LOG_DIR"]) if os.environ.get("DP_KAFKA_LOG_DIR") else None,
                        help="server.log and kafka.out [env DP_KAFKA_LOG_DIR, default <state-dir>/kafka/logs]")
    parser.add_argument("--heap", default=os.environ.get("DP_KAFKA_HEAP", "512m"),
                        help="JVM maximum heap [env DP_KAFKA_HEAP, default 512m]")
    parser.add_argument("--start-timeout", type=float, default=90.0, help="seconds to wait for readiness [90]")
    parser.add_argument("--override", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help="extra server.properties entry (repeatable), e.g. --override num.partitions=3")
    args = parser.parse_args(argv)
    state_dir = (args.state_dir or default_state_dir()).absolute()
    return BrokerConfig(
        state_dir=state_dir,
        port=args.port,
        controller_port=args.controller_port,
        host=args.host,
        log_dir=args.log_dir.absolute() if args.log_dir else None,
        heap=args.heap,
        start_timeout=args.start_timeout,
        overrides=tuple(args.override),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = parse_args(argv)
    stop_requested = process.stop_on_signals(LOG)

    broker = KafkaBroker(config)
    try:
        broker.start(cancel=stop_requested)
    except BrokerError as err:
        print("kafka broker failed to start: %s" % err, file=sys.stderr)
        return 1
    print(
        "kafka broker listening on %s (state: %s, Kafka %s, logs: %s)"
        % (broker.bootstrap, config.kafka_dir, broker.version, config.logs),
        flush=True,
    )
    while not stop_requested.wait(0.5):
        if broker.process is None or broker.process.poll() is not None:
            code = broker.stop()
            print("kafka broker exited by itself with %s; see %s" % (code, broker.server_log), file=sys.stderr)
            return 1
    code = broker.stop()
    if code not in CLEAN_EXIT_CODES:
        print("kafka broker stopped with exit %s; see %s" % (code, broker.server_log), file=sys.stderr)
        return 1
    print("kafka broker stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
