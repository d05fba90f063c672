"""The services of the local stack, declared once: what runs, on which ports, after what, how checked.

Everything `up`, `status`, `logs` and `down` do is derived from `SERVICES`: the command line of
each program (from one port plan and the state directory), its dependencies (start order, and
the reverse for stopping), its health check, and the profiles that enable it. Adding a service
means adding one `Service` here and its program to the `data` of `//deploy/stack:up`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import urllib.parse
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from deploy.connect import connectors
from deploy.postgres import migrate

HOST = "127.0.0.1"

# Credentials of the local stack: deploy/postgres/migrate.py owns the roles and their defaults.
POSTGRES_DATABASE = "datapipelines"
APP_ROLE = migrate.APP_ROLE
CDC_ROLE = migrate.CDC_ROLE
CONNECTOR_NAME = connectors.IOT_READINGS_CDC


class CatalogError(ValueError):
    """A bad selection or port override; the message names the flag and the choices."""


@dataclasses.dataclass(frozen=True)
class Port:
    """One listening port of a service: `name` within the service, its env override and default."""

    name: str
    env: str
    default: int


@dataclasses.dataclass(frozen=True)
class Check:
    """A health check: kind is tcp, http, grpc, kafka, postgres, connector, hdfs, spark, flink or
    airflow (see health.py); `target` its address."""

    kind: str
    target: str


@dataclasses.dataclass(frozen=True)
class Context:
    """What a service's command line is derived from: the state directory and the port plan."""

    state_dir: pathlib.Path
    ports: Mapping[str, Mapping[str, int]]  # service -> port name -> number

    def port(self, service: str, name: str = "port") -> int:
        return self.ports[service][name]

    @property
    def bootstrap(self) -> str:
        return "%s:%d" % (HOST, self.port("kafka"))

    def postgres_dsn(self, role: str) -> str:
        # The same environment the server reads its role passwords from (deploy/postgres/server.py).
        password = (os.environ.get("DP_POSTGRES_APP_PASSWORD") or migrate.DEFAULT_APP_PASSWORD) if role == APP_ROLE \
            else (os.environ.get("DP_POSTGRES_CDC_PASSWORD") or migrate.DEFAULT_CDC_PASSWORD)
        return "host=%s port=%d dbname=%s user=%s password=%s" % (
            HOST, self.port("postgres"), POSTGRES_DATABASE, role, password)

    def postgres_url(self, role: str, driver: str = "postgresql+psycopg2") -> str:
        """The same login as `postgres_dsn`, as an SQLAlchemy URL (Superset)."""
        fields = dict(item.split("=", 1) for item in self.postgres_dsn(role).split())
        return "%s://%s:%s@%s:%s/%s" % (driver, fields["user"], urllib.parse.quote(fields["password"], safe=""),
                                        fields["host"], fields["port"], fields["dbname"])

    @property
    def connect_url(self) -> str:
        return "http://%s:%d" % (HOST, self.port("connect"))

    @property
    def webhdfs_url(self) -> str:
        return "http://%s:%d/webhdfs/v1" % (HOST, self.port("hdfs", "http"))

    @property
    def hdfs_url(self) -> str:
        return "hdfs://%s:%d" % (HOST, self.port("hdfs"))

    @property
    def spark_remote(self) -> str:
        return "sc://%s:%d" % (HOST, self.port("spark"))

    def url(self, service: str, path: str = "") -> str:
        return "http://%s:%d%s" % (HOST, self.port(service), path)


@dataclasses.dataclass(frozen=True)
class Service:
    """One process of the stack (or a one-shot step that runs to completion, like `register`)."""

    name: str
    summary: str
    binary: str  # workspace path of the program in the runfiles of //deploy/stack:up
    ports: Tuple[Port, ...]
    deps: Tuple[str, ...]
    profiles: Tuple[str, ...]
    args: Callable[[Context], List[str]]
    check: Callable[[Context], Check]
    address: Callable[[Context], str]
    credentials: Callable[[Context], List[str]] = lambda ctx: []
    env: Callable[[Context], Dict[str, str]] = lambda ctx: {}
    oneshot: bool = False
    start_timeout: float = 120.0
    stop_timeout: float = 60.0


def _ingest_env(ctx: Context) -> Dict[str, str]:
    # The ingestion service keeps its default key store (created with a development key) in
    # <BUILD_WORKSPACE_DIRECTORY>/.state/ingest; a small directory whose `.state` points at our
    # state directory puts it at <state>/ingest (see up.ingest_home).
    return {"BUILD_WORKSPACE_DIRECTORY": str(ctx.state_dir / "run" / "ingest-home")}


def _state_file(path: pathlib.Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def airflow_admin_password(ctx: Context) -> str:
    """DP_AIRFLOW_ADMIN_PASSWORD, else the one the launcher generated and keeps in its state."""
    if os.environ.get("DP_AIRFLOW_ADMIN_PASSWORD"):
        return os.environ["DP_AIRFLOW_ADMIN_PASSWORD"]
    try:
        return json.loads(_state_file(ctx.state_dir / "airflow" / "simple_auth_manager_passwords.json"))["admin"]
    except (ValueError, KeyError, TypeError):
        return ""


def superset_admin_password(ctx: Context) -> str:
    """DP_SUPERSET_ADMIN_PASSWORD, else the one the launcher generated and keeps in its state."""
    return os.environ.get("DP_SUPERSET_ADMIN_PASSWORD") or _state_file(ctx.state_dir / "superset" / "admin_password")


def _login(user: str, password: str, where: pathlib.Path) -> List[str]:
    if not password:
        return ["login: %s / (written by the service to %s on its first start)" % (user, where)]
    return ["login: %s / %s  (kept in %s)" % (user, password, where)]


def _airflow_env(ctx: Context) -> Dict[str, str]:
    # The commerce DAG reads its services from the environment (jobs/commerce/dags/README.md).
    env = {
        "DP_WEBHDFS_URL": ctx.webhdfs_url,
        "DP_COMMERCE_RAW_ROOT": ctx.hdfs_url + COMMERCE_RAW_ROOT,
        "DP_SPARK_REMOTE": ctx.spark_remote,
        "DP_COMMERCE_POSTGRES_DSN": ctx.postgres_dsn(APP_ROLE),
    }
    password = superset_admin_password(ctx)
    if "superset" in ctx.ports and password:  # refresh_dashboards runs only with a Superset
        env.update({"DP_SUPERSET_URL": ctx.url("superset"), "DP_SUPERSET_USER": "admin",
                    "DP_SUPERSET_PASSWORD": password})
    return env


COMMERCE_RAW_ROOT = "/raw/commerce/events"


SERVICES: Tuple[Service, ...] = (
    Service(
        name="kafka",
        summary="Apache Kafka 4 broker (KRaft), one node",
        binary="deploy/stack/kafka_broker",
        ports=(Port("port", "DP_KAFKA_PORT", 9092), Port("controller", "DP_KAFKA_CONTROLLER_PORT", 9093)),
        deps=(),
        profiles=("iot", "behaviour", "core"),
        args=lambda ctx: ["--port", str(ctx.port("kafka")), "--controller-port", str(ctx.port("kafka", "controller")),
                          "--state-dir", str(ctx.state_dir)],
        check=lambda ctx: Check("kafka", ctx.bootstrap),
        address=lambda ctx: ctx.bootstrap,
        start_timeout=150.0,
        stop_timeout=45.0,
    ),
    Service(
        name="postgres",
        summary="PostgreSQL 18, migrated, logical WAL for CDC",
        binary="deploy/stack/postgres_server",
        ports=(Port("port", "DP_POSTGRES_PORT", 5432),),
        deps=(),
        profiles=("iot", "core"),
        args=lambda ctx: ["--port", str(ctx.port("postgres")), "--state-dir", str(ctx.state_dir)],
        check=lambda ctx: Check("postgres", ctx.postgres_dsn(APP_ROLE)),
        address=lambda ctx: "%s:%d" % (HOST, ctx.port("postgres")),
        credentials=lambda ctx: ["app: " + ctx.postgres_dsn(APP_ROLE), "cdc: " + ctx.postgres_dsn(CDC_ROLE)],
        start_timeout=120.0,
        stop_timeout=45.0,
    ),
    Service(
        name="connect",
        summary="Kafka Connect worker + Debezium PostgreSQL connector",
        binary="deploy/stack/connect_worker",
        ports=(Port("port", "DP_CONNECT_PORT", 8083),),
        deps=("kafka",),
        profiles=("iot",),
        args=lambda ctx: ["--bootstrap", ctx.bootstrap, "--rest-port", str(ctx.port("connect")),
                          "--state-dir", str(ctx.state_dir)],
        check=lambda ctx: Check("http", ctx.connect_url + "/connectors"),
        address=lambda ctx: ctx.connect_url,
        start_timeout=180.0,
        stop_timeout=60.0,
    ),
    Service(
        name="register",
        summary="one-shot: register the Debezium connector %s" % CONNECTOR_NAME,
        binary="deploy/stack/connect_register",
        ports=(),
        deps=("kafka", "postgres", "connect"),
        profiles=("iot",),
        args=lambda ctx: ["--connect", ctx.connect_url, "--bootstrap", ctx.bootstrap,
                          "--postgres-dsn", ctx.postgres_dsn(CDC_ROLE)],
        check=lambda ctx: Check("connector", "%s/connectors/%s/status" % (ctx.connect_url, CONNECTOR_NAME)),
        address=lambda ctx: "%s/connectors/%s" % (ctx.connect_url, CONNECTOR_NAME),
        oneshot=True,
        start_timeout=180.0,
    ),
    Service(
        name="analytics",
        summary="analytics service: aggregates -> ClickHouse (chdb), HTTP query API",
        binary="services/analytics/analytics",
        ports=(Port("port", "DP_ANALYTICS_PORT", 8400),),
        deps=("kafka",),
        profiles=("iot", "behaviour"),
        args=lambda ctx: ["--bootstrap", ctx.bootstrap, "--port", str(ctx.port("analytics")),
                          "--data-dir", str(ctx.state_dir / "analytics")],
        check=lambda ctx: Check("http", "http://%s:%d/readyz" % (HOST, ctx.port("analytics"))),
        address=lambda ctx: "http://%s:%d" % (HOST, ctx.port("analytics")),
        start_timeout=120.0,
        stop_timeout=30.0,
    ),
    Service(
        name="aggregator",
        summary="IoT windowed aggregator (exactly-once)",
        binary="jobs/iot/aggregator/aggregator",
        ports=(Port("port", "DP_IOT_AGGREGATOR_HTTP_PORT", 9464),),
        deps=("kafka",),
        profiles=("iot",),
        args=lambda ctx: ["--bootstrap", ctx.bootstrap, "--http-port", str(ctx.port("aggregator"))],
        check=lambda ctx: Check("http", "http://%s:%d/readyz" % (HOST, ctx.port("aggregator"))),
        address=lambda ctx: "http://%s:%d/metrics" % (HOST, ctx.port("aggregator")),
        start_timeout=120.0,
        stop_timeout=45.0,
    ),
    Service(
        name="ingest",
        summary="gRPC ingestion service (behaviour events)",
        binary="services/ingest/ingest",
        ports=(Port("port", "DP_INGEST_PORT", 50051), Port("metrics", "DP_INGEST_METRICS_PORT", 9471)),
        deps=("kafka",),
        profiles=("behaviour",),
        args=lambda ctx: ["--bootstrap", ctx.bootstrap, "--port", str(ctx.port("ingest")),
                          "--metrics-port", str(ctx.port("ingest", "metrics"))],
        check=lambda ctx: Check("grpc", "%s:%d" % (HOST, ctx.port("ingest"))),
        address=lambda ctx: "grpc://%s:%d (metrics :%d)" % (HOST, ctx.port("ingest"), ctx.port("ingest", "metrics")),
        credentials=lambda ctx: ["dev API key file: %s" % (ctx.state_dir / "ingest" / "dev-api-key")],
        env=_ingest_env,
        start_timeout=90.0,
        stop_timeout=30.0,
    ),
    Service(
        name="ws_gateway",
        summary="WebSocket gateway: browser clients and emulated users -> ingest",
        binary="services/ws_gateway/ws_gateway",
        ports=(Port("port", "DP_WS_PORT", 8765),),
        deps=("ingest",),
        profiles=("behaviour",),
        args=lambda ctx: ["--port", str(ctx.port("ws_gateway")), "--ingest-target", "%s:%d" % (HOST, ctx.port("ingest")),
                          "--api-key-file", str(ctx.state_dir / "ingest" / "dev-api-key")],
        check=lambda ctx: Check("http", ctx.url("ws_gateway", "/healthz")),
        address=lambda ctx: "%s (ws %s)" % (ctx.url("ws_gateway", "/"), "ws://%s:%d/ws" % (HOST, ctx.port("ws_gateway"))),
        start_timeout=60.0,
        stop_timeout=30.0,
    ),
    Service(
        name="hdfs",
        summary="HDFS: NameNode + DataNode(s), WebHDFS",
        binary="deploy/stack/hdfs_cluster",
        ports=(Port("port", "DP_HDFS_NAMENODE_PORT", 8020), Port("http", "DP_HDFS_NAMENODE_HTTP_PORT", 9870),
               Port("datanode", "DP_HDFS_DATANODE_BASE_PORT", 9866)),
        deps=(),
        profiles=("commerce",),
        # One DataNode unless DP_HDFS_DATANODES says otherwise: a laptop stack, replication 1.
        args=lambda ctx: ["--namenode-port", str(ctx.port("hdfs")), "--namenode-http-port", str(ctx.port("hdfs", "http")),
                          "--datanode-base-port", str(ctx.port("hdfs", "datanode")),
                          "--datanodes", os.environ.get("DP_HDFS_DATANODES") or "1", "--state-dir", str(ctx.state_dir)],
        check=lambda ctx: Check("hdfs", "http://%s:%d" % (HOST, ctx.port("hdfs", "http"))),
        address=lambda ctx: "%s (WebHDFS %s)" % (ctx.hdfs_url, ctx.webhdfs_url),
        start_timeout=180.0,
        stop_timeout=60.0,
    ),
    Service(
        name="spark",
        summary="Spark Connect job server (local mode)",
        binary="deploy/spark/connect_server",
        ports=(Port("port", "DP_SPARK_CONNECT_PORT", 15002),),
        deps=(),
        profiles=("commerce",),
        args=lambda ctx: ["--port", str(ctx.port("spark")), "--state-dir", str(ctx.state_dir),
                          "--start-timeout", "280"],
        check=lambda ctx: Check("spark", "%s:%d" % (HOST, ctx.port("spark"))),
        address=lambda ctx: ctx.spark_remote,
        start_timeout=300.0,
        stop_timeout=60.0,
    ),
    Service(
        name="superset",
        summary="Apache Superset: commerce dashboards over schema mart",
        binary="deploy/superset/server",
        ports=(Port("port", "DP_SUPERSET_PORT", 8088),),
        deps=("postgres",),
        profiles=("commerce",),
        args=lambda ctx: ["--port", str(ctx.port("superset")), "--state-dir", str(ctx.state_dir)],
        # The database URI carries a password: environment, not argv.
        env=lambda ctx: {"DP_SUPERSET_DATABASE_URI": ctx.postgres_url(APP_ROLE)},
        check=lambda ctx: Check("http", ctx.url("superset", "/health")),
        address=lambda ctx: ctx.url("superset", "/"),
        credentials=lambda ctx: _login("admin", superset_admin_password(ctx), ctx.state_dir / "superset" / "admin_password"),
        start_timeout=300.0,
        stop_timeout=45.0,
    ),
    Service(
        name="airflow",
        summary="Apache Airflow: scheduler, DAG processor, triggerer, API server; DAG commerce_daily",
        binary="deploy/airflow/standalone",
        ports=(Port("port", "DP_AIRFLOW_PORT", 8080),),
        deps=("postgres", "hdfs", "spark"),
        profiles=("commerce",),
        args=lambda ctx: ["--port", str(ctx.port("airflow")), "--state-dir", str(ctx.state_dir / "airflow"),
                          "--start-timeout", "280"],
        env=_airflow_env,
        check=lambda ctx: Check("airflow", ctx.url("airflow", "/api/v2/monitor/health")),
        address=lambda ctx: ctx.url("airflow", "/"),
        credentials=lambda ctx: _login("admin", airflow_admin_password(ctx),
                                       ctx.state_dir / "airflow" / "simple_auth_manager_passwords.json"),
        start_timeout=300.0,
        stop_timeout=60.0,
    ),
    Service(
        name="flink",
        summary="Flink standalone session cluster: JobManager + TaskManager(s)",
        binary="deploy/flink/cluster",
        ports=(Port("port", "DP_FLINK_REST_PORT", 18081), Port("rpc", "DP_FLINK_RPC_PORT", 16123)),
        deps=(),
        profiles=("flink",),
        args=lambda ctx: ["--flink-rest-port", str(ctx.port("flink")), "--flink-rpc-port", str(ctx.port("flink", "rpc")),
                          "--taskmanagers", os.environ.get("DP_FLINK_TASKMANAGERS") or "1",
                          "--state-dir", str(ctx.state_dir)],
        check=lambda ctx: Check("flink", ctx.url("flink", "/overview")),
        address=lambda ctx: "%s (submit: --jobmanager %s:%d)" % (ctx.url("flink", "/"), HOST, ctx.port("flink")),
        start_timeout=180.0,
        stop_timeout=60.0,
    ),
)

PROFILES = ("all", "default") + tuple(sorted({p for s in SERVICES for p in s.profiles}))
# No flag: the streaming pipelines' services (fast: about a minute). `all` adds the commerce
# services (HDFS, Spark, Superset, Airflow); the Flink session cluster only comes on request.
DEFAULT_PROFILES = ("iot", "behaviour")
ALL_PROFILES = ("iot", "behaviour", "commerce", "core")


def by_name(services: Sequence[Service] = SERVICES) -> Dict[str, Service]:
    return {s.name: s for s in services}


def topological_order(services: Sequence[Service]) -> List[Service]:
    """Dependencies first; ties keep the catalogue's order. Raises CatalogError on a cycle or unknown dep."""
    known = by_name(services)
    for service in services:
        for dep in service.deps:
            if dep not in known:
                raise CatalogError("%s depends on unknown service %r" % (service.name, dep))
    done: List[Service] = []
    placed = set()
    remaining = list(services)
    while remaining:
        for service in remaining:
            if all(dep in placed for dep in service.deps):
                done.append(service)
                placed.add(service.name)
                remaining.remove(service)
                break
        else:
            raise CatalogError("dependency cycle among: %s" % ", ".join(s.name for s in remaining))
    return done


def with_dependencies(names: Iterable[str], services: Sequence[Service] = SERVICES) -> List[str]:
    """`names` plus everything they need, transitively, in start order."""
    known = by_name(services)
    wanted = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in known:
            raise CatalogError("unknown service %r (choose from %s)" % (name, ", ".join(known)))
        if name not in wanted:
            wanted.add(name)
            stack.extend(known[name].deps)
    return [s.name for s in topological_order(services) if s.name in wanted]


def profile_services(profile: str, services: Sequence[Service] = SERVICES) -> List[str]:
    """The services a profile names: `all` is iot + behaviour + commerce (+ core), `default` the
    streaming ones; any other profile its own services."""
    wanted = {"all": ALL_PROFILES, "default": DEFAULT_PROFILES}.get(profile, (profile,))
    return [s.name for s in services if set(s.profiles) & set(wanted)]


def select(profiles: Sequence[str] = ("default",), services_list: Optional[Sequence[str]] = None,
           with_: Sequence[str] = (), without: Sequence[str] = (),
           services: Sequence[Service] = SERVICES) -> List[str]:
    """The enabled services, in start order: an explicit list, else the profiles' services; then
    `with_` added and `without` removed; dependencies are always added back."""
    known = by_name(services)
    if services_list:
        chosen = list(services_list)
    else:
        chosen = []
        for profile in profiles:
            if profile in PROFILES:
                chosen += profile_services(profile, services)
            else:
                raise CatalogError("unknown profile %r (choose from %s)" % (profile, ", ".join(PROFILES)))
    chosen = [n for n in chosen + list(with_) if n not in set(without)]
    for name in list(with_) + list(without):
        if name not in known:
            raise CatalogError("unknown service %r (choose from %s)" % (name, ", ".join(known)))
    return with_dependencies(chosen, services)


def dependents(name: str, services: Sequence[Service] = SERVICES) -> List[str]:
    """Services that need `name`, directly or not."""
    result: List[str] = []
    for service in topological_order(services):
        if name in service.deps or any(dep in result for dep in service.deps):
            result.append(service.name)
    return result


def port_plan(overrides: Mapping[str, int] = {}, env: Mapping[str, str] = None,
              services: Sequence[Service] = SERVICES) -> Dict[str, Dict[str, int]]:
    """Every service's ports: `overrides` ("kafka" or "kafka.controller" -> port) over the
    environment (each port's DP_* variable, the same the components read) over the defaults."""
    env = os.environ if env is None else env
    plan: Dict[str, Dict[str, int]] = {}
    keys = set()
    for service in services:
        plan[service.name] = {}
        for port in service.ports:
            key = service.name if port.name == "port" else "%s.%s" % (service.name, port.name)
            keys.add(key)
            value = overrides.get(key)
            if value is None and env.get(port.env):
                try:
                    value = int(env[port.env])
                except ValueError:
                    raise CatalogError("%s=%r is not a port number" % (port.env, env[port.env])) from None
            plan[service.name][port.name] = port.default if value is None else value
    for key in overrides:
        if key not in keys:
            raise CatalogError("--port %s: no such port (choose from %s)" % (key, ", ".join(sorted(keys))))
    for service_name, ports in plan.items():
        for port_name, number in ports.items():
            if not 1 <= number <= 65535:
                raise CatalogError("port %s.%s = %d is not 1..65535" % (service_name, port_name, number))
    return plan


def parse_port_override(text: str) -> Tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not value.strip().isdigit():
        raise CatalogError("--port wants NAME=PORT or NAME.PORTNAME=PORT (e.g. kafka=19092), got %r" % text)
    return key.strip(), int(value)
