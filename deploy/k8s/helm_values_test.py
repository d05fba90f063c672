"""The Helm values rendered for Airflow and Superset: valid for the charts, secrets by reference,
database and HDFS addresses pointing at what the bundle runs.

The charts' own values.schema.json cannot be obtained through the package registries, so the
values are checked against schemas kept in deploy/k8s/helm/ (written from the charts'
documented values; every level closed, so a typo or an unknown key fails).
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
from typing import Any, Dict, List

import jsonschema
import pytest

from deploy.k8s import config, images, manifests

RUNFILES = pathlib.Path(__file__).absolute().parents[2]
SCHEMAS = pathlib.Path(__file__).absolute().parent / "helm"
ENVS = sorted(config.ENVIRONMENTS)
DIGEST = "sha256:" + "cd" * 32
# The Secret keys each chart reads from a Secret named in its values (the charts' documented contract).
AIRFLOW_SECRET_KEYS = {
    ("data", "metadataSecretName"): "connection",
    ("fernetKeySecretName",): "fernet-key",
    ("apiSecretKeySecretName",): "api-secret-key",
    ("jwtSecretName",): "jwt-secret",
}
# Values that would carry a secret in plain text; they must stay unset.
AIRFLOW_INLINE_SECRETS = [("fernetKey",), ("apiSecretKey",), ("data", "metadataConnection")]
SUPERSET_INLINE_SECRETS = [("supersetNode", "connections", "db_pass"), ("extraSecretEnv",)]


def bundle(env_name: str) -> manifests.Bundle:
    resolver = images.Resolver(registry="registry.example.invalid/dp", digests={n: DIGEST for n in images.OURS})
    return manifests.build(config.environment(env_name), resolver, RUNFILES)


def validator(chart: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / ("%s.values.schema.json" % chart)).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def errors(chart: str, values: Dict[str, Any]) -> List[str]:
    return ["%s: %s" % ("/".join(map(str, e.absolute_path)), e.message) for e in validator(chart).iter_errors(values)]


def get(values: Dict[str, Any], path) -> Any:
    for key in path:
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return values


@pytest.mark.parametrize("env_name", ENVS)
@pytest.mark.parametrize("chart", ["airflow", "superset"])
def test_values_are_valid_for_the_chart(env_name, chart):
    assert errors(chart, bundle(env_name).helm_values[chart]) == []


@pytest.mark.parametrize("chart, path, bad, message", [
    ("airflow", ("executr",), "KubernetesExecutor", "Additional properties"),
    ("airflow", ("executor",), "KubernetesExecuter", "does not match"),
    ("airflow", ("postgresql", "enabled"), "false", "is not of type 'boolean'"),
    ("airflow", ("env",), [{"name": "X", "valu": "1"}], "Additional properties"),
    ("superset", ("image", "pullPolicy"), "Sometimes", "is not one of"),
    ("superset", ("supersetNode", "connections", "db_port"), 5432, "is not of type 'string'"),
    ("superset", ("init", "createAdmn"), False, "Additional properties"),
])
def test_the_schemas_reject_what_the_chart_would_not_take(chart, path, bad, message):
    values = copy.deepcopy(bundle("staging").helm_values[chart])
    node = values
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = bad
    found = errors(chart, values)
    assert any(message in e for e in found), found


@pytest.mark.parametrize("env_name", ENVS)
def test_airflow_reads_every_secret_from_a_declared_secret_key(env_name):
    values = bundle(env_name).helm_values["airflow"]
    for path, key in AIRFLOW_SECRET_KEYS.items():
        name = get(values, path)
        assert name in config.SECRET_NAMES, "%s names %r, not a Secret of config.SECRETS" % (".".join(path), name)
        assert key in config.SECRET_NAMES[name].keys, "the chart reads key %r of %s (%s)" % (key, name, ".".join(path))
    for path in AIRFLOW_INLINE_SECRETS:
        assert get(values, path) is None, "%s would put a secret into the values" % ".".join(path)
    for var in values["env"]:
        assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY", var["name"]), "%s is a literal in the values" % var["name"]


@pytest.mark.parametrize("env_name", ENVS)
def test_superset_reads_its_password_and_key_from_declared_secrets(env_name):
    values = bundle(env_name).helm_values["superset"]
    for path in SUPERSET_INLINE_SECRETS:
        assert get(values, path) is None, "%s would put a secret into the values" % ".".join(path)
    from_secrets = {var["name"]: var["valueFrom"]["secretKeyRef"] for var in values["extraEnvRaw"]}
    assert {"DB_PASS", "SUPERSET_SECRET_KEY"} <= set(from_secrets)
    for var, ref in from_secrets.items():
        assert ref["name"] in config.SECRET_NAMES and ref["key"] in config.SECRET_NAMES[ref["name"]].keys, (var, ref)


def _service_names(objects) -> set:
    return {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}


@pytest.mark.parametrize("env_name", ENVS)
def test_database_and_hdfs_addresses_point_at_the_rendered_services(env_name):
    b = bundle(env_name)
    clusters = [o for o in b.objects if o["kind"] == "Cluster"]
    assert [c["metadata"]["name"] for c in clusters] == [manifests.POSTGRES_CLUSTER]
    # CloudNativePG serves a Cluster's primary as the Service <cluster>-rw.
    connections = b.helm_values["superset"]["supersetNode"]["connections"]
    assert connections["db_host"] == "%s-rw" % manifests.POSTGRES_CLUSTER
    assert int(connections["db_port"]) == manifests.port("postgres")
    assert connections["db_user"] == manifests.migrate.APP_ROLE
    services = _service_names(b.objects)
    env = {var["name"]: var["value"] for var in b.helm_values["airflow"]["env"]}
    for name, pattern in (("DP_COMMERCE_RAW_ROOT", r"^hdfs://([^/:]+):(\d+)/"),
                          ("DP_HDFS_WEBHDFS", r"^http://([^/:]+):(\d+)$")):
        host, number = re.match(pattern, env[name]).groups()
        # hdfs-namenode-0.hdfs-namenode: a pod of the StatefulSet behind the headless Service.
        pod, _, service = host.partition(".")
        assert service in services, "%s points at %s, not a rendered Service" % (name, host)
        statefulset = [o for o in b.objects if o["kind"] == "StatefulSet" and o["spec"].get("serviceName") == service]
        assert statefulset and pod.startswith(statefulset[0]["metadata"]["name"] + "-"), host
        ports = {p["port"] for o in b.objects if o["kind"] == "Service" and o["metadata"]["name"] == service
                 for p in o["spec"]["ports"]}
        assert int(number) in ports, "%s uses port %s, the Service %s has %s" % (name, number, service, ports)
    assert env["DP_KUBERNETES_NAMESPACE"] == b.env.namespace
