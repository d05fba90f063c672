"""Every rendered object against the schemas in deploy/k8s/schemas, and the references between objects."""

from __future__ import annotations

import ast
import copy
import functools
import json
import pathlib
import re
from typing import Any, Dict, Iterable, List, Mapping, Set

import pytest

from datapipelines import topics
from deploy.connect import connectors
from deploy.k8s import config, images, manifests
from deploy.k8s.validate import Validator

RUNFILES = pathlib.Path(__file__).absolute().parents[2]
ENVS = sorted(config.ENVIRONMENTS)
DIGEST = "sha256:" + "ab" * 32

# Sources whose use of the topic registry the cluster must satisfy, per workload.
TOPIC_USERS = {
    "ingest": ["services/ingest/validation.py"],
    "analytics": ["services/analytics/sink.py"],
    "aggregator": ["jobs/iot/aggregator/io.py", "jobs/iot/aggregator/state.py"],
    "connect": ["deploy/connect/connectors.py"],
}


@functools.lru_cache(maxsize=None)
def validator() -> Validator:
    return Validator(RUNFILES / "deploy/k8s/schemas")


@functools.lru_cache(maxsize=None)
def bundle(env_name: str, digests: bool = True) -> manifests.Bundle:
    resolver = images.Resolver(registry="registry.example.invalid/dp",
                               digests={name: DIGEST for name in images.OURS} if digests else None)
    return manifests.build(config.environment(env_name), resolver, RUNFILES)


def objects(env_name: str, kind: str = None) -> List[Dict[str, Any]]:
    return [o for o in bundle(env_name).objects if kind is None or o["kind"] == kind]


def pod_templates(env_name: str) -> List[Dict[str, Any]]:
    """(labels, pod spec) of every pod the bundle makes, ours and the operators' (by their templates)."""
    pods = []
    for o in bundle(env_name).objects:
        spec = o.get("spec", {})
        if o["kind"] in ("Deployment", "StatefulSet"):
            pods.append({"labels": spec["template"]["metadata"]["labels"], "spec": spec["template"]["spec"]})
        elif o["kind"] == "FlinkDeployment":
            pods.append({"labels": spec["podTemplate"]["metadata"]["labels"], "spec": spec["podTemplate"]["spec"]})
        elif o["kind"] == "SparkApplication":
            pods.append({"labels": spec["driver"]["labels"], "spec": {}})
            pods.append({"labels": spec["executor"]["labels"], "spec": {}})
        elif o["kind"] in ("KafkaConnect", "KafkaNodePool"):
            pods.append({"labels": spec["template"]["pod"]["metadata"]["labels"], "spec": {}})
        elif o["kind"] == "Cluster":
            pods.append({"labels": {**spec["inheritedMetadata"]["labels"], "cnpg.io/cluster": o["metadata"]["name"]},
                         "spec": {}})
    for chart, values in bundle(env_name).helm_values.items():
        pods.append({"labels": values.get("labels") or values.get("extraLabels"), "spec": {}})
    return pods


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pods_matching(env_name: str, selector: Mapping[str, str]) -> List[Dict[str, Any]]:
    return [p for p in pod_templates(env_name) if matches(selector, p["labels"])]


# --- schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_name", ENVS)
def test_every_object_is_valid_against_its_schema(env_name):
    problems = [e for o in bundle(env_name).objects for e in validator().errors(o)]
    assert not problems, "\n".join(problems)
    kinds = bundle(env_name).kinds()
    for expected in ("kafka.strimzi.io/v1/Kafka", "kafka.strimzi.io/v1/KafkaTopic", "kafka.strimzi.io/v1/KafkaConnect",
                     "kafka.strimzi.io/v1/KafkaConnector", "flink.apache.org/v1beta1/FlinkDeployment",
                     "sparkoperator.k8s.io/v1beta2/SparkApplication", "postgresql.cnpg.io/v1/Cluster",
                     "apps/v1/Deployment", "apps/v1/StatefulSet", "policy/v1/PodDisruptionBudget",
                     "networking.k8s.io/v1/NetworkPolicy"):
        assert expected in kinds


def test_the_validator_rejects_what_the_cluster_would():
    deployment = copy.deepcopy(objects("staging", "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert any("livenesProbe" in e for e in validator().errors(deployment))
    topic = copy.deepcopy(objects("staging", "KafkaTopic")[0])
    topic["spec"]["partitions"] = "three"
    assert validator().errors(topic)
    flink = copy.deepcopy(objects("staging", "FlinkDeployment")[0])
    flink["spec"]["flinkVersion"] = "v9_9"
    assert validator().errors(flink)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema" in validator().errors(unknown)[0]


@pytest.mark.parametrize("env_name", ENVS)
def test_objects_live_in_the_environments_namespace(env_name):
    env = config.environment(env_name)
    names = set()
    for o in bundle(env_name).objects:
        key = (o["kind"], o["metadata"]["name"])
        assert key not in names, "duplicate %s %s" % key
        names.add(key)
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == env.namespace
            assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == manifests.PART_OF
    assert bundle(env_name).objects[0]["kind"] == "Namespace"


# --- topics ---------------------------------------------------------------------------------------


def topic_names_used(sources: Iterable[str]) -> Set[str]:
    """Topics a workload's code names through the registry: topics.X, dead letters of those, topics.get("...")."""
    used: Set[str] = set()
    for source in sources:
        tree = ast.parse((RUNFILES / source).read_text())
        file_topics = set()
        dynamic_dlq = False
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "topics"
                    and isinstance(getattr(topics, node.attr, None), topics.Topic)):
                file_topics.add(getattr(topics, node.attr).name)
            if isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func in ("dead_letter_topic", "dead_letters_of") and node.args:
                    arg = node.args[0]
                    if isinstance(arg, ast.Attribute) and isinstance(getattr(topics, arg.attr, None), topics.Topic):
                        used.add(getattr(topics, arg.attr).name + ".dlq")
                if func == "get" and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "topics":
                    arg = node.args[0] if node.args else None
                    if isinstance(arg, ast.Constant):
                        used.add(arg.value)
                    elif isinstance(arg, ast.BinOp) and isinstance(arg.right, ast.Constant) and arg.right.value == ".dlq":
                        dynamic_dlq = True
        used |= file_topics
        if dynamic_dlq:
            used |= {name + ".dlq" for name in file_topics}
    return used


def kafka_topic_names(env_name: str) -> Dict[str, Dict[str, Any]]:
    return {o["spec"]["topicName"]: o for o in objects(env_name, "KafkaTopic")}


@pytest.mark.parametrize("workload", sorted(TOPIC_USERS))
def test_every_topic_a_workload_uses_exists_as_a_kafka_topic(workload):
    used = topic_names_used(TOPIC_USERS[workload])
    assert used, "found no topic use in %s" % TOPIC_USERS[workload]
    for env_name in ENVS:
        missing = used - set(kafka_topic_names(env_name))
        assert not missing, "%s uses %s, not rendered as KafkaTopic in %s" % (workload, sorted(missing), env_name)


def test_topic_scan_sees_dead_letters():
    assert "behaviour.events.v1.dlq" in topic_names_used(TOPIC_USERS["ingest"])
    assert "iot.cdc.readings.dlq" in topic_names_used(TOPIC_USERS["aggregator"])


@pytest.mark.parametrize("env_name", ENVS)
def test_kafka_topics_follow_the_registry(env_name):
    env = config.environment(env_name)
    rendered = kafka_topic_names(env_name)
    assert set(rendered) == {t.name for t in topics.ALL}
    for topic in topics.ALL:
        spec = rendered[topic.name]["spec"]
        assert spec["partitions"] == topic.partitions
        assert spec["replicas"] == env.kafka_replication <= env.kafka_brokers
        assert spec["config"]["cleanup.policy"] == topic.cleanup_policy
        assert spec["config"]["retention.ms"] == str(topic.retention_ms)
        assert int(spec["config"]["min.insync.replicas"]) <= spec["replicas"]
        assert rendered[topic.name]["metadata"]["labels"]["strimzi.io/cluster"] == manifests.KAFKA_CLUSTER


@pytest.mark.parametrize("env_name", ENVS)
def test_connect_uses_registry_topics_and_the_connector_config(env_name):
    connect = objects(env_name, "KafkaConnect")[0]["spec"]
    rendered = kafka_topic_names(env_name)
    for key in ("configStorageTopic", "offsetStorageTopic", "statusStorageTopic"):
        assert connect[key] in rendered
    connector = objects(env_name, "KafkaConnector")[0]
    assert connector["metadata"]["labels"]["strimzi.io/cluster"] == objects(env_name, "KafkaConnect")[0]["metadata"]["name"]
    cfg = connector["spec"]["config"]
    assert cfg["transforms.route.replacement"] in rendered
    assert cfg["topic.heartbeat.prefix"] + "." + connectors.TOPIC_PREFIX in rendered
    expected = connectors.iot_readings_cdc(connectors.PostgresSource(
        host=manifests.postgres_host(), port=str(config.port("postgres")), database=manifests.DATABASE,
        user="dp_cdc", password="${env:DP_POSTGRES_CDC_PASSWORD}"))
    assert connector["spec"]["class"] == expected.pop("connector.class")
    assert connector["spec"]["tasksMax"] == int(expected.pop("tasks.max"))
    assert cfg == expected
    plugin = connect["build"]["plugins"][0]["artifacts"][0]
    artifacts = (RUNFILES / "third_party/jvm/connect/debezium/artifacts.txt").read_text()
    assert "io.debezium:debezium-connector-postgres:%s" % plugin["version"] in artifacts


# --- secrets --------------------------------------------------------------------------------------


def secret_references(node: Any) -> List[tuple]:
    """(secret name, key or None) for every reference to a Secret below `node`."""
    refs = []
    for _path, key, value in manifests.walk(node):
        if key == "secretKeyRef":
            refs.append((value["name"], value["key"]))
        elif key == "secret" and isinstance(value, dict) and "secretName" in value:
            refs.append((value["secretName"], None))
        elif key in ("passwordSecret",) or (key == "secret" and isinstance(value, dict) and "name" in value):
            refs.append((value["name"], None))
        elif isinstance(value, str) and (key.endswith("SecretName") or key in ("envFromSecret", "jwtSecretName")):
            refs.append((value, None))
    return refs


@pytest.mark.parametrize("env_name", ENVS)
def test_secrets_are_referenced_and_declared_never_inlined(env_name):
    b = bundle(env_name)
    refs = secret_references(b.objects) + secret_references(b.helm_values)
    assert refs
    for name, key in refs:
        assert name in config.SECRET_NAMES, "secret %s is referenced but not declared in config.SECRETS" % name
        if key is not None:
            assert key in config.SECRET_NAMES[name].keys, "secret %s has no declared key %s" % (name, key)
    assert {name for name, _ in refs} == set(config.SECRET_NAMES), "declared secrets nobody uses"
    assert not [o for o in b.objects if o["kind"] == "Secret"]
    for _path, key, value in manifests.walk(b.objects):
        if key == "env":
            for var in value:
                if re.search(r"PASSWORD|SECRET|API_KEY|TOKEN", var["name"]) and not var["name"].endswith("_FILE"):
                    assert "valueFrom" in var, "%s has a literal value" % var["name"]
        if isinstance(value, str):
            assert not re.search(r"password=(?!\$\(|\$\{)", value), "a literal password in %r" % value
            assert "dp-app-local" not in value and "dp-cdc-local" not in value


# --- services, probes, policies -------------------------------------------------------------------


@pytest.mark.parametrize("env_name", ENVS)
def test_services_and_budgets_select_existing_pods_and_ports(env_name):
    for svc in objects(env_name, "Service"):
        pods = pods_matching(env_name, svc["spec"]["selector"])
        assert pods, "Service %s selects no pod" % svc["metadata"]["name"]
        names = {p["name"] for pod in pods for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in names, "Service %s targets %s, pods have %s" % (svc["metadata"]["name"],
                                                                                        p["targetPort"], names)
    for budget in objects(env_name, "PodDisruptionBudget"):
        assert pods_matching(env_name, budget["spec"]["selector"]["matchLabels"]), budget["metadata"]["name"]


@pytest.mark.parametrize("env_name", ENVS)
def test_probes_use_declared_ports_and_services_listen_beyond_loopback(env_name):
    for o in objects(env_name, "Deployment") + objects(env_name, "StatefulSet"):
        for c in o["spec"]["template"]["spec"]["containers"]:
            ports = {p["name"] for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe_kind in ("livenessProbe", "readinessProbe"):
                probe = c.get(probe_kind)
                if probe is None:
                    assert not c.get("ports"), "%s serves ports but has no %s" % (c["name"], probe_kind)
                    continue
                handler = probe.get("httpGet") or probe.get("grpc") or probe.get("tcpSocket")
                assert handler["port"] in ports, "%s %s port %s" % (c["name"], probe_kind, handler["port"])
            hosts = [e for e in c.get("env", []) if re.fullmatch(r"DP_\w+_HOST", e["name"])]
            for e in hosts:
                assert e["value"] == "0.0.0.0", "%s binds %s=%s: probes and peers could not reach it" % (
                    c["name"], e["name"], e["value"])
            if o["metadata"]["labels"]["app.kubernetes.io/name"] in ("ingest", "ws_gateway", "analytics", "aggregator"):
                assert hosts, "%s sets no listen host" % c["name"]
                assert "limits" in c["resources"] and "requests" in c["resources"]


def test_probes_match_the_services_health_endpoints():
    deployments = {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]
                   for o in objects("staging", "Deployment")}
    assert deployments["ingest"]["readinessProbe"]["grpc"]["service"] == "datapipelines.ingest.v1.IngestService"
    assert deployments["ingest"]["livenessProbe"]["grpc"]["port"] == config.port("ingest")
    assert deployments["ws-gateway"]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployments["analytics"]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert deployments["analytics"]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployments["aggregator"]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # The paths exist in the services' code.
    assert '"/readyz"' in (RUNFILES / "services/analytics/http_api.py").read_text()
    assert '"/healthz"' in (RUNFILES / "services/ws_gateway/server.py").read_text()


def policy_allows(policies: List[Dict[str, Any]], target_pod: Mapping[str, str], source_pod: Mapping[str, str],
                  port: int) -> bool:
    for policy in policies:
        if not matches(policy["spec"]["podSelector"]["matchLabels"], target_pod):
            continue
        for rule in policy["spec"]["ingress"]:
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                if "podSelector" in peer and "namespaceSelector" not in peer and matches(
                        peer["podSelector"].get("matchLabels", {}), source_pod):
                    return True
    return False


@pytest.mark.parametrize("env_name", ENVS)
def test_network_policies_allow_every_declared_flow(env_name):
    policies = objects(env_name, "NetworkPolicy")
    kafka = objects(env_name, "Kafka")[0]["spec"]["kafka"]["listeners"][0]
    for flow in config.FLOWS:
        sources = pods_matching(env_name, manifests.selector(flow.source))
        assert sources, "flow source %s has no pods with its label" % flow.source
        if flow.target == "kafka":
            peers = [p["podSelector"]["matchLabels"] for p in kafka["networkPolicyPeers"]]
            assert any(matches(peer, s["labels"]) for peer in peers for s in sources), flow
            continue
        targets = pods_matching(env_name, manifests.selector(flow.target))
        assert targets, "flow target %s has no pods" % flow.target
        number = config.port(flow.target, flow.port)
        for target in targets:
            assert policy_allows(policies, target["labels"], sources[0]["labels"], number), flow


@pytest.mark.parametrize("env_name", ENVS)
def test_network_policies_are_not_wide_open_and_select_pods(env_name):
    policies = objects(env_name, "NetworkPolicy")
    for policy in policies:
        assert pods_matching(env_name, policy["spec"]["podSelector"]["matchLabels"]), policy["metadata"]["name"]
    ingest = next(p for p in pod_templates(env_name) if p["labels"].get(manifests.NAME_LABEL) == "ingest")
    outsider = {manifests.NAME_LABEL: "superset"}
    assert not policy_allows(policies, ingest["labels"], outsider, config.port("ingest"))
    clickhouse = next(p for p in pod_templates(env_name) if p["labels"].get(manifests.NAME_LABEL) == "clickhouse")
    assert not policy_allows(policies, clickhouse["labels"], {manifests.NAME_LABEL: "ws_gateway"}, config.port("clickhouse"))


# --- images ---------------------------------------------------------------------------------------


def image_references(b: manifests.Bundle) -> List[str]:
    refs = []
    for _path, key, value in manifests.walk(b.objects):
        if key in ("image", "imageName") and isinstance(value, str):
            refs.append(value)
    for values in b.helm_values.values():
        for _path, key, value in manifests.walk(values):
            if key in ("image",) and isinstance(value, dict) and "repository" in value:
                refs.append("%s:%s" % (value["repository"], value["tag"]))
        if "defaultAirflowRepository" in values:
            refs.append("%s:%s" % (values["defaultAirflowRepository"], values["defaultAirflowTag"]))
    return refs


@pytest.mark.parametrize("env_name", ENVS)
def test_every_image_resolves_through_the_digests_file_or_a_pinned_release(env_name):
    refs = image_references(bundle(env_name))
    ours = [r for r in refs if "@" in r]
    assert {r.split("/")[-1].split("@")[0] for r in ours} >= set(images.OURS.values()) - {"dp-connect-debezium"}
    for ref in refs:
        if "/dp-connect-debezium:" in ref:
            continue  # built by Strimzi from the Debezium Maven artifact, tagged with its version
        if "@" in ref:
            repository, digest = ref.split("@")
            assert digest == DIGEST and repository.rsplit("/", 1)[1] in images.OURS.values(), ref
        else:
            assert images.is_pinned_third_party(ref), "%s is neither our digest nor a pinned third-party image" % ref
            assert not ref.endswith(":latest")


def test_without_digests_our_images_fall_back_to_tags_with_a_warning():
    resolver = images.Resolver(registry="r.invalid", digests=None, tag="abc123")
    b = manifests.build(config.environment("dev"), resolver, RUNFILES)
    refs = image_references(b)
    assert "r.invalid/dp-ingest:abc123" in refs
    assert len(resolver.warnings) == len(images.OURS)
    assert all("not by digest" in w for w in resolver.warnings)


def test_digests_file_problems_are_clear(tmp_path):
    path = tmp_path / "digests.json"
    path.write_text(json.dumps({"images": {n: {"digest": DIGEST} for n in images.OURS}}))
    assert images.load_digests(path)["ingest"] == DIGEST
    path.write_text(json.dumps({"ingest": "sha256:1234"}))
    with pytest.raises(images.ImageError, match="64 hex"):
        images.load_digests(path)
    path.write_text(json.dumps({"ingest": DIGEST}))
    resolver = images.Resolver(registry="r", digests=images.load_digests(path))
    with pytest.raises(images.ImageError, match="no entry for image 'ws_gateway'"):
        manifests.build(config.environment("dev"), resolver, RUNFILES)
    path.write_text("not json")
    with pytest.raises(images.ImageError, match="cannot read"):
        images.load_digests(path)


# --- engines --------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_name", ENVS)
def test_engines_are_sized_by_the_environment(env_name):
    env = config.environment(env_name)
    pool = objects(env_name, "KafkaNodePool")[0]["spec"]
    assert pool["replicas"] == env.kafka_brokers and set(pool["roles"]) == {"broker", "controller"}
    kafka_cfg = objects(env_name, "Kafka")[0]["spec"]["kafka"]["config"]
    assert kafka_cfg["min.insync.replicas"] == env.kafka_min_isr
    assert kafka_cfg["auto.create.topics.enable"] is False
    datanodes = next(o for o in objects(env_name, "StatefulSet") if o["metadata"]["name"] == "hdfs-datanode")
    assert datanodes["spec"]["replicas"] == env.hdfs_datanodes
    hdfs_site = objects(env_name, "ConfigMap")[0]["data"]["hdfs-site.xml"]
    assert "<name>dfs.replication</name><value>%d</value>" % env.hdfs_replication in hdfs_site
    flink = objects(env_name, "FlinkDeployment")[0]["spec"]
    assert flink["taskManager"]["replicas"] == env.flink_taskmanagers
    assert flink["job"]["parallelism"] == env.flink_taskmanagers * env.flink_slots
    assert "--bootstrap" in flink["job"]["args"] and manifests.kafka_bootstrap() in flink["job"]["args"]
    spark = objects(env_name, "SparkApplication")[0]["spec"]
    assert spark["executor"]["instances"] == env.spark_executors
    assert spark["arguments"][:2] == ["--day", manifests.COMMERCE_DAY]
    assert objects(env_name, "Cluster")[0]["spec"]["instances"] == env.postgres_instances
