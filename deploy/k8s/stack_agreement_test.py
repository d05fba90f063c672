"""The local stack's port plan (deploy/stack/catalog.py) and HDFS's defaults agree with config.PORTS.

deploy/stack and deploy/hdfs keep their sources private to their packages, so this test reads
them from the workspace this test file lives in (the target is `local` and never cached).
"""

from __future__ import annotations

import pathlib

import pytest

from deploy.k8s import config, source_defaults


def workspace() -> pathlib.Path:
    # The runfiles entry is a symlink into the source tree; its target's folder is deploy/k8s.
    root = pathlib.Path(__file__).resolve().parents[2]
    if not (root / "deploy/stack/catalog.py").is_file():
        raise AssertionError("cannot find the workspace from %s (resolved to %s)" % (__file__, root))
    return root


def stack_ports():
    return source_defaults.stack_ports(workspace() / "deploy/stack/catalog.py")


def test_stack_catalog_is_read():
    services = stack_ports()
    assert {"kafka", "postgres", "connect", "analytics", "aggregator", "ingest"} <= set(services)
    assert ("port", "DP_KAFKA_PORT", 9092) in services["kafka"]


# Stack services whose ports are another component's of the plan: (stack service, port) -> (component, port).
SAME_PORTS = {
    ("hdfs", "port"): ("hdfs_namenode", "port"),
    ("hdfs", "http"): ("hdfs_namenode", "http"),
    ("hdfs", "datanode"): ("hdfs_datanode", "port"),
}
# Stack services the cluster does not run as a component of config.PORTS, and why.
LOCAL_ONLY = {
    "airflow": "Airflow runs from its Helm chart, on the chart's ports",
    "superset": "Superset runs from its Helm chart, on the chart's ports",
    "spark": "the local Spark Connect server; on a cluster the job is a SparkApplication",
    "flink": "the local session cluster; on a cluster the operator's JobManager (flink_jobmanager)",
}


@pytest.mark.parametrize("service", sorted(stack_ports()))
def test_local_stack_ports_agree_with_the_plan(service):
    if service in LOCAL_ONLY:
        pytest.skip("%s: %s" % (service, LOCAL_ONLY[service]))
    for name, env, default in stack_ports()[service]:
        component, port_name = SAME_PORTS.get((service, name), (service, name))
        assert component in config.PORTS, "deploy/stack has %s, config.PORTS does not" % service
        mine = {p.name: p for p in config.PORTS[component]}
        assert port_name in mine, "%s.%s is in deploy/stack but not in config.PORTS" % (service, name)
        where = "%s.%s (config %s.%s)" % (service, name, component, port_name)
        assert mine[port_name].number == default, "%s: stack %d, config %d" % (where, default, mine[port_name].number)
        assert mine[port_name].env in (env, None), "%s: stack reads %s, config says %s" % (where, env, mine[port_name].env)


def test_local_only_services_are_not_components_of_the_plan():
    assert not set(LOCAL_ONLY) & set(config.PORTS), "a LOCAL_ONLY service is a component of the plan"


def test_hdfs_defaults_agree_with_the_plan():
    cluster = workspace() / "deploy/hdfs/cluster.py"
    for p in config.PORTS["hdfs_namenode"]:
        assert source_defaults.default_for_env(cluster, p.env) == p.number, p


def test_every_port_with_a_variable_agrees_with_the_stack_or_its_component():
    stack = stack_ports()
    sources = {"ingest": "services/ingest/config.py", "ws_gateway": "services/ws_gateway/config.py",
               "analytics": "services/analytics/config.py", "aggregator": "jobs/iot/aggregator/config.py",
               "hdfs_namenode": "deploy/hdfs/cluster.py"}
    for component, ports in config.PORTS.items():
        for p in ports:
            if not p.env:
                continue
            in_stack = (p.name, p.env, p.number) in stack.get(component, ())
            source = sources.get(component)
            in_source = source is not None and source_defaults.default_for_env(workspace() / source, p.env) == p.number
            assert in_stack or in_source, "%s.%s (%s=%d) agrees with nothing" % (component, p.name, p.env, p.number)


def test_spark_application_arguments_are_flags_of_the_commerce_job():
    from deploy.k8s import images, manifests

    job_config = workspace() / "jobs/commerce/marts/config.py"
    text = job_config.read_text()
    bundle = manifests.build(config.environment("staging"), images.Resolver("r", None), workspace())
    spark = next(o for o in bundle.objects if o["kind"] == "SparkApplication")["spec"]
    for arg in spark["arguments"]:
        if arg.startswith("--"):
            assert '"%s"' % arg in text, "the commerce job has no flag %s" % arg
    for var in spark["driver"]["env"]:
        if var["name"].startswith("DP_COMMERCE"):
            assert '"%s"' % var["name"] in text, "the commerce job does not read %s" % var["name"]
