"""A Kafka Connect 4 worker in distributed mode on loopback, with the Debezium PostgreSQL connector.

    bazel run //deploy/connect:worker -- --help

The worker runtime comes from @maven_connect (third_party/jvm/connect); the Debezium connector
from @maven_connect_debezium (third_party/jvm/connect/debezium), which this launcher lays out as
an isolated plugin directory (plugin.path) on every start. Connectors, their offsets (the
PostgreSQL LSN Debezium confirmed) and their status live in the Kafka topics the topics module
declares (CONNECT_CONFIGS, CONNECT_OFFSETS, CONNECT_STATUS); the launcher creates them first.
Everything else lives under `<state-dir>/connect/{worker.properties,log4j2.properties,plugins/,logs/}`.
SIGTERM or Ctrl-C stops the worker cleanly: tasks stop, offsets are committed, it leaves the group.
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
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from deploy.common import process

LOG = logging.getLogger("connect_worker")

JAVA_MIN_MAJOR = 17  # Kafka 4 and Debezium 3 need Java 17.
RUNTIME_REPOSITORY = "maven_connect"
DEBEZIUM_REPOSITORY = "maven_connect_debezium"
DEBEZIUM_PLUGIN = "debezium-connector-postgres"
MAIN_CLASS = "org.apache.kafka.connect.cli.ConnectDistributed"
DEFAULT_GROUP_ID = "dp-connect-iot"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
# The JVM's exit status after SIGTERM when its shutdown hooks completed (128 + 15).
CLEAN_EXIT_CODES = (0, 128 + signal.SIGTERM)

# Jars of the Debezium set that stay out of its plugin directory because the worker provides
# them: Connect loads Kafka's and SLF4J's classes from the worker even when a plugin bundles
# them (so Debezium's copies of connect-api/kafka-clients 4.3 would be dead weight), and the
# compression codecs kafka-clients brings are JNI libraries that only one class loader may load.
# Matched against the jar file names of the lock repository (`<group>.<artifact>-<version>.jar`).
WORKER_PROVIDED_PREFIXES = (
    "org.apache.kafka.",
    "org.slf4j.",
    "at.yawk.lz4.lz4-java-",
    "com.github.luben.zstd-jni-",
    "org.xerial.snappy.snappy-java-",
)

# Connect logs through SLF4J 1.7 to Log4j 2 (as the broker). INFO and up go to connect.log;
# warnings and errors also to stderr, which lands in connect.out. The REST request log and the
# per-record chatter of the clients are turned down.
_LOG4J2_PROPERTIES = """\
# Written by deploy/connect/worker.py on every start.
status = warn
shutdownHook = disable
appender.connect.type = RollingFile
appender.connect.name = connect
appender.connect.fileName = ${sys:kafka.logs.dir}/connect.log
appender.connect.filePattern = ${sys:kafka.logs.dir}/connect.log.%i
appender.connect.layout.type = PatternLayout
appender.connect.layout.pattern = [%d] %p %X{connector.context}%m (%c)%n
appender.connect.policies.type = Policies
appender.connect.policies.size.type = SizeBasedTriggeringPolicy
appender.connect.policies.size.size = 20MB
appender.connect.strategy.type = DefaultRolloverStrategy
appender.connect.strategy.max = 3
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %X{connector.context}%m (%c)%n
appender.stderr.filter.level.type = ThresholdFilter
appender.stderr.filter.level.level = warn
rootLogger.level = info
rootLogger.appenderRef.connect.ref = connect
rootLogger.appenderRef.stderr.ref = stderr
logger.rest.name = org.apache.kafka.connect.runtime.rest.RestServer
logger.rest.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
"""


class WorkerError(RuntimeError):
    """The worker could not be started or stopped; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """Everything one worker needs; `parse_args` gives the local-stack defaults."""

    state_dir: pathlib.Path
    bootstrap: str = "127.0.0.1:9092"
    rest_port: int = 8083
    rest_host: str = "127.0.0.1"
    group_id: str = DEFAULT_GROUP_ID
    heap: str = "1g"
    # Kafka Connect's exactly-once source support (KIP-618): source records and their offsets
    # are written in one Kafka transaction. Debezium's PostgresConnector declares it SUPPORTED.
    exactly_once: bool = True
    java: Optional[str] = None  # default: $JAVA_HOME/bin/java, else java on PATH
    classpath: Tuple[str, ...] = ()  # default: the @maven_connect jars in runfiles
    plugin_jars: Tuple[str, ...] = ()  # default: the @maven_connect_debezium jars in runfiles
    start_timeout: float = 120.0
    stop_timeout: float = 60.0
    overrides: Tuple[Tuple[str, str], ...] = ()  # extra worker.properties entries, applied last

    @property
    def connect_dir(self) -> pathlib.Path:
        return self.state_dir / "connect"

    @property
    def logs(self) -> pathlib.Path:
        return self.connect_dir / "logs"

    @property
    def plugin_path(self) -> pathlib.Path:
        return self.connect_dir / "plugins"

    @property
    def rest_url(self) -> str:
        return "http://%s:%d" % (self.rest_host, self.rest_port)


def default_state_dir() -> pathlib.Path:
    return process.workspace_state_dir()


def internal_topics():
    """The worker's own topics (configs, offsets, status), from the topics module."""
    from datapipelines import topics

    return (topics.CONNECT_CONFIGS, topics.CONNECT_OFFSETS, topics.CONNECT_STATUS)


def worker_properties(config: WorkerConfig) -> Dict[str, str]:
    """The distributed worker's configuration for one machine."""
    from datapipelines import topics

    properties = {
        "bootstrap.servers": config.bootstrap,
        "group.id": config.group_id,
        "config.storage.topic": topics.CONNECT_CONFIGS.name,
        "offset.storage.topic": topics.CONNECT_OFFSETS.name,
        "status.storage.topic": topics.CONNECT_STATUS.name,
        # The topics exist before the worker starts (ensure_topics); these only matter if not.
        "config.storage.replication.factor": "1",
        "offset.storage.replication.factor": "1",
        "offset.storage.partitions": str(topics.CONNECT_OFFSETS.partitions),
        "status.storage.replication.factor": "1",
        "status.storage.partitions": str(topics.CONNECT_STATUS.partitions),
        # Debezium's envelope as plain JSON: {"before":..,"after":..,"source":..,"op":..}, no
        # schema wrapper, for Python consumers; keys the same ({"site_id": ...}).
        "key.converter": JSON_CONVERTER,
        "key.converter.schemas.enable": "false",
        "value.converter": JSON_CONVERTER,
        "value.converter.schemas.enable": "false",
        "listeners": "http://%s:%d" % (config.rest_host, config.rest_port),
        "rest.advertised.host.name": config.rest_host,
        "rest.advertised.port": str(config.rest_port),
        "rest.advertised.listener": "http",
        "plugin.path": str(config.plugin_path),
        # Every plugin here ships ServiceLoader manifests: no reflective scan of every jar.
        "plugin.discovery": "service_load",
        "exactly.once.source.support": "enabled" if config.exactly_once else "disabled",
        # Without exactly-once: commit source offsets every 10 s (default 60 s), so a crash
        # replays less. With it, offsets are committed with each transaction instead.
        "offset.flush.interval.ms": "10000",
        # One worker: when it restarts, its connectors are reassigned at once instead of waiting
        # up to 5 min for the "lost" member to come back.
        "scheduled.rebalance.max.delay.ms": "0",
        "task.shutdown.graceful.timeout.ms": "20000",
        # The source tasks' producer. With exactly-once support each poll batch of the task is
        # one transaction that is flushed on commit, so linger only groups the records of one
        # poll; larger batches and lz4 cut the requests and bytes the broker handles per change
        # (measured: see README "Throughput").
        "producer.linger.ms": "10",
        "producer.batch.size": str(512 * 1024),
        "producer.compression.type": "lz4",
        # Connector configs may reference secrets as ${env:NAME} or ${file:/path:key} instead
        # of holding them in the configs topic.
        "config.providers": "env,file",
        "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
        "config.providers.file.class": "org.apache.kafka.common.config.provider.FileConfigProvider",
    }
    properties.update(dict(config.overrides))
    return properties


def _write_properties(path: pathlib.Path, properties: Mapping[str, str], title: str) -> None:
    lines = ["# %s" % title] + ["%s=%s" % (key, value) for key, value in properties.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plugin_jars_for(jars: Sequence[str]) -> List[str]:
    """The Debezium set's jars that belong in its plugin directory (what the worker does not provide)."""
    return [jar for jar in jars if not os.path.basename(jar).startswith(WORKER_PROVIDED_PREFIXES)]


def lay_out_plugin(plugin_path: pathlib.Path, jars: Sequence[str]) -> pathlib.Path:
    """Copy `jars` into `<plugin_path>/debezium-connector-postgres/`, replacing what was there.

    Copies, not symlinks: the runfiles a symlink would point at change with every build.
    Unchanged jars (same name and size) are kept, so a warm start copies nothing.
    """
    directory = plugin_path / DEBEZIUM_PLUGIN
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {os.path.basename(jar): jar for jar in jars}
    for present in directory.iterdir():
        source = wanted.get(present.name)
        if source is None or present.stat().st_size != os.stat(source).st_size:
            present.unlink()
    for name, source in wanted.items():
        if not (directory / name).exists():
            shutil.copyfile(source, directory / name)
    return directory


def jar_version(classpath: Sequence[str], fragment: str, resource: str, key: str = "version") -> str:
    """A version string from a properties resource inside the jar whose name contains `fragment`."""
    for jar in classpath:
        if fragment not in os.path.basename(jar):
            continue
        with zipfile.ZipFile(jar) as archive:
            try:
                text = archive.read(resource).decode("utf-8", errors="replace")
            except KeyError:
                continue
            for line in text.splitlines():
                if line.startswith(key + "="):
                    return line.split("=", 1)[1].strip()
    return "unknown"


def http_json(method: str, url: str, body=None, timeout: float = 10.0):
    """(status, decoded JSON or text) of one REST call; connection errors raise OSError."""
    data = json.dumps(body).encode("utf-8") if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    text = raw.decode("utf-8", errors="replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


class ConnectWorker:
    """One Kafka Connect worker process: `start()` returns when it has joined its group.

    Usable as a context manager. The JVM runs in its own session, so a Ctrl-C in the terminal
    reaches only this process, which then stops the JVM in order.
    """

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.process: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self.kafka_version: Optional[str] = None
        self.debezium_version: Optional[str] = None
        self.java_version: Optional[str] = None
        self.start_seconds: Optional[float] = None
        self.topics_created: List[str] = []
        self._classpath: List[str] = list(config.classpath)
        self._plugin_jars: List[str] = list(config.plugin_jars)

    @property
    def rest_url(self) -> str:
        return self.config.rest_url

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    @property
    def connect_log(self) -> pathlib.Path:
        return self.config.logs / "connect.log"

    @property
    def console_log(self) -> pathlib.Path:
        return self.config.logs / "connect.out"

    def __enter__(self) -> "ConnectWorker":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _command(self, java: str, properties_file: pathlib.Path) -> List[str]:
        return [
            java,
            "-Xms64m",
            "-Xmx" + self.config.heap,
            # A small machine: serial GC keeps threads and footprint low.
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            "-Dkafka.logs.dir=" + str(self.config.logs),
            "-Dlog4j2.configurationFile=" + str(self.config.connect_dir / "log4j2.properties"),
            "-cp",
            os.pathsep.join(self._classpath),
            MAIN_CLASS,
            str(properties_file),
        ]

    def _resolve_jars(self) -> None:
        from tools.jvm import classpath

        if not self._classpath:
            self._classpath = classpath.jars(RUNTIME_REPOSITORY)
        if not self._plugin_jars:
            self._plugin_jars = plugin_jars_for(classpath.jars(DEBEZIUM_REPOSITORY))

    def ensure_internal_topics(self) -> List[str]:
        """Create the configs/offsets/status topics when missing (the broker creates nothing itself)."""
        from datapipelines import kafka

        try:
            return kafka.ensure_topics(self.config.bootstrap, internal_topics(), timeout=15.0)
        except Exception as err:  # KafkaException, RuntimeError: the broker is not there or refused
            raise WorkerError(
                "could not create Kafka Connect's topics on %s: %s (is the broker running? "
                "bazel run //deploy/kafka:broker)" % (self.config.bootstrap, err)
            ) from None

    def start(self, cancel: Optional[threading.Event] = None) -> None:
        """Create the internal topics, write the config, lay out the plugin, launch, wait until joined.

        Setting `cancel` (e.g. from a signal handler) abandons the wait and stops the JVM.
        """
        if self.process and self.process.poll() is None:
            raise WorkerError("worker already running (pid %d)" % self.process.pid)
        config = self.config
        began = time.monotonic()
        if process.port_is_open(config.rest_host, config.rest_port):
            raise WorkerError(
                "%s:%d is already in use: another Connect worker running? (stop it, or choose "
                "--rest-port or DP_CONNECT_PORT)" % (config.rest_host, config.rest_port)
            )
        self._resolve_jars()
        try:
            java, self.java_version = process.find_java(config.java, JAVA_MIN_MAJOR, needed_by="Kafka Connect 4")
        except process.JavaNotFound as err:
            raise WorkerError(str(err)) from None
        self.kafka_version = jar_version(self._classpath, "kafka-clients", "kafka/kafka-version.properties")
        self.debezium_version = jar_version(
            self._plugin_jars, "debezium-connector-postgres", "io/debezium/connector/postgresql/build.version"
        )
        self.topics_created = self.ensure_internal_topics()

        for directory in (config.connect_dir, config.logs, config.plugin_path):
            directory.mkdir(parents=True, exist_ok=True)
        plugin = lay_out_plugin(config.plugin_path, self._plugin_jars)
        (config.connect_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES, encoding="utf-8")
        properties_file = config.connect_dir / "worker.properties"
        _write_properties(properties_file, worker_properties(config),
                          "Written by deploy/connect/worker.py on every start.")
        LOG.info("event=plugin_ready dir=%s jars=%d debezium=%s", plugin, len(self._plugin_jars),
                 self.debezium_version)

        with open(self.console_log, "ab") as console:
            self.process = subprocess.Popen(
                self._command(java, properties_file),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=str(config.connect_dir),
                start_new_session=True,
                preexec_fn=process.die_with_parent(signal.SIGTERM),
            )
        self.returncode = None
        LOG.info("event=jvm_started pid=%d kafka=%s java=%s rest=%s group=%s exactly_once=%s",
                 self.process.pid, self.kafka_version, self.java_version, self.rest_url, config.group_id,
                 config.exactly_once)
        try:
            self._wait_ready(began + config.start_timeout, cancel or threading.Event())
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        LOG.info("event=worker_ready rest=%s seconds=%.1f state=%s", self.rest_url, self.start_seconds,
                 config.connect_dir)

    def _wait_ready(self, deadline: float, cancel: threading.Event) -> None:
        """Ready: the REST server answers `GET /` and `GET /connectors` (the worker joined its group)."""
        assert self.process is not None
        last = "no answer yet"
        while True:
            if cancel.is_set():
                raise WorkerError("start-up of the Connect worker on %s was cancelled" % self.rest_url)
            code = self.process.poll()
            if code is not None:
                self.returncode = code
                raise WorkerError(
                    "the Connect JVM exited with %d during start-up. Last lines of %s:\n%s\n%s:\n%s"
                    % (code, self.connect_log, process.tail(self.connect_log), self.console_log,
                       process.tail(self.console_log))
                )
            if process.port_is_open(self.config.rest_host, self.config.rest_port):
                try:
                    status, _ = http_json("GET", self.rest_url + "/", timeout=5)
                    if status == 200:
                        status, body = http_json("GET", self.rest_url + "/connectors", timeout=5)
                        if status == 200:
                            return
                    last = "HTTP %d" % status
                except OSError as err:
                    last = str(err)
            if time.monotonic() > deadline:
                raise WorkerError(
                    "Kafka Connect did not become ready on %s within %.0f s (last: %s). Last lines of %s:\n%s"
                    % (self.rest_url, self.config.start_timeout, last, self.connect_log,
                       process.tail(self.connect_log))
                )
            cancel.wait(0.25)

    def stop(self, timeout: Optional[float] = None) -> Optional[int]:
        """SIGTERM (tasks stop, offsets commit, the worker leaves its group); SIGKILL after `timeout`."""
        jvm = self.process
        if jvm is None:
            return self.returncode
        if jvm.poll() is None:
            timeout = self.config.stop_timeout if timeout is None else timeout
            LOG.info("event=worker_stopping pid=%d", jvm.pid)
            jvm.send_signal(signal.SIGTERM)
            try:
                jvm.wait(timeout)
            except subprocess.TimeoutExpired:
                LOG.warning("event=worker_killed pid=%d reason=no_exit_within_%.0fs", jvm.pid, timeout)
                jvm.kill()
                jvm.wait()
        self.returncode = jvm.returncode
        self.process = None
        LOG.info("event=worker_stopped exit=%s clean=%s", self.returncode, self.returncode in CLEAN_EXIT_CODES)
        return self.returncode

    def kill(self) -> Optional[int]:
        """SIGKILL: a crash, for tests of what a crash leaves behind."""
        jvm = self.process
        if jvm is None:
            return self.returncode
        jvm.kill()
        self.returncode = jvm.wait()
        self.process = None
        LOG.info("event=worker_killed pid=%d exit=%s", jvm.pid, self.returncode)
        return self.returncode


def _override(text: str) -> Tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError("want KEY=VALUE, got %r" % text)
    return key.strip(), value.strip()


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if not value:
        return default
    if value.lower() in ("1", "true", "yes", "on", "enabled"):
        return True
    if value.lower() in ("0", "false", "no", "off", "disabled"):
        return False
    raise SystemExit("%s=%r is not a boolean (use true or false)" % (name, value))


def parse_args(argv: Optional[Sequence[str]] = None) -> WorkerConfig:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="worker",
        description=(
            "Run a Kafka Connect 4 worker (distributed mode) with the Debezium PostgreSQL connector "
            "on loopback until SIGTERM/Ctrl-C."
        ),
        epilog=(
            "Connectors, offsets and status live in the Kafka topics of the topics module; files in "
            "<state-dir>/connect. Register the IoT CDC connector with "
            "bazel run //deploy/connect:register. Example: bazel run //deploy/connect:worker -- --rest-port 18083"
        ),
    )
    parser.add_argument("--bootstrap", default=env("DP_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="Kafka bootstrap servers [env DP_KAFKA_BOOTSTRAP, default 127.0.0.1:9092]")
    parser.add_argument("--rest-port", type=int, default=process.env_int("DP_CONNECT_PORT", 8083, "a port number"),
                        help="REST API port on 127.0.0.1 [env DP_CONNECT_PORT, default 8083]")
    parser.add_argument("--group-id", default=env("DP_CONNECT_GROUP_ID", DEFAULT_GROUP_ID),
                        help="Connect cluster (group) id [env DP_CONNECT_GROUP_ID, default %s]" % DEFAULT_GROUP_ID)
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path(env("DP_STATE_DIR")) if env("DP_STATE_DIR") else None,
                        help="state root; the worker uses <state-dir>/connect [env DP_STATE_DIR, "
                             "default <workspace>/.state]")
    parser.add_argument("--heap", default=env("DP_CONNECT_HEAP", "1g"),
                        help="JVM maximum heap [env DP_CONNECT_HEAP, default 1g]")
    parser.add_argument("--exactly-once", dest="exactly_once", action=argparse.BooleanOptionalAction,
                        default=_env_flag("DP_CONNECT_EXACTLY_ONCE", True),
                        help="exactly-once source support (records and offsets in one transaction) "
                             "[env DP_CONNECT_EXACTLY_ONCE, default on]")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for readiness [120]")
    parser.add_argument("--override", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help="extra worker.properties entry (repeatable)")
    args = parser.parse_args(argv)
    return WorkerConfig(
        state_dir=(args.state_dir or default_state_dir()).absolute(),
        bootstrap=args.bootstrap,
        rest_port=args.rest_port,
        group_id=args.group_id,
        heap=args.heap,
        exactly_once=args.exactly_once,
        start_timeout=args.start_timeout,
        overrides=tuple(args.override),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("datapipelines.kafka").setLevel(logging.WARNING)
    config = parse_args(argv)
    stop_requested = process.stop_on_signals(LOG)

    worker = ConnectWorker(config)
    try:
        worker.start(cancel=stop_requested)
    except WorkerError as err:
        print("kafka connect worker failed to start: %s" % err, file=sys.stderr)
        return 1
    print(
        "kafka connect worker ready on %s (Kafka Connect %s, Debezium %s, broker %s, group %s, "
        "exactly-once %s, state: %s, logs: %s)"
        % (worker.rest_url, worker.kafka_version, worker.debezium_version, config.bootstrap, config.group_id,
           "on" if config.exactly_once else "off", config.connect_dir, config.logs),
        flush=True,
    )
    while not stop_requested.wait(0.5):
        if worker.process is None or worker.process.poll() is not None:
            code = worker.stop()
            print("kafka connect worker exited by itself with %s; see %s" % (code, worker.connect_log),
                  file=sys.stderr)
            return 1
    code = worker.stop()
    if code not in CLEAN_EXIT_CODES:
        print("kafka connect worker stopped with exit %s; see %s" % (code, worker.connect_log), file=sys.stderr)
        return 1
    print("kafka connect worker stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
