"""A real HDFS on loopback: one NameNode and N DataNodes, each its own JVM, WebHDFS on.

    bazel run //deploy/hdfs:cluster -- --help

The jars come from @maven_hadoop (third_party/jvm/hadoop). Everything the cluster keeps lives
under one state directory, `<state-dir>/hdfs/`:

    conf/namenode/, conf/datanode-K/   core-site.xml, hdfs-site.xml, log4j.properties (rewritten
                                       on every start; each daemon reads its own folder)
    name/                              the NameNode's fsimage and edit log (formatted once)
    data/datanode-K/                   block storage of DataNode K
    logs/namenode.log, logs/datanode-K.log, logs/*.out

The NameNode is formatted on the first start only, so files survive restarts. Readiness means:
every DataNode registered and alive, the NameNode out of safe mode and WebHDFS answering. SIGTERM
or Ctrl-C stops the DataNodes, then the NameNode, each through its own shutdown hook.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

from deploy.common import process

LOG = logging.getLogger("hdfs_cluster")

JAVA_MIN_MAJOR = 17
MAVEN_REPOSITORY = "maven_hadoop"
NAMENODE_MAIN = "org.apache.hadoop.hdfs.server.namenode.NameNode"
DATANODE_MAIN = "org.apache.hadoop.hdfs.server.datanode.DataNode"
# The JVM's exit status after SIGTERM when its shutdown hooks ran (128 + 15); 1 is what
# Hadoop's own signal handler (SignalLogger) can leave behind on some paths, so it is not listed.
CLEAN_EXIT_CODES = (0, 128 + signal.SIGTERM)
# Ports a DataNode uses, in this order: block transfer, HTTP (WebHDFS reads/writes), IPC.
PORTS_PER_DATANODE = 3
# Offset between the port groups of consecutive DataNodes when derived from a base port.
DATANODE_PORT_STRIDE = 10

# Hadoop's HTTP servers look up `webapps/<name>` on the classpath. The web UI's static pages are
# part of Hadoop's binary tarball, not of its Maven jars: empty folders give the servers their
# contexts, and the servlets (WebHDFS, /jmx, /conf, /prom) are registered in code regardless.
_WEBAPPS = ("hdfs", "datanode", "static")

# reload4j (Log4j 1 API) is the binding in hadoop-common's closure. INFO goes to a rolled file;
# warnings and errors also go to the JVM's stderr (the `.out` file next to it).
_LOG4J_PROPERTIES = """\
# Written by deploy/hdfs/cluster.py on every start.
log4j.rootLogger=INFO,file,stderr
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=${dp.hdfs.log.file}
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=3
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.Threshold=WARN
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n
# One line per HTTP request and per block state change: too chatty for a log that is read.
log4j.logger.http.requests=WARN
log4j.logger.BlockStateChange=WARN
log4j.logger.org.apache.hadoop.hdfs.server.namenode.FSNamesystem.audit=WARN
log4j.logger.org.apache.hadoop.hdfs.server.datanode.DataNode.clienttrace=WARN
# The native library is not shipped in the jars; the pure-Java code paths are used.
log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR
"""


class HdfsError(RuntimeError):
    """The cluster could not be started or stopped; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class DataNodePorts:
    """The three ports of one DataNode."""

    transfer: int
    http: int
    ipc: int

    def all(self) -> Tuple[int, int, int]:
        return (self.transfer, self.http, self.ipc)


def datanode_ports_from_base(base: int, count: int) -> Tuple[DataNodePorts, ...]:
    """DataNode K (1-based) gets base+10(K-1) (transfer), +1 (HTTP) and +2 (IPC)."""
    return tuple(
        DataNodePorts(base + DATANODE_PORT_STRIDE * k, base + DATANODE_PORT_STRIDE * k + 1,
                      base + DATANODE_PORT_STRIDE * k + 2)
        for k in range(count)
    )


@dataclasses.dataclass(frozen=True)
class HdfsConfig:
    """Everything one cluster needs; `parse_args` gives the local-stack defaults."""

    state_dir: pathlib.Path
    host: str = "127.0.0.1"
    namenode_port: int = 8020
    namenode_http_port: int = 9870
    datanode_ports: Tuple[DataNodePorts, ...] = datanode_ports_from_base(9866, 2)
    replication: Optional[int] = None  # default: min(3, number of DataNodes)
    permissions: bool = False
    namenode_heap: str = "384m"
    datanode_heap: str = "256m"
    java: Optional[str] = None  # default: $JAVA_HOME/bin/java, else java on PATH
    classpath: Tuple[str, ...] = ()  # default: the @maven_hadoop jars in runfiles
    start_timeout: float = 180.0
    stop_timeout: float = 30.0
    overrides: Tuple[Tuple[str, str], ...] = ()  # extra hdfs-site.xml entries, applied last

    def __post_init__(self):
        if not self.datanode_ports:
            raise ValueError("an HDFS cluster needs at least one DataNode")
        ports = [self.namenode_port, self.namenode_http_port]
        for node in self.datanode_ports:
            ports.extend(node.all())
        clashes = sorted({port for port in ports if ports.count(port) > 1})
        if clashes:
            raise ValueError("HDFS ports must be distinct; used twice: %s" % ", ".join(map(str, clashes)))
        if self.replication is not None and not 1 <= self.replication <= len(self.datanode_ports):
            raise ValueError("replication %d needs 1..%d (the number of DataNodes)"
                             % (self.replication, len(self.datanode_ports)))

    @property
    def datanodes(self) -> int:
        return len(self.datanode_ports)

    @property
    def effective_replication(self) -> int:
        return self.replication or min(3, self.datanodes)

    @property
    def hdfs_dir(self) -> pathlib.Path:
        return self.state_dir / "hdfs"

    @property
    def logs(self) -> pathlib.Path:
        return self.hdfs_dir / "logs"

    @property
    def name_dir(self) -> pathlib.Path:
        return self.hdfs_dir / "name"

    def data_dir(self, index: int) -> pathlib.Path:
        return self.hdfs_dir / "data" / ("datanode-%d" % index)

    @property
    def hdfs_url(self) -> str:
        """The file system URI for Hadoop clients (Spark): hdfs://host:port."""
        return "hdfs://%s:%d" % (self.host, self.namenode_port)

    @property
    def namenode_http_url(self) -> str:
        return "http://%s:%d" % (self.host, self.namenode_http_port)

    @property
    def webhdfs_url(self) -> str:
        """The WebHDFS REST root: append a path and `?op=...`."""
        return self.namenode_http_url + "/webhdfs/v1"

    @property
    def webhdfs_fs_url(self) -> str:
        """The same NameNode as a Hadoop `webhdfs://` file system URI."""
        return "webhdfs://%s:%d" % (self.host, self.namenode_http_port)


def core_site(config: HdfsConfig) -> Dict[str, str]:
    return {
        "fs.defaultFS": config.hdfs_url,
        "hadoop.tmp.dir": str(config.hdfs_dir / "tmp"),
        # Prometheus text format on every daemon's HTTP port at /prom.
        "hadoop.prometheus.endpoint.enabled": "true",
        # Requests without `user.name` (e.g. a browser on /webhdfs) act as this user.
        "hadoop.http.staticuser.user": "hdfs",
        # The HTTP servers' cookie-signing secret, kept with the state (default: in $HOME).
        "hadoop.http.authentication.signature.secret.file": str(config.hdfs_dir / "conf" / "http-signature-secret"),
    }


def namenode_site(config: HdfsConfig) -> Dict[str, str]:
    site = {
        "dfs.namenode.name.dir": str(config.name_dir),
        "dfs.namenode.rpc-address": "%s:%d" % (config.host, config.namenode_port),
        "dfs.namenode.http-address": "%s:%d" % (config.host, config.namenode_http_port),
        "dfs.webhdfs.enabled": "true",
        "dfs.replication": str(config.effective_replication),
        "dfs.permissions.enabled": "true" if config.permissions else "false",
        # Safe mode ends once every DataNode registered and every block has a reported replica
        # (the default 0.999 rounds down to "no block" for small namespaces, so reads right after
        # a restart could find blocks without locations), and then at once, not 30 s later.
        "dfs.namenode.safemode.threshold-pct": "1.0",
        "dfs.namenode.safemode.min.datanodes": str(config.datanodes),
        "dfs.namenode.safemode.extension": "0",
        # DataNodes register from 127.0.0.1 under the name 127.0.0.1; no reverse DNS involved.
        "dfs.namenode.datanode.registration.ip-hostname-check": "false",
        # A small machine: fewer handler threads than the defaults (10).
        "dfs.namenode.handler.count": "4",
        "dfs.namenode.service.handler.count": "2",
        # A DataNode that stopped is declared dead after ~35 s instead of ~10 min, so the
        # NameNode stops routing writes to it soon after a restart with fewer nodes.
        "dfs.namenode.heartbeat.recheck-interval": "15000",
    }
    site.update(dict(config.overrides))
    return site


def datanode_site(config: HdfsConfig, index: int) -> Dict[str, str]:
    ports = config.datanode_ports[index - 1]
    site = {
        "dfs.datanode.data.dir": str(config.data_dir(index)),
        "dfs.datanode.address": "%s:%d" % (config.host, ports.transfer),
        "dfs.datanode.http.address": "%s:%d" % (config.host, ports.http),
        "dfs.datanode.ipc.address": "%s:%d" % (config.host, ports.ipc),
        # The name the NameNode hands out in WebHDFS redirects and block locations.
        "dfs.datanode.hostname": config.host,
        "dfs.replication": str(config.effective_replication),
        "dfs.permissions.enabled": "true" if config.permissions else "false",
        "dfs.datanode.handler.count": "3",
        "dfs.datanode.max.transfer.threads": "256",
    }
    site.update(dict(config.overrides))
    return site


def configuration_xml(properties: Mapping[str, str]) -> str:
    lines = ['<?xml version="1.0"?>', "<!-- Written by deploy/hdfs/cluster.py on every start. -->", "<configuration>"]
    for key, value in properties.items():
        lines.append("  <property><name>%s</name><value>%s</value></property>" % (escape(key), escape(value)))
    lines.append("</configuration>")
    return "\n".join(lines) + "\n"


def hadoop_version(classpath: Sequence[str]) -> str:
    """The Hadoop version baked into the hadoop-common jar on the classpath."""
    for jar in classpath:
        name = os.path.basename(jar)
        if "hadoop-common" not in name:
            continue
        with zipfile.ZipFile(jar) as archive:
            for line in archive.read("common-version-info.properties").decode().splitlines():
                if line.startswith("version="):
                    return line.split("=", 1)[1].strip()
    return "unknown"


def _get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def namenode_health(namenode_http_url: str) -> Dict[str, object]:
    """What the NameNode's JMX says: live/dead DataNodes, safe mode, and WebHDFS answering.

    Raises OSError (URLError) when the NameNode does not answer.
    """
    state = _get_json(namenode_http_url + "/jmx?qry=Hadoop:service=NameNode,name=FSNamesystemState")["beans"]
    info = _get_json(namenode_http_url + "/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo")["beans"]
    if not state or not info:
        raise OSError("the NameNode's JMX beans are not registered yet")
    status = _get_json(namenode_http_url + "/webhdfs/v1/?op=GETFILESTATUS")
    return {
        "live_datanodes": int(state[0].get("NumLiveDataNodes", 0)),
        "dead_datanodes": int(state[0].get("NumDeadDataNodes", 0)),
        "fs_state": state[0].get("FSState", ""),
        "safemode": info[0].get("Safemode", ""),
        "webhdfs": status.get("FileStatus", {}).get("type") == "DIRECTORY",
    }


class HdfsCluster:
    """A NameNode and its DataNodes as child JVMs: `start()` returns when the cluster serves.

    Usable as a context manager. Each JVM runs in its own session, so a Ctrl-C in the terminal
    reaches only this process, which then stops the JVMs in order.
    """

    def __init__(self, config: HdfsConfig):
        self.config = config
        self.namenode: Optional[subprocess.Popen] = None
        self.datanodes: List[subprocess.Popen] = []
        self.returncodes: Dict[str, Optional[int]] = {}
        self.version: Optional[str] = None
        self.java_version: Optional[str] = None
        self.start_seconds: Optional[float] = None
        self.formatted = False
        self._classpath: List[str] = list(config.classpath)
        self._java: Optional[str] = None

    # Addresses, for clients.
    @property
    def hdfs_url(self) -> str:
        return self.config.hdfs_url

    @property
    def webhdfs_url(self) -> str:
        return self.config.webhdfs_url

    @property
    def webhdfs_fs_url(self) -> str:
        return self.config.webhdfs_fs_url

    @property
    def namenode_http_url(self) -> str:
        return self.config.namenode_http_url

    @property
    def pids(self) -> List[int]:
        return [jvm.pid for jvm in ([self.namenode] if self.namenode else []) + self.datanodes]

    def log_file(self, daemon: str) -> pathlib.Path:
        return self.config.logs / (daemon + ".log")

    def __enter__(self) -> "HdfsCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _conf_dir(self, daemon: str) -> pathlib.Path:
        return self.config.hdfs_dir / "conf" / daemon

    def _write_conf(self, daemon: str, site: Mapping[str, str]) -> pathlib.Path:
        conf = self._conf_dir(daemon)
        for webapp in _WEBAPPS:
            (conf / "webapps" / webapp).mkdir(parents=True, exist_ok=True)
        (conf / "core-site.xml").write_text(configuration_xml(core_site(self.config)), encoding="utf-8")
        (conf / "hdfs-site.xml").write_text(configuration_xml(site), encoding="utf-8")
        (conf / "log4j.properties").write_text(_LOG4J_PROPERTIES, encoding="utf-8")
        return conf

    def _jvm(self, daemon: str, main: str, args: Sequence[str], heap: str) -> List[str]:
        assert self._java is not None
        return [
            self._java,
            "-Xms32m",
            "-Xmx" + heap,
            # A small machine: serial GC keeps threads and footprint low, and C1 alone (no C2) halves
            # the CPU of start-up (measured: format 1.7-2.2 s of CPU instead of 3.4-3.9 s), which
            # dominates at this scale.
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:+ExitOnOutOfMemoryError",
            # No hsperfdata files in /tmp (and no lock warnings inside Bazel's sandbox).
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            "-Djava.net.preferIPv4Stack=true",
            "-Ddp.hdfs.log.file=" + str(self.log_file(daemon)),
            "-Dhadoop.log.dir=" + str(self.config.logs),
            "-Dhadoop.home.dir=" + str(self.config.hdfs_dir),
            # The daemon's own conf folder first: core-site.xml, hdfs-site.xml, log4j.properties.
            "-cp",
            os.pathsep.join([str(self._conf_dir(daemon))] + self._classpath),
            main,
        ] + list(args)

    def _spawn(self, daemon: str, command: Sequence[str]) -> subprocess.Popen:
        with open(self.config.logs / (daemon + ".out"), "ab") as out:
            return subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(self.config.hdfs_dir),
                start_new_session=True,
                preexec_fn=process.die_with_parent(signal.SIGTERM),
            )

    def _format_once(self) -> None:
        version_file = self.config.name_dir / "current" / "VERSION"
        if version_file.exists():
            LOG.info("event=namespace_reused dir=%s", self.config.name_dir)
            return
        command = self._jvm("namenode", NAMENODE_MAIN, ["-format", "-nonInteractive", "-force"],
                            heap=self.config.namenode_heap)
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL, cwd=str(self.config.hdfs_dir))
        if result.returncode != 0 or not version_file.exists():
            raise HdfsError(
                "formatting the NameNode in %s failed (exit %d). Last lines of %s:\n%s\n%s"
                % (self.config.name_dir, result.returncode, self.log_file("namenode"),
                   process.tail(self.log_file("namenode")), result.stdout.strip()[-2000:])
            )
        self.formatted = True
        LOG.info("event=namespace_formatted dir=%s", self.config.name_dir)

    def _check_ports_free(self) -> None:
        config = self.config
        wanted = [("NameNode RPC", config.namenode_port), ("NameNode HTTP", config.namenode_http_port)]
        for index, ports in enumerate(config.datanode_ports, start=1):
            wanted += [("DataNode %d transfer" % index, ports.transfer), ("DataNode %d HTTP" % index, ports.http),
                       ("DataNode %d IPC" % index, ports.ipc)]
        for what, port in wanted:
            if process.port_is_open(config.host, port):
                raise HdfsError(
                    "%s:%d (%s) is already in use: another HDFS running? (stop it, or choose other "
                    "ports: --namenode-port/--namenode-http-port/--datanode-base-port or DP_HDFS_* env)"
                    % (config.host, port, what)
                )

    def start(self, cancel: Optional[threading.Event] = None) -> None:
        """Write the config, format if new, launch the JVMs and wait until the cluster serves.

        Setting `cancel` (e.g. from a signal handler) abandons the wait and stops the JVMs.
        """
        if self.namenode and self.namenode.poll() is None:
            raise HdfsError("cluster already running (NameNode pid %d)" % self.namenode.pid)
        config = self.config
        began = time.monotonic()
        self._check_ports_free()
        if not self._classpath:
            from tools.jvm import classpath

            self._classpath = classpath.jars(MAVEN_REPOSITORY)
        try:
            self._java, self.java_version = process.find_java(config.java, JAVA_MIN_MAJOR, needed_by="Hadoop 3.5")
        except process.JavaNotFound as err:
            raise HdfsError(str(err)) from None
        self.version = hadoop_version(self._classpath)

        for directory in (config.hdfs_dir, config.logs, config.name_dir.parent, config.hdfs_dir / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        secret = config.hdfs_dir / "conf" / "http-signature-secret"
        if not secret.exists():
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.write_text(secrets.token_hex(32), encoding="utf-8")
            secret.chmod(0o600)
        self._write_conf("namenode", namenode_site(config))
        for index in range(1, config.datanodes + 1):
            config.data_dir(index).mkdir(parents=True, exist_ok=True)
            self._write_conf("datanode-%d" % index, datanode_site(config, index))
        self._format_once()

        try:
            self.namenode = self._spawn("namenode", self._jvm("namenode", NAMENODE_MAIN, [], config.namenode_heap))
            LOG.info("event=jvm_started daemon=namenode pid=%d", self.namenode.pid)
            for index in range(1, config.datanodes + 1):
                daemon = "datanode-%d" % index
                jvm = self._spawn(daemon, self._jvm(daemon, DATANODE_MAIN, [], config.datanode_heap))
                self.datanodes.append(jvm)
                LOG.info("event=jvm_started daemon=%s pid=%d", daemon, jvm.pid)
            self._wait_ready(began + config.start_timeout, cancel or threading.Event())
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        LOG.info("event=cluster_ready hdfs=%s webhdfs=%s datanodes=%d seconds=%.1f state=%s",
                 self.hdfs_url, self.webhdfs_url, config.datanodes, self.start_seconds, config.hdfs_dir)

    def exited(self) -> Optional[Tuple[str, int]]:
        """The first daemon that has exited, with its exit code."""
        daemons = [("namenode", self.namenode)] + [
            ("datanode-%d" % index, jvm) for index, jvm in enumerate(self.datanodes, start=1)
        ]
        for name, jvm in daemons:
            if jvm is not None and jvm.poll() is not None:
                return name, jvm.returncode
        return None

    def restart_datanode(self, index: int) -> subprocess.Popen:
        """Starts DataNode `index` (1-based) again on its data directory after it died; does not
        wait: it registers with the NameNode by itself and reports the blocks it kept."""
        daemon = "datanode-%d" % index
        old = self.datanodes[index - 1]
        if old.poll() is None:
            raise HdfsError("%s is still running (pid %d)" % (daemon, old.pid))
        self.returncodes[daemon] = old.returncode
        jvm = self._spawn(daemon, self._jvm(daemon, DATANODE_MAIN, [], self.config.datanode_heap))
        self.datanodes[index - 1] = jvm
        LOG.warning("event=jvm_restarted daemon=%s pid=%d previous_exit=%s", daemon, jvm.pid, old.returncode)
        return jvm

    def daemon_pids(self) -> Dict[str, int]:
        """{"namenode": pid, "datanode-1": pid, ...} of the JVMs started last."""
        pids = {"namenode": self.namenode.pid} if self.namenode else {}
        pids.update(("datanode-%d" % index, jvm.pid) for index, jvm in enumerate(self.datanodes, start=1))
        return pids

    def health(self) -> Dict[str, object]:
        """The NameNode's view (see `namenode_health`) plus `ready`: all DataNodes live, no safe mode."""
        health = namenode_health(self.namenode_http_url)
        health["ready"] = bool(
            health["live_datanodes"] >= self.config.datanodes
            and not health["safemode"]
            and health["fs_state"] == "Operational"
            and health["webhdfs"]
        )
        return health

    def _wait_ready(self, deadline: float, cancel: threading.Event) -> None:
        last = "no answer from the NameNode yet"
        while True:
            if cancel.is_set():
                raise HdfsError("start-up of HDFS on %s was cancelled" % self.hdfs_url)
            exited = self.exited()
            if exited is not None:
                name, code = exited
                raise HdfsError(
                    "the %s JVM exited with %d during start-up. Last lines of %s:\n%s\n%s:\n%s"
                    % (name, code, self.log_file(name), process.tail(self.log_file(name)),
                       self.config.logs / (name + ".out"), process.tail(self.config.logs / (name + ".out")))
                )
            try:
                health = self.health()
                if health["ready"]:
                    return
                last = ", ".join("%s=%s" % item for item in sorted(health.items()))
            except (OSError, ValueError, KeyError) as err:  # not listening yet, or a partial answer
                last = str(err)
            if time.monotonic() > deadline:
                raise HdfsError(
                    "HDFS did not become ready within %.0f s (%s). Last lines of %s:\n%s"
                    % (self.config.start_timeout, last, self.log_file("namenode"),
                       process.tail(self.log_file("namenode")))
                )
            cancel.wait(0.5)

    def _stop_jvm(self, name: str, jvm: subprocess.Popen, timeout: float) -> int:
        if jvm.poll() is None:
            LOG.info("event=daemon_stopping daemon=%s pid=%d", name, jvm.pid)
            jvm.send_signal(signal.SIGTERM)
            try:
                jvm.wait(timeout)
            except subprocess.TimeoutExpired:
                LOG.warning("event=daemon_killed daemon=%s pid=%d reason=no_exit_within_%.0fs", name, jvm.pid, timeout)
                jvm.kill()
                jvm.wait()
        self.returncodes[name] = jvm.returncode
        return jvm.returncode

    def stop(self, timeout: Optional[float] = None) -> Dict[str, Optional[int]]:
        """SIGTERM to the DataNodes (together), then to the NameNode; SIGKILL after `timeout`.

        Returns each daemon's exit code.
        """
        timeout = self.config.stop_timeout if timeout is None else timeout
        datanodes = list(enumerate(self.datanodes, start=1))
        for index, jvm in datanodes:
            if jvm.poll() is None:
                jvm.send_signal(signal.SIGTERM)
        for index, jvm in datanodes:
            self._stop_jvm("datanode-%d" % index, jvm, timeout)
        self.datanodes = []
        if self.namenode is not None:
            self._stop_jvm("namenode", self.namenode, timeout)
            self.namenode = None
        if self.returncodes:
            LOG.info("event=cluster_stopped exits=%s", self.returncodes)
        return dict(self.returncodes)

    def clean_stop(self) -> bool:
        """Whether every daemon of the last stop exited through its shutdown hooks."""
        return bool(self.returncodes) and all(code in CLEAN_EXIT_CODES for code in self.returncodes.values())


def _override(text: str) -> Tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError("want KEY=VALUE, got %r" % text)
    return key.strip(), value.strip()


def default_state_dir() -> pathlib.Path:
    return process.workspace_state_dir()


def parse_args(argv: Optional[Sequence[str]] = None) -> HdfsConfig:
    parser = argparse.ArgumentParser(
        prog="cluster",
        description=(
            "Run a real HDFS on loopback until SIGTERM/Ctrl-C: one NameNode and N DataNodes, each its "
            "own JVM (Hadoop 3.5 jars), with WebHDFS on."
        ),
        epilog=(
            "State (config, namespace, blocks, logs) lives in <state-dir>/hdfs and survives restarts; "
            "delete that folder for an empty file system. DataNode K (1-based) listens on "
            "base+10(K-1) (block transfer), +1 (HTTP, WebHDFS data) and +2 (IPC). Example: "
            "bazel run //deploy/hdfs:cluster -- --datanodes 3 --namenode-port 18020"
        ),
    )
    env_int = process.env_int
    parser.add_argument("--datanodes", type=int, default=env_int("DP_HDFS_DATANODES", 2, "a number"),
                        help="number of DataNodes [env DP_HDFS_DATANODES, default 2]")
    parser.add_argument("--namenode-port", type=int, default=env_int("DP_HDFS_NAMENODE_PORT", 8020, "a port number"),
                        help="NameNode RPC port, the one in hdfs:// [env DP_HDFS_NAMENODE_PORT, default 8020]")
    parser.add_argument("--namenode-http-port", type=int,
                        default=env_int("DP_HDFS_NAMENODE_HTTP_PORT", 9870, "a port number"),
                        help="NameNode HTTP port: WebHDFS, /jmx, /prom [env DP_HDFS_NAMENODE_HTTP_PORT, default 9870]")
    parser.add_argument("--datanode-base-port", type=int,
                        default=env_int("DP_HDFS_DATANODE_BASE_PORT", 9866, "a port number"),
                        help="first DataNode port, see below [env DP_HDFS_DATANODE_BASE_PORT, default 9866]")
    parser.add_argument("--host", default=os.environ.get("DP_HDFS_HOST", "127.0.0.1"),
                        help="address to listen on and hand out [env DP_HDFS_HOST, default 127.0.0.1]")
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path(os.environ["DP_STATE_DIR"]) if os.environ.get("DP_STATE_DIR") else None,
                        help="state root; the cluster uses <state-dir>/hdfs [env DP_STATE_DIR, "
                             "default <workspace>/.state]")
    parser.add_argument("--replication", type=int, default=None,
                        help="default block replication [min(3, datanodes)]")
    parser.add_argument("--permissions", action="store_true",
                        help="enforce HDFS permissions (off by default: every local user may write)")
    parser.add_argument("--namenode-heap", default=os.environ.get("DP_HDFS_NAMENODE_HEAP", "384m"),
                        help="NameNode JVM maximum heap [env DP_HDFS_NAMENODE_HEAP, default 384m]")
    parser.add_argument("--datanode-heap", default=os.environ.get("DP_HDFS_DATANODE_HEAP", "256m"),
                        help="heap of each DataNode JVM [env DP_HDFS_DATANODE_HEAP, default 256m]")
    parser.add_argument("--start-timeout", type=float, default=180.0,
                        help="seconds to wait until the cluster is ready [180]")
    parser.add_argument("--override", type=_override, action="append", default=[], metavar="KEY=VALUE",
                        help="extra hdfs-site.xml entry for every daemon (repeatable)")
    args = parser.parse_args(argv)
    if args.datanodes < 1:
        parser.error("--datanodes must be at least 1")
    try:
        return HdfsConfig(
            state_dir=(args.state_dir or default_state_dir()).absolute(),
            host=args.host,
            namenode_port=args.namenode_port,
            namenode_http_port=args.namenode_http_port,
            datanode_ports=datanode_ports_from_base(args.datanode_base_port, args.datanodes),
            replication=args.replication,
            permissions=args.permissions,
            namenode_heap=args.namenode_heap,
            datanode_heap=args.datanode_heap,
            start_timeout=args.start_timeout,
            overrides=tuple(args.override),
        )
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = parse_args(argv)
    stop_requested = process.stop_on_signals(LOG)

    cluster = HdfsCluster(config)
    try:
        cluster.start(cancel=stop_requested)
    except HdfsError as err:
        print("hdfs cluster failed to start: %s" % err, file=sys.stderr)
        return 1
    print(
        "hdfs cluster ready: %s (Hadoop %s, %d DataNodes, replication %d)\n"
        "  webhdfs:  %s  (Hadoop URI %s)\n"
        "  namenode: %s/jmx, %s/prom\n"
        "  state:    %s  (logs in %s)"
        % (cluster.hdfs_url, cluster.version, config.datanodes, config.effective_replication,
           cluster.webhdfs_url, cluster.webhdfs_fs_url, cluster.namenode_http_url, cluster.namenode_http_url,
           config.hdfs_dir, config.logs),
        flush=True,
    )
    while not stop_requested.wait(1.0):
        exited = cluster.exited()
        if exited is not None:
            cluster.stop()
            print("hdfs %s exited by itself with %s; see %s" % (exited[0], exited[1], cluster.log_file(exited[0])),
                  file=sys.stderr)
            return 1
    codes = cluster.stop()
    if not cluster.clean_stop():
        print("hdfs cluster stopped uncleanly: %s; see %s" % (codes, config.logs), file=sys.stderr)
        return 1
    print("hdfs cluster stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
