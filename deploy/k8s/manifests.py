"""Kubernetes objects of the whole system for one environment, built from the typed config.

Pure: `build(env, resolver)` returns a `Bundle` (the objects, in apply order, and the Helm values
of Airflow and Superset); nothing is read from the cluster and nothing is written. Topic names
come from the topic registry, the Debezium connector from deploy/connect/connectors.py, ports
from config.PORTS, secrets from config.SECRETS (by reference only).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional

from datapipelines import topics
from deploy.connect import connectors
from deploy.k8s import config
from deploy.k8s.config import Environment, port
from deploy.k8s.images import Resolver
from deploy.postgres import migrate

Obj = Dict[str, Any]

PART_OF = "data-pipelines"
NAME_LABEL = "app.kubernetes.io/name"
KAFKA_CLUSTER = "dp-kafka"
CONNECT_CLUSTER = "dp-connect"
POSTGRES_CLUSTER = "dp-postgres"
DATABASE = "datapipelines"
CLICKHOUSE_USER = "dp_analytics"
HDFS_CONFIG = "hdfs-config"
HADOOP_CONF_DIR = "/etc/hadoop-dp"
# Namespaces of the things that reach our pods from outside: Prometheus, and the CloudNativePG
# operator (it polls each instance's status port).
MONITORING_NAMESPACE = "monitoring"
CNPG_OPERATOR_NAMESPACE = "cnpg-system"
CNPG_STATUS_PORT = 8000
# Paths inside our images (deploy/images; images_test checks them against the built images):
# the repository's runfiles under /app, except the Flink job's, which sit under Flink's usrlib.
APP_ROOT = "/app"
FLINK_JOB_ROOT = "/opt/flink/usrlib"
FLINK_PYTHON_JAR = "local:///opt/flink/opt/flink-python-2.3.0.jar"
FLINK_CHECKPOINTS = "/flink-data"
SPARK_VERSION = "4.3.0"  # the pyspark of the spark set, whose jars the image's /opt/spark links
# Airflow renders this into the SparkApplication it submits each day (SparkKubernetesOperator).
COMMERCE_DAY = "{{ ds }}"

REPO_ROOT_MARKER = "WORKSPACE"


@dataclasses.dataclass
class Bundle:
    env: Environment
    objects: List[Obj]
    helm_values: Dict[str, Obj]

    def kinds(self) -> List[str]:
        return sorted({"%s/%s" % (o["apiVersion"], o["kind"]) for o in self.objects})


def labels(component: str, env: Environment) -> Dict[str, str]:
    return {NAME_LABEL: component, "app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/instance": env.name}


def selector(component: str) -> Dict[str, str]:
    return {NAME_LABEL: component}


def meta(name: str, env: Environment, component: Optional[str] = None, **extra: Any) -> Obj:
    m: Obj = {"name": name, "namespace": env.namespace, "labels": labels(component or name, env)}
    m.update(extra)
    return m


def k8s_name(text: str) -> str:
    """A DNS-1123 object name for a topic or other identifier (lowercase, [a-z0-9.-])."""
    name = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip(".-")
    return name[:253]


def secret_env(var: str, secret: str, key: str) -> Obj:
    if secret not in config.SECRET_NAMES or key not in config.SECRET_NAMES[secret].keys:
        raise config.ConfigError("secret %s key %s is not declared in config.SECRETS" % (secret, key))
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def env_var(name: str, value: Any) -> Obj:
    return {"name": name, "value": str(value)}


def kafka_bootstrap() -> str:
    return "%s-kafka-bootstrap:%d" % (KAFKA_CLUSTER, port("kafka"))


def postgres_host() -> str:
    return "%s-rw" % POSTGRES_CLUSTER  # CloudNativePG's read-write Service


def service_host(component: str) -> str:
    return component.replace("_", "-")


def hardened(container: Obj) -> Obj:
    container.setdefault("securityContext", {}).update({
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    })
    container.setdefault("volumeMounts", []).append({"name": "tmp", "mountPath": "/tmp"})
    return container


def pod_security() -> Obj:
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


# --- our services ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    component: str
    image: str
    container_ports: Mapping[str, int]  # port name -> number
    env: List[Obj]
    liveness: Optional[Obj]
    readiness: Optional[Obj]
    drain_seconds: int
    volumes: List[Obj] = dataclasses.field(default_factory=list)
    mounts: List[Obj] = dataclasses.field(default_factory=list)
    # Recreate: a second instance with the same static member / transactional id would fence the first.
    singleton: bool = False
    service: bool = True


def http_probe(path: str, port_name: str, period: int = 10, failures: int = 3, delay: int = 5) -> Obj:
    return {"httpGet": {"path": path, "port": port_name}, "periodSeconds": period, "failureThreshold": failures,
            "initialDelaySeconds": delay, "timeoutSeconds": 3}


def our_services(env: Environment, images: Resolver) -> List[ServiceSpec]:
    bootstrap = env_var("DP_KAFKA_BOOTSTRAP", kafka_bootstrap())
    return [
        ServiceSpec(
            component="ingest",
            image=images.ours("ingest"),
            container_ports={"grpc": port("ingest"), "metrics": port("ingest", "metrics")},
            env=[
                bootstrap,
                env_var("DP_INGEST_HOST", "0.0.0.0"),
                env_var("DP_INGEST_PORT", port("ingest")),
                env_var("DP_INGEST_METRICS_HOST", "0.0.0.0"),
                env_var("DP_INGEST_METRICS_PORT", port("ingest", "metrics")),
                env_var("DP_INGEST_API_KEYS_FILE", "/etc/dp/ingest/api_keys.jsonl"),
            ],
            # Health service "" is SERVING while the process runs; the IngestService entry turns
            # NOT_SERVING while Kafka is unreachable (then the pod leaves the Service, not the node).
            liveness={"grpc": {"port": port("ingest"), "service": ""}, "periodSeconds": 10, "failureThreshold": 3,
                      "initialDelaySeconds": 5, "timeoutSeconds": 3},
            readiness={"grpc": {"port": port("ingest"), "service": "datapipelines.ingest.v1.IngestService"},
                       "periodSeconds": 5, "failureThreshold": 2, "initialDelaySeconds": 3, "timeoutSeconds": 3},
            drain_seconds=20,
            volumes=[{"name": "api-keys", "secret": {"secretName": "dp-ingest-api-keys"}}],
            mounts=[{"name": "api-keys", "mountPath": "/etc/dp/ingest", "readOnly": True}],
        ),
        ServiceSpec(
            component="ws_gateway",
            image=images.ours("ws_gateway"),
            container_ports={"http": port("ws_gateway")},
            env=[
                env_var("DP_WS_HOST", "0.0.0.0"),
                env_var("DP_WS_PORT", port("ws_gateway")),
                env_var("DP_WS_INGEST_TARGET", "%s:%d" % (service_host("ingest"), port("ingest"))),
                secret_env("DP_WS_API_KEY", "dp-ws-gateway-api-key", "api-key"),
                # The envelopes' tenant must be the key's (the ingestion service refuses others).
                secret_env("DP_WS_TENANT", "dp-ws-gateway-api-key", "tenant"),
                env_var("DP_WS_USERS", env.ws_emulated_users),
            ],
            # /healthz is 503 while the ingestion service is unreachable or while draining: it
            # gates traffic; liveness only asks whether the process still accepts connections.
            liveness={"tcpSocket": {"port": "http"}, "periodSeconds": 10, "failureThreshold": 3,
                      "initialDelaySeconds": 5, "timeoutSeconds": 3},
            readiness=http_probe("/healthz", "http", period=5, failures=2, delay=3),
            drain_seconds=15,
        ),
        ServiceSpec(
            component="analytics",
            image=images.ours("analytics"),
            container_ports={"http": port("analytics")},
            env=[
                bootstrap,
                env_var("DP_ANALYTICS_HOST", "0.0.0.0"),
                env_var("DP_ANALYTICS_PORT", port("analytics")),
                env_var("DP_CLICKHOUSE_URL", "http://%s@%s:%d/%s" % (CLICKHOUSE_USER, service_host("clickhouse"),
                                                                     port("clickhouse"), DATABASE)),
                secret_env("DP_CLICKHOUSE_PASSWORD", "dp-clickhouse", "password"),
                env_var("DP_ANALYTICS_INSTANCE_ID", "analytics-sink-1"),
            ],
            liveness=http_probe("/healthz", "http"),
            readiness=http_probe("/readyz", "http", period=5),
            drain_seconds=15,
            singleton=True,
        ),
        ServiceSpec(
            component="aggregator",
            image=images.ours("aggregator"),
            container_ports={"http": port("aggregator")},
            env=[
                bootstrap,
                env_var("DP_IOT_AGGREGATOR_HTTP_HOST", "0.0.0.0"),
                env_var("DP_IOT_AGGREGATOR_HTTP_PORT", port("aggregator")),
                env_var("DP_IOT_AGGREGATOR_INSTANCE", "0"),
            ],
            liveness=http_probe("/healthz", "http"),
            # Not ready while the changelog is restored after an assignment (can take minutes).
            readiness=http_probe("/readyz", "http", period=5),
            drain_seconds=30,
            singleton=True,
        ),
        ServiceSpec(
            component="iot_simulator",
            image=images.ours("iot_simulator"),
            container_ports={},
            env=[
                secret_env("DP_POSTGRES_APP_PASSWORD", "dp-postgres-app", "password"),
                env_var("DP_IOT_SIMULATOR_DSN", "host=%s port=%d dbname=%s user=%s password=$(DP_POSTGRES_APP_PASSWORD)"
                        % (postgres_host(), port("postgres"), DATABASE, migrate.APP_ROLE)),
                env_var("DP_IOT_DURATION", 0),
            ],
            # The simulator serves nothing: no port, so no probe; a crash restarts the container.
            liveness=None,
            readiness=None,
            drain_seconds=10,
            singleton=True,
            service=False,
        ),
    ]


def deployment(spec: ServiceSpec, env: Environment) -> Obj:
    container: Obj = {
        "name": spec.component.replace("_", "-"),
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "env": spec.env,
        "resources": env.resources[spec.component].to_k8s(),
        "volumeMounts": list(spec.mounts),
    }
    if spec.container_ports:
        container["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in spec.container_ports.items()]
    if spec.liveness:
        container["livenessProbe"] = spec.liveness
    if spec.readiness:
        container["readinessProbe"] = spec.readiness
    hardened(container)
    annotations = {}
    metrics_port = spec.container_ports.get("metrics") or spec.container_ports.get("http")
    if metrics_port:
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics_port),
                       "prometheus.io/path": "/metrics"}
    name = service_host(spec.component)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, env, spec.component),
        "spec": {
            "replicas": env.replicas[spec.component],
            "selector": {"matchLabels": selector(spec.component)},
            "strategy": {"type": "Recreate"} if spec.singleton else
            {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(spec.component, env), "annotations": annotations},
                "spec": {
                    "securityContext": pod_security(),
                    "terminationGracePeriodSeconds": spec.drain_seconds + 10,
                    "containers": [container],
                    "volumes": list(spec.volumes) + [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def service(component: str, env: Environment, ports: Mapping[str, int], headless: bool = False,
            name: Optional[str] = None) -> Obj:
    spec: Obj = {
        "selector": selector(component),
        "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports.items()],
    }
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(name or service_host(component), env, component),
            "spec": spec}


def pdb(component: str, env: Environment) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(service_host(component), env, component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(component)}},
    }


# --- Kafka (Strimzi) ------------------------------------------------------------------------------


def kafka_objects(env: Environment) -> List[Obj]:
    peers = [{"podSelector": {"matchLabels": selector(f.source)}} for f in config.FLOWS if f.target == "kafka"]
    pool = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaNodePool",
        "metadata": meta("brokers", env, "kafka", labels={**labels("kafka", env), "strimzi.io/cluster": KAFKA_CLUSTER}),
        "spec": {
            "replicas": env.kafka_brokers,
            "roles": ["controller", "broker"],
            "storage": {"type": "jbod", "volumes": [dict({"id": 0, "type": "persistent-claim", "size": env.kafka_storage,
                                                          "deleteClaim": False, "kraftMetadata": "shared"},
                                                         **({"class": env.storage_class} if env.storage_class else {}))]},
            "resources": env.resources["kafka"].to_k8s(),
            "template": {"pod": {"metadata": {"labels": labels("kafka", env)}}},
        },
    }
    rf, isr = env.kafka_replication, env.kafka_min_isr
    cluster = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "Kafka",
        "metadata": meta(KAFKA_CLUSTER, env, "kafka"),
        "spec": {
            "kafka": {
                "listeners": [{"name": "plain", "port": port("kafka"), "type": "internal", "tls": False,
                               "networkPolicyPeers": peers}],
                "config": {
                    # Topics come from the registry as KafkaTopic objects only.
                    "auto.create.topics.enable": False,
                    "default.replication.factor": rf,
                    "min.insync.replicas": isr,
                    "offsets.topic.replication.factor": rf,
                    "transaction.state.log.replication.factor": rf,
                    "transaction.state.log.min.isr": isr,
                    # The Flink sinks' transactions may stay open up to 10 minutes (ADR 0009).
                    "transaction.max.timeout.ms": 900000,
                },
            },
            "entityOperator": {"topicOperator": {}},
        },
    }
    objs = [pool, cluster]
    for topic in topics.ALL:
        cfg: Dict[str, Any] = dict(topic.config())
        cfg["min.insync.replicas"] = str(min(isr, rf))
        objs.append({
            "apiVersion": "kafka.strimzi.io/v1",
            "kind": "KafkaTopic",
            "metadata": meta(k8s_name(topic.name), env, "kafka",
                             labels={**labels("kafka", env), "strimzi.io/cluster": KAFKA_CLUSTER}),
            "spec": {"topicName": topic.name, "partitions": topic.partitions, "replicas": rf, "config": cfg},
        })
    return objs


def debezium_version(repo_root: pathlib.Path) -> str:
    """The Debezium release the local stack runs, from its Maven coordinates (one place to bump it)."""
    text = (repo_root / "third_party/jvm/connect/debezium/artifacts.txt").read_text()
    match = re.search(r"^io\.debezium:debezium-connector-postgres:(\S+)$", text, re.M)
    if not match:
        raise config.ConfigError("third_party/jvm/connect/debezium/artifacts.txt names no debezium-connector-postgres")
    return match.group(1)


def connect_objects(env: Environment, repo_root: pathlib.Path) -> List[Obj]:
    rf = env.kafka_replication
    version = debezium_version(repo_root)
    connect = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaConnect",
        "metadata": meta(CONNECT_CLUSTER, env, "connect"),
        "spec": {
            "replicas": 1 if env.name == "dev" else 2,
            "bootstrapServers": kafka_bootstrap(),
            "groupId": "dp-connect-iot",
            "configStorageTopic": topics.CONNECT_CONFIGS.name,
            "offsetStorageTopic": topics.CONNECT_OFFSETS.name,
            "statusStorageTopic": topics.CONNECT_STATUS.name,
            "config": {
                "config.storage.replication.factor": rf,
                "offset.storage.replication.factor": rf,
                "status.storage.replication.factor": rf,
                "key.converter": connectors.JSON_CONVERTER,
                "value.converter": connectors.JSON_CONVERTER,
                "key.converter.schemas.enable": False,
                "value.converter.schemas.enable": False,
                "exactly.once.source.support": "enabled",
                # ${env:NAME} in a connector config is read from the worker's environment, so the
                # configs topic never holds the password.
                "config.providers": "env",
                "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
            },
            "resources": env.resources["connect"].to_k8s(),
            "build": {
                "output": {"type": "docker", "image": "%s/dp-connect-debezium:%s" % (env.image_registry, version)},
                "plugins": [{
                    "name": "debezium-connector-postgres",
                    "artifacts": [{"type": "maven", "group": "io.debezium", "artifact": "debezium-connector-postgres",
                                   "version": version}],
                }],
            },
            "template": {
                "pod": {"metadata": {"labels": labels("connect", env)}},
                "connectContainer": {"env": [secret_env("DP_POSTGRES_CDC_PASSWORD", "dp-postgres-cdc", "password")]},
            },
        },
    }
    connect["metadata"]["annotations"] = {"strimzi.io/use-connector-resources": "true"}
    source = connectors.PostgresSource(host=postgres_host(), port=str(port("postgres")), database=DATABASE,
                                       user=migrate.CDC_ROLE, password="${env:DP_POSTGRES_CDC_PASSWORD}")
    cfg = connectors.iot_readings_cdc(source)
    connector_class = cfg.pop("connector.class")
    tasks = int(cfg.pop("tasks.max"))
    connector = {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaConnector",
        "metadata": meta(connectors.IOT_READINGS_CDC, env, "connect",
                         labels={**labels("connect", env), "strimzi.io/cluster": CONNECT_CLUSTER}),
        "spec": {"class": connector_class, "tasksMax": tasks, "config": cfg},
    }
    return [connect, connector]


# --- PostgreSQL (CloudNativePG) -------------------------------------------------------------------


def postgres_objects(env: Environment, images: Resolver) -> List[Obj]:
    storage: Obj = {"size": env.postgres_storage}
    if env.storage_class:
        storage["storageClass"] = env.storage_class
    return [{
        "apiVersion": "postgresql.cnpg.io/v1",
        "kind": "Cluster",
        "metadata": meta(POSTGRES_CLUSTER, env, "postgres"),
        "spec": {
            "instances": env.postgres_instances,
            "imageName": images.third_party("postgres"),
            # The migrations (deploy/postgres/migrate.py) set role passwords and create the
            # publication: they run as the superuser, whose Secret the operator generates
            # (dp-postgres-superuser), once per schema change.
            "enableSuperuserAccess": True,
            "storage": storage,
            "resources": env.resources["postgres"].to_k8s(),
            "inheritedMetadata": {"labels": labels("postgres", env)},
            # Logical decoding for Debezium (CloudNativePG runs wal_level=logical already).
            "postgresql": {"parameters": {"max_replication_slots": "10", "max_wal_senders": "10"}},
            "bootstrap": {"initdb": {"database": DATABASE, "owner": migrate.APP_ROLE,
                                     "secret": {"name": "dp-postgres-app"}}},
            "managed": {"roles": [{"name": migrate.CDC_ROLE, "ensure": "present", "login": True, "replication": True,
                                   "passwordSecret": {"name": "dp-postgres-cdc"}}]},
        },
    }]


# --- ClickHouse -----------------------------------------------------------------------------------


def pvc_template(name: str, size: str, env: Environment) -> Obj:
    spec: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if env.storage_class:
        spec["storageClassName"] = env.storage_class
    return {"metadata": {"name": name}, "spec": spec}


def clickhouse_objects(env: Environment, images: Resolver) -> List[Obj]:
    ports = {"http": port("clickhouse"), "native": port("clickhouse", "native")}
    container = {
        "name": "clickhouse",
        "image": images.third_party("clickhouse"),
        "env": [
            env_var("CLICKHOUSE_DB", DATABASE),
            env_var("CLICKHOUSE_USER", CLICKHOUSE_USER),
            secret_env("CLICKHOUSE_PASSWORD", "dp-clickhouse", "password"),
            env_var("CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT", 0),
        ],
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()],
        "livenessProbe": http_probe("/ping", "http", delay=10),
        "readinessProbe": http_probe("/ping", "http", period=5),
        "resources": env.resources["clickhouse"].to_k8s(),
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/clickhouse"}],
    }
    return [
        service("clickhouse", env, ports),
        service("clickhouse", env, ports, headless=True, name="clickhouse-headless"),
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta("clickhouse", env),
            "spec": {
                "serviceName": "clickhouse-headless",
                "replicas": 1,
                "selector": {"matchLabels": selector("clickhouse")},
                "template": {
                    "metadata": {"labels": labels("clickhouse", env)},
                    "spec": {"securityContext": {"fsGroup": 101}, "containers": [container]},
                },
                "volumeClaimTemplates": [pvc_template("data", env.clickhouse_storage, env)],
            },
        },
        pdb("clickhouse", env),
    ]


# --- HDFS -----------------------------------------------------------------------------------------


def namenode_address() -> str:
    return "hdfs://hdfs-namenode-0.hdfs-namenode:%d" % port("hdfs_namenode")


def hadoop_site(properties: Mapping[str, Any]) -> str:
    rows = "".join("  <property><name>%s</name><value>%s</value></property>\n" % (k, v) for k, v in properties.items())
    return '<?xml version="1.0"?>\n<configuration>\n%s</configuration>\n' % rows


def hdfs_objects(env: Environment, images: Resolver) -> List[Obj]:
    nn_ports = {"rpc": port("hdfs_namenode"), "http": port("hdfs_namenode", "http")}
    dn_ports = {"data": port("hdfs_datanode"), "http": port("hdfs_datanode", "http"), "ipc": port("hdfs_datanode", "ipc")}
    conf = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(HDFS_CONFIG, env, "hdfs_namenode"),
        "data": {
            "core-site.xml": hadoop_site({"fs.defaultFS": namenode_address()}),
            "hdfs-site.xml": hadoop_site({
                "dfs.replication": env.hdfs_replication,
                "dfs.namenode.name.dir": "/data/name",
                "dfs.datanode.data.dir": "/data/blocks",
                "dfs.webhdfs.enabled": "true",
                "dfs.namenode.rpc-bind-host": "0.0.0.0",
                "dfs.namenode.http-bind-host": "0.0.0.0",
                "dfs.namenode.datanode.registration.ip-hostname-check": "false",
                "dfs.datanode.address": "0.0.0.0:%d" % dn_ports["data"],
                "dfs.datanode.http.address": "0.0.0.0:%d" % dn_ports["http"],
                "dfs.datanode.ipc.address": "0.0.0.0:%d" % dn_ports["ipc"],
                "dfs.namenode.http-address": "0.0.0.0:%d" % nn_ports["http"],
            }),
        },
    }

    def statefulset(component: str, replicas: int, command: str, ports: Mapping[str, int], liveness: Obj,
                    readiness: Obj) -> Obj:
        name = service_host(component)
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta(name, env, component),
            "spec": {
                "serviceName": name,
                "replicas": replicas,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector(component)},
                "template": {
                    "metadata": {"labels": labels(component, env)},
                    "spec": {
                        "securityContext": {"fsGroup": 1000, "runAsUser": 1000, "runAsNonRoot": True},
                        "containers": [{
                            "name": name,
                            "image": images.third_party("hadoop"),
                            "command": ["/bin/bash", "-c", command],
                            "env": [env_var("HADOOP_CONF_DIR", HADOOP_CONF_DIR)],
                            "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()],
                            "livenessProbe": liveness,
                            "readinessProbe": readiness,
                            "resources": env.resources[component].to_k8s(),
                            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                             {"name": "conf", "mountPath": HADOOP_CONF_DIR, "readOnly": True}],
                        }],
                        "volumes": [{"name": "conf", "configMap": {"name": HDFS_CONFIG}}],
                    },
                },
                "volumeClaimTemplates": [pvc_template("data", env.hdfs_storage, env)],
            },
        }

    tcp = lambda p: {"tcpSocket": {"port": p}, "periodSeconds": 10, "failureThreshold": 3,  # noqa: E731
                     "initialDelaySeconds": 15, "timeoutSeconds": 3}
    return [
        conf,
        service("hdfs_namenode", env, nn_ports, headless=True),
        statefulset("hdfs_namenode", 1,
                    # Formats an empty name directory on the first start only (-nonInteractive keeps existing data).
                    "test -d /data/name/current || hdfs namenode -format -nonInteractive; exec hdfs namenode",
                    nn_ports, tcp("rpc"), http_probe("/jmx?qry=Hadoop:service=NameNode,name=NameNodeStatus", "http")),
        service("hdfs_datanode", env, dn_ports, headless=True),
        statefulset("hdfs_datanode", env.hdfs_datanodes, "exec hdfs datanode", dn_ports, tcp("data"),
                    http_probe("/jmx?qry=Hadoop:service=DataNode,name=DataNodeInfo", "http")),
        pdb("hdfs_datanode", env),
    ]


# --- Flink (Flink Kubernetes Operator) ------------------------------------------------------------


def service_account_with_role(name: str, env: Environment, rules: List[Obj]) -> List[Obj]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, env)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta(name, env), "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta(name, env),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": env.namespace}]},
    ]


def flink_objects(env: Environment, images: Resolver) -> List[Obj]:
    parallelism = env.flink_taskmanagers * env.flink_slots
    jm, tm = env.resources["flink_jobmanager"], env.resources["flink_taskmanager"]
    objs = service_account_with_role("flink", env, [
        {"apiGroups": [""], "resources": ["pods", "configmaps", "services"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/finalizers"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    ])
    pvc_spec: Obj = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": env.flink_checkpoint_storage}}}
    if env.storage_class:
        pvc_spec["storageClassName"] = env.storage_class
    objs.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("flink-checkpoints", env, "flink"),
                 "spec": pvc_spec})
    objs.append({
        "apiVersion": "flink.apache.org/v1beta1",
        "kind": "FlinkDeployment",
        "metadata": meta("behaviour-metrics", env, "flink"),
        "spec": {
            "image": images.ours("behaviour_metrics"),
            "imagePullPolicy": "IfNotPresent",
            # Flink 2.3 runtime; operator >= 1.11 (see deploy/k8s/schemas/README.md).
            "flinkVersion": "v2_0",
            "serviceAccount": "flink",
            "flinkConfiguration": {
                "taskmanager.numberOfTaskSlots": str(env.flink_slots),
                "kubernetes.operator.job.upgrade.last-state-fallback.enabled": "true",
                "high-availability.type": "kubernetes",
                "high-availability.storageDir": "file://%s/ha" % FLINK_CHECKPOINTS,
                # The connector jars sit in lib/ and in the job's pipeline.jars: the parent's copy
                # must win (as in the image's own conf and deploy/flink).
                "classloader.resolve-order": "parent-first",
            },
            "podTemplate": {
                "metadata": {"labels": labels("flink", env)},
                "spec": {
                    "containers": [{"name": "flink-main-container",
                                    "volumeMounts": [{"name": "flink-data", "mountPath": FLINK_CHECKPOINTS}]}],
                    "volumes": [{"name": "flink-data", "persistentVolumeClaim": {"claimName": "flink-checkpoints"}}],
                },
            },
            "jobManager": {"replicas": 1, "resource": {"cpu": _cpu(jm.cpu), "memory": _mem(jm.memory)}},
            "taskManager": {"replicas": env.flink_taskmanagers, "resource": {"cpu": _cpu(tm.cpu), "memory": _mem(tm.memory)}},
            "job": {
                # PyFlink in application mode: Flink's Python driver runs the job's main module.
                "jarURI": FLINK_PYTHON_JAR,
                "entryClass": "org.apache.flink.client.python.PythonDriver",
                "args": ["-py", "%s/jobs/behaviour/metrics/main.py" % FLINK_JOB_ROOT,
                         "--bootstrap", kafka_bootstrap(),
                         "--state-dir", "%s/behaviour-metrics" % FLINK_CHECKPOINTS,
                         "--parallelism", str(parallelism)],
                "parallelism": parallelism,
                "upgradeMode": "last-state",
                "state": "running",
            },
        },
    })
    return objs


def _cpu(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _mem(text: str) -> str:
    return text.replace("Mi", "m").replace("Gi", "g")


# --- Spark (Spark Operator) -----------------------------------------------------------------------


def spark_objects(env: Environment, images: Resolver) -> List[Obj]:
    objs = service_account_with_role("spark", env, [
        {"apiGroups": [""], "resources": ["pods", "services", "configmaps", "persistentvolumeclaims"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]},
    ])
    driver, executor = env.resources["spark_driver"], env.resources["spark_executor"]
    dsn = "host=%s port=%d dbname=%s user=%s password=$(DP_POSTGRES_APP_PASSWORD)" % (
        postgres_host(), port("postgres"), DATABASE, migrate.APP_ROLE)
    objs.append({
        "apiVersion": "sparkoperator.k8s.io/v1beta2",
        "kind": "SparkApplication",
        "metadata": meta("commerce-marts", env, "spark"),
        "spec": {
            "type": "Python",
            "pythonVersion": "3",
            "mode": "cluster",
            "image": images.ours("commerce_marts"),
            "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": "local://%s/jobs/commerce/marts/main.py" % APP_ROOT,
            # The job's flags (jobs/commerce/marts/config.py); the day is filled in by Airflow.
            "arguments": ["--day", COMMERCE_DAY,
                          "--raw-root", "%s/raw/commerce/events" % namenode_address()],
            "sparkVersion": SPARK_VERSION,
            "restartPolicy": {"type": "OnFailure", "onFailureRetries": 2, "onFailureRetryInterval": 30,
                              "onSubmissionFailureRetries": 2, "onSubmissionFailureRetryInterval": 30},
            "driver": {
                "cores": max(1, int(_cpu(driver.cpu) + 0.999)),
                "memory": _mem(driver.memory),
                "serviceAccount": "spark",
                "labels": labels("spark", env),
                "env": [secret_env("DP_POSTGRES_APP_PASSWORD", "dp-postgres-app", "password"),
                        env_var("DP_COMMERCE_POSTGRES_DSN", dsn)],
            },
            "executor": {
                "instances": env.spark_executors,
                "cores": max(1, int(_cpu(executor.cpu) + 0.999)),
                "memory": _mem(executor.memory),
                "labels": labels("spark", env),
            },
        },
    })
    return objs


# --- network policies -----------------------------------------------------------------------------


def component_ports(component: str) -> Dict[str, int]:
    return {p.name: p.number for p in config.PORTS[component]}


def network_policies(env: Environment, workloads: Mapping[str, Mapping[str, int]]) -> List[Obj]:
    """One policy per component we run pods for (Kafka's come from Strimzi's listener peers):
    ingress only from the declared flows, Prometheus, and (for public components) anywhere."""
    policies = []
    for component, ports in workloads.items():
        rules = []
        for flow in config.FLOWS:
            if flow.target != component:
                continue
            number = component_ports(component)[flow.port]
            rules.append({"from": [{"podSelector": {"matchLabels": selector(flow.source)}}],
                          "ports": [{"protocol": "TCP", "port": number}]})
        if component in config.PUBLIC:
            rules.append({"ports": [{"protocol": "TCP", "port": component_ports(component)["port"]}]})
        metrics = [p for name, p in ports.items() if name in ("metrics", "http")]
        if metrics:
            rules.append({"from": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}],
                "ports": [{"protocol": "TCP", "port": p} for p in metrics]})
        if component == "postgres":
            rules.append({"from": [{"podSelector": {"matchLabels": {"cnpg.io/cluster": POSTGRES_CLUSTER}}}],
                          "ports": [{"protocol": "TCP", "port": port("postgres")}]})
            rules.append({"from": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": CNPG_OPERATOR_NAMESPACE}}}],
                "ports": [{"protocol": "TCP", "port": CNPG_STATUS_PORT}]})
        if component in ("hdfs_namenode", "hdfs_datanode"):
            # Blocks move between DataNodes (re-replication) and DataNodes talk to each other's IPC port.
            rules.append({"from": [{"podSelector": {"matchLabels": selector("hdfs_datanode")}}],
                          "ports": [{"protocol": "TCP", "port": p} for p in ports.values()]})
        policies.append({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(service_host(component), env, component),
            "spec": {"podSelector": {"matchLabels": selector(component)}, "policyTypes": ["Ingress"], "ingress": rules},
        })
    return policies


# --- Helm values ----------------------------------------------------------------------------------


def _split_image(reference: str) -> Dict[str, str]:
    repository, _, tag = reference.rpartition(":")
    return {"repository": repository, "tag": tag}


def airflow_values(env: Environment, images: Resolver) -> Obj:
    """Values for the Apache Airflow Helm chart: KubernetesExecutor, metadata in our PostgreSQL."""
    return {
        "airflowVersion": "3.3.2",
        "executor": "KubernetesExecutor",
        "defaultAirflowRepository": _split_image(images.third_party("airflow"))["repository"],
        "defaultAirflowTag": _split_image(images.third_party("airflow"))["tag"],
        "labels": labels("airflow", env),
        "postgresql": {"enabled": False},
        "data": {"metadataSecretName": "dp-airflow"},
        "fernetKeySecretName": "dp-airflow",
        "apiSecretKeySecretName": "dp-airflow",
        "jwtSecretName": "dp-airflow",
        "env": [
            {"name": "DP_COMMERCE_RAW_ROOT", "value": "%s/raw/commerce/events" % namenode_address()},
            {"name": "DP_HDFS_WEBHDFS", "value": "http://hdfs-namenode-0.hdfs-namenode:%d" % port("hdfs_namenode", "http")},
            {"name": "DP_KUBERNETES_NAMESPACE", "value": env.namespace},
        ],
        "dags": {"persistence": {"enabled": False}, "gitSync": {"enabled": False}},
    }


def superset_values(env: Environment, images: Resolver) -> Obj:
    """Values for the Apache Superset Helm chart: metadata and marts in our PostgreSQL.

    The chart's own env Secret carries the non-secret connection settings; the password and the
    Flask secret key come from dp-superset (explicit env wins over the chart's envFrom). No admin
    user is created by the chart (its password would sit in the values): see README.md.
    """
    image = _split_image(images.third_party("superset"))
    return {
        "image": {"repository": image["repository"], "tag": image["tag"], "pullPolicy": "IfNotPresent"},
        "extraLabels": labels("superset", env),
        "postgresql": {"enabled": False},
        "supersetNode": {"connections": {"db_host": postgres_host(), "db_port": str(port("postgres")),
                                         "db_user": migrate.APP_ROLE, "db_name": "superset"}},
        "extraEnvRaw": [
            secret_env("DB_PASS", "dp-superset", "DB_PASS"),
            secret_env("SUPERSET_SECRET_KEY", "dp-superset", "SUPERSET_SECRET_KEY"),
        ],
        "init": {"createAdmin": False, "loadExamples": False},
    }


# --- the whole bundle -----------------------------------------------------------------------------


def find_repo_root(start: pathlib.Path) -> pathlib.Path:
    for candidate in [start, *start.parents]:
        if (candidate / "third_party/jvm/connect/debezium/artifacts.txt").exists():
            return candidate
    raise config.ConfigError("cannot find the repository (third_party/jvm/connect/debezium/artifacts.txt) above %s"
                             % start)


def build(env: Environment, images: Resolver, repo_root: pathlib.Path) -> Bundle:
    objs: List[Obj] = [{"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": env.namespace, "labels": {"app.kubernetes.io/part-of": PART_OF,
                                                                       "app.kubernetes.io/instance": env.name}}}]
    objs += kafka_objects(env)
    objs += connect_objects(env, repo_root)
    objs += postgres_objects(env, images)
    objs += clickhouse_objects(env, images)
    objs += hdfs_objects(env, images)
    workload_ports: Dict[str, Dict[str, int]] = {}
    for spec in our_services(env, images):
        objs.append(deployment(spec, env))
        if spec.service:
            objs.append(service(spec.component, env, spec.container_ports))
            objs.append(pdb(spec.component, env))
        workload_ports[spec.component] = dict(spec.container_ports)
    objs += flink_objects(env, images)
    objs += spark_objects(env, images)
    for component in ("clickhouse", "hdfs_namenode", "hdfs_datanode", "postgres"):
        workload_ports[component] = component_ports(component)
    objs += network_policies(env, {k: v for k, v in workload_ports.items() if v})
    return Bundle(env=env, objects=objs, helm_values={"airflow": airflow_values(env, images),
                                                      "superset": superset_values(env, images)})


def walk(node: Any, path: str = "") -> Iterable[tuple]:
    """(path, key, value) for every mapping entry below `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, "%s.%s" % (path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, "%s[%d]" % (path, i))
