"""The services of the local stack, declared once: what runs, on which ports, after what, how checked.

Everything `up`, `status`, `logs` and `down` do is derived from `SERVICES`: the command line of
each program (from one port plan and the state directory), its dependencies (start order, and
the reverse for stopping), its health check, and the profiles that enable it. Adding a service
means adding one `Service` here and its program to the `data` of `//deploy/stack:up`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
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
    """A health check: kind is tcp, http, grpc, kafka, postgres or connector; `target` its address."""

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

    @property
    def connect_url(self) -> str:
        return "http://%s:%d" % (HOST, self.port("connect"))


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
        profiles=("iot",),
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
)

PROFILES = ("all",) + tuple(sorted({p for s in SERVICES for p in s.profiles}))


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


def select(profiles: Sequence[str] = ("all",), services_list: Optional[Sequence[str]] = None,
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
            if profile == "all":
                chosen += list(known)
            elif profile in PROFILES:
                chosen += [s.name for s in services if profile in s.profiles]
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
