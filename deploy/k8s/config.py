"""The one typed configuration behind the local stack's ports and the cluster manifests.

`PORTS` is the port plan of every component: the local stack (deploy/stack/catalog.py) binds
these numbers on 127.0.0.1 and the manifests use the same numbers as container and Service
ports, under the same environment variables (`config_test` fails when the two disagree).
`ENVIRONMENTS` holds dev, staging and prod as data: sizes, replicas, resources, storage.
`FLOWS` are the network connections the system makes (they become NetworkPolicies) and
`SECRETS` the Secrets a cluster must hold before the manifests are applied (referenced by
name and key, never rendered).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple


class ConfigError(ValueError):
    """An unknown environment or an inconsistent setting; the message names the choices."""


@dataclasses.dataclass(frozen=True)
class Port:
    """One listening port: its name within the component, number, and the variable that moves it."""

    name: str
    number: int
    env: Optional[str] = None


# component -> its ports. Names follow deploy/stack/catalog.py ("port" is the main one).
PORTS: Mapping[str, Tuple[Port, ...]] = {
    "kafka": (Port("port", 9092, "DP_KAFKA_PORT"), Port("controller", 9093, "DP_KAFKA_CONTROLLER_PORT")),
    "postgres": (Port("port", 5432, "DP_POSTGRES_PORT"),),
    "connect": (Port("port", 8083, "DP_CONNECT_PORT"),),
    "analytics": (Port("port", 8400, "DP_ANALYTICS_PORT"),),
    "aggregator": (Port("port", 9464, "DP_IOT_AGGREGATOR_HTTP_PORT"),),
    "ingest": (Port("port", 50051, "DP_INGEST_PORT"), Port("metrics", 9471, "DP_INGEST_METRICS_PORT")),
    "ws_gateway": (Port("port", 8765, "DP_WS_PORT"),),
    "clickhouse": (Port("port", 8123), Port("native", 9000)),
    "hdfs_namenode": (Port("port", 8020, "DP_HDFS_NAMENODE_PORT"), Port("http", 9870, "DP_HDFS_NAMENODE_HTTP_PORT")),
    "hdfs_datanode": (Port("port", 9866), Port("http", 9864), Port("ipc", 9867)),
    "flink_jobmanager": (Port("port", 8081),),
}


def port(component: str, name: str = "port") -> int:
    for p in PORTS[component]:
        if p.name == name:
            return p.number
    raise ConfigError("component %s has no port %r (has %s)" % (component, name, ", ".join(p.name for p in PORTS[component])))


@dataclasses.dataclass(frozen=True)
class Resources:
    """Requests, and limits (memory always limited; CPU limits only where throttling is wanted)."""

    cpu: str
    memory: str
    memory_limit: Optional[str] = None
    cpu_limit: Optional[str] = None

    def to_k8s(self) -> Dict[str, Dict[str, str]]:
        limits = {"memory": self.memory_limit or self.memory}
        if self.cpu_limit:
            limits["cpu"] = self.cpu_limit
        return {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits}


@dataclasses.dataclass(frozen=True)
class Environment:
    name: str
    namespace: str
    # Where `bazel run //deploy/images:push` puts our images; references become <registry>/<image>@sha256:...
    image_registry: str
    storage_class: Optional[str]
    kafka_brokers: int
    kafka_replication: int
    kafka_min_isr: int
    kafka_storage: str
    replicas: Mapping[str, int]
    resources: Mapping[str, Resources]
    postgres_instances: int
    postgres_storage: str
    clickhouse_storage: str
    hdfs_datanodes: int
    hdfs_replication: int
    hdfs_storage: str
    flink_taskmanagers: int
    flink_slots: int
    flink_checkpoint_storage: str
    spark_executors: int
    # Emulated users the WebSocket gateway runs beside real clients (0 in production).
    ws_emulated_users: int

    def check(self) -> "Environment":
        problems = []
        if not 1 <= self.kafka_replication <= self.kafka_brokers:
            problems.append("kafka_replication must be 1..kafka_brokers")
        if not 1 <= self.kafka_min_isr <= self.kafka_replication:
            problems.append("kafka_min_isr must be 1..kafka_replication")
        if not 1 <= self.hdfs_replication <= self.hdfs_datanodes:
            problems.append("hdfs_replication must be 1..hdfs_datanodes")
        if self.replicas.get("analytics", 1) != 1:
            # One consumer group member owns the writes today (ADR 0007); more replicas need distinct instance ids.
            problems.append("analytics runs as one replica")
        missing = sorted(set(WORKLOADS) - set(self.resources))
        if missing:
            problems.append("no resources for %s" % ", ".join(missing))
        if problems:
            raise ConfigError("environment %s: %s" % (self.name, "; ".join(problems)))
        return self


# Components with resources of their own (our workloads and the engines we size directly).
WORKLOADS = ("ingest", "ws_gateway", "analytics", "aggregator", "iot_simulator", "kafka", "connect", "postgres",
             "clickhouse", "hdfs_namenode", "hdfs_datanode", "flink_jobmanager", "flink_taskmanager",
             "spark_driver", "spark_executor")

_SMALL = {
    "ingest": Resources("100m", "256Mi"),
    "ws_gateway": Resources("100m", "192Mi"),
    "analytics": Resources("200m", "512Mi"),
    "aggregator": Resources("200m", "384Mi"),
    "iot_simulator": Resources("50m", "128Mi"),
    "kafka": Resources("250m", "1Gi"),
    "connect": Resources("250m", "1Gi"),
    "postgres": Resources("250m", "512Mi"),
    "clickhouse": Resources("250m", "1Gi"),
    "hdfs_namenode": Resources("100m", "768Mi"),
    "hdfs_datanode": Resources("100m", "512Mi"),
    "flink_jobmanager": Resources("250m", "1Gi"),
    "flink_taskmanager": Resources("500m", "1536Mi"),
    "spark_driver": Resources("500m", "1Gi"),
    "spark_executor": Resources("500m", "1Gi"),
}

_LARGE = {
    "ingest": Resources("500m", "512Mi"),
    "ws_gateway": Resources("250m", "256Mi"),
    "analytics": Resources("1", "2Gi"),
    "aggregator": Resources("1", "1Gi"),
    "iot_simulator": Resources("100m", "128Mi"),
    "kafka": Resources("2", "8Gi"),
    "connect": Resources("1", "2Gi"),
    "postgres": Resources("2", "4Gi"),
    "clickhouse": Resources("2", "8Gi"),
    "hdfs_namenode": Resources("1", "4Gi"),
    "hdfs_datanode": Resources("1", "4Gi"),
    "flink_jobmanager": Resources("1", "2Gi"),
    "flink_taskmanager": Resources("2", "4Gi"),
    "spark_driver": Resources("1", "2Gi"),
    "spark_executor": Resources("2", "4Gi"),
}

ENVIRONMENTS: Mapping[str, Environment] = {
    "dev": Environment(
        name="dev", namespace="dp-dev", image_registry="registry.dev.invalid/data-pipelines", storage_class=None,
        kafka_brokers=1, kafka_replication=1, kafka_min_isr=1, kafka_storage="10Gi",
        replicas={"ingest": 1, "ws_gateway": 1, "analytics": 1, "aggregator": 1, "iot_simulator": 1},
        resources=_SMALL, postgres_instances=1, postgres_storage="5Gi", clickhouse_storage="10Gi",
        hdfs_datanodes=1, hdfs_replication=1, hdfs_storage="10Gi",
        flink_taskmanagers=1, flink_slots=2, flink_checkpoint_storage="5Gi", spark_executors=1,
        ws_emulated_users=10,
    ),
    "staging": Environment(
        name="staging", namespace="dp-staging", image_registry="registry.staging.invalid/data-pipelines",
        storage_class=None,
        kafka_brokers=3, kafka_replication=3, kafka_min_isr=2, kafka_storage="50Gi",
        replicas={"ingest": 2, "ws_gateway": 2, "analytics": 1, "aggregator": 1, "iot_simulator": 1},
        resources=_SMALL, postgres_instances=2, postgres_storage="20Gi", clickhouse_storage="50Gi",
        hdfs_datanodes=3, hdfs_replication=3, hdfs_storage="50Gi",
        flink_taskmanagers=2, flink_slots=2, flink_checkpoint_storage="20Gi", spark_executors=2,
        ws_emulated_users=50,
    ),
    "prod": Environment(
        name="prod", namespace="dp-prod", image_registry="registry.prod.invalid/data-pipelines",
        storage_class="ssd",
        kafka_brokers=3, kafka_replication=3, kafka_min_isr=2, kafka_storage="500Gi",
        replicas={"ingest": 3, "ws_gateway": 3, "analytics": 1, "aggregator": 1, "iot_simulator": 0},
        resources=_LARGE, postgres_instances=3, postgres_storage="200Gi", clickhouse_storage="500Gi",
        hdfs_datanodes=4, hdfs_replication=3, hdfs_storage="1Ti",
        flink_taskmanagers=3, flink_slots=2, flink_checkpoint_storage="100Gi", spark_executors=4,
        ws_emulated_users=0,
    ),
}


def environment(name: str) -> Environment:
    try:
        return ENVIRONMENTS[name].check()
    except KeyError:
        raise ConfigError("unknown environment %r (choose from %s)" % (name, ", ".join(ENVIRONMENTS))) from None


@dataclasses.dataclass(frozen=True)
class Flow:
    """`source` opens connections to `target` on its port `port`: one ingress rule of a NetworkPolicy."""

    source: str
    target: str
    port: str = "port"


# Every connection the system makes inside the namespace. "kafka" is Strimzi's broker pods (the
# listener's networkPolicyPeers), "postgres" CloudNativePG's instances.
FLOWS: Tuple[Flow, ...] = (
    Flow("ws_gateway", "ingest"),
    Flow("ingest", "kafka"),
    Flow("connect", "kafka"),
    Flow("connect", "postgres"),
    Flow("iot_simulator", "postgres"),
    Flow("aggregator", "kafka"),
    Flow("analytics", "kafka"),
    Flow("analytics", "clickhouse"),
    Flow("flink", "kafka"),
    Flow("spark", "hdfs_namenode"),
    Flow("spark", "hdfs_datanode"),
    Flow("spark", "postgres"),
    Flow("hdfs_datanode", "hdfs_namenode"),
    Flow("airflow", "postgres"),
    Flow("airflow", "hdfs_namenode", "http"),
    Flow("superset", "postgres"),
)

# Pods outside the namespace's own workloads that reach in: the ingress controller or load
# balancer in front of the gateway and the query API, and Prometheus scraping /metrics.
PUBLIC = ("ws_gateway", "analytics")


@dataclasses.dataclass(frozen=True)
class Secret:
    name: str
    keys: Tuple[str, ...]
    what: str
    type: str = "Opaque"


# Created by the operator of the cluster (kubectl create secret ..., or an external secrets
# controller) before applying; the manifests only refer to them.
SECRETS: Tuple[Secret, ...] = (
    Secret("dp-postgres-app", ("username", "password"), "PostgreSQL role dp_app (owner of the database)",
           "kubernetes.io/basic-auth"),
    Secret("dp-postgres-cdc", ("username", "password"), "PostgreSQL role dp_cdc (REPLICATION, read by Debezium)",
           "kubernetes.io/basic-auth"),
    Secret("dp-clickhouse", ("password",), "ClickHouse user dp_analytics (the analytics service writes and reads)"),
    Secret("dp-ingest-api-keys", ("api_keys.jsonl",),
           "the ingestion service's key store (bazel run //services/ingest:api_keys -- --file api_keys.jsonl add ...)"),
    Secret("dp-ws-gateway-api-key", ("api-key", "tenant"),
           "the API key the WebSocket gateway sends to the ingestion service, and the tenant it belongs to"),
    Secret("dp-airflow", ("connection", "fernet-key", "api-secret-key", "jwt-secret"),
           "Airflow: metadata database URI (postgresql://...), Fernet key, API and JWT secret keys"),
    Secret("dp-superset", ("SUPERSET_SECRET_KEY", "DB_PASS"), "Superset: Flask secret key, metadata database password"),
)

SECRET_NAMES = {s.name: s for s in SECRETS}
