"""The whole multi-node profile (`//deploy/local:cluster`: 3 Kafka nodes, Flink JobManager + 2
TaskManagers, Spark master + 2 workers, HDFS NameNode + 3 DataNodes) started as users start it, and
the pipelines run on it unchanged while one node of each engine is SIGKILLed:

- the behaviour job (PyFlink) on the profile's Flink and Kafka loses the TaskManager running its
  tasks, then the broker leading its metrics sink's partition (behaviour_faults.py);
- the IoT CDC pipeline (PostgreSQL, Debezium on Kafka Connect, the aggregator, the analytics
  service) on the profile's Kafka loses the broker leading its change events' partition
  (iot_faults.py);
- the commerce marts job (PySpark) on the profile's Spark and HDFS loses a DataNode as it starts
  reading, then a worker holding cached events (marts_faults.py).

Results must equal the independent recomputations, each window, session and mart row exactly once.
The profile must start every killed node again (a Kafka node on its storage: it rejoins the ISRs;
a DataNode: the NameNode lists it live again), keep running, and stop cleanly on SIGTERM.
"""

import json
import time
import urllib.request

import pytest
from confluent_kafka.admin import AdminClient

from datapipelines import topics
from deploy.common.process import tail
from deploy.hdfs.cluster import namenode_health
from deploy.pipelines.iot import IotPipeline, IotPipelineConfig
from tests.cluster import behaviour_faults, iot_faults, marts_faults
from tests.cluster.local_profile import LocalProfile
from tests.fixtures.postgres_server import postgres_server  # noqa: F401 (a fixture)


def _announce(pytestconfig, message: str) -> None:
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n" + message, flush=True)


@pytest.fixture(scope="module")
def profile(tmp_path_factory, pytestconfig):
    started = LocalProfile(tmp_path_factory.mktemp("profile")).start()
    _announce(pytestconfig, "multi-node profile up in %.1f s: kafka=%s hdfs=%s flink=%s spark=%s pids=%s" % (
        started.start_seconds, started.bootstrap, started.hdfs_url, started.flink.rest_url,
        started.spark.master_url, started.pids()))
    try:
        yield started
    finally:
        code = started.stop()
        _announce(pytestconfig, "multi-node profile stopped, exit %s" % code)
        assert code == 0, tail(started.log, 60)


def _wait(condition, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out after %.0f s waiting for %s:\n%s" % (timeout, what, tail(log, 40))
        time.sleep(1.0)


def _live_datanodes(profile) -> int:
    return namenode_health("http://127.0.0.1:%d" % profile.namenode_http_port)["live_datanodes"]


def _registered(profile, index: int) -> bool:
    """Whether DataNode `index` (its own JMX, so the JVM running now) serves its NameNode."""
    url = "http://127.0.0.1:%d/jmx?qry=Hadoop:service=DataNode,name=DataNodeInfo" % (
        profile.datanode_base + 10 * (index - 1) + 1)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            beans = json.load(response)["beans"]
    except (OSError, ValueError):
        return False
    actors = json.loads(beans[0]["BPServiceActorInfo"]) if beans else []
    return bool(actors) and all(actor.get("ActorState") == "RUNNING" for actor in actors)


def test_every_component_serves(profile):
    pids = profile.pids()
    assert sorted(pids) == ["datanode-1", "datanode-2", "datanode-3", "flink-launcher", "kafka-1", "kafka-2",
                            "kafka-3", "namenode", "spark-launcher"]
    assert len(AdminClient({"bootstrap.servers": profile.bootstrap}).list_topics(timeout=30).brokers) == 3
    assert _live_datanodes(profile) == 3
    taskmanagers = profile.flink.rest("/taskmanagers")["taskmanagers"]
    assert len(taskmanagers) == 2 and all(tm["slotsNumber"] == 2 for tm in taskmanagers), taskmanagers
    assert [w["state"] for w in profile.spark.status()["workers"]] == ["ALIVE", "ALIVE"]


def test_behaviour_job_on_the_profile_survives_a_taskmanager_and_a_broker_sigkill(profile, tmp_path):
    killed = {}

    def kill_broker(node_id: int) -> None:
        name = "kafka-%d" % node_id
        killed[name] = (profile.pids()[name], profile.kill(name))

    behaviour_faults.run(profile.bootstrap, kill_broker, lambda: profile.flink, tmp_path)
    assert len(killed) == 1 and all(old != new for old, new in killed.values()), killed
    # The node the profile started again caught up: every partition of the job's topics has 3 in-sync replicas.
    node_id = int(next(iter(killed))[len("kafka-"):])
    admin = AdminClient({"bootstrap.servers": profile.bootstrap})

    def all_in_sync():
        names = [t.name for t in (topics.BEHAVIOUR_EVENTS, topics.BEHAVIOUR_METRICS, topics.BEHAVIOUR_SESSIONS)]
        metadata = admin.list_topics(timeout=15).topics
        return all(node_id in p.isrs and len(p.isrs) == 3 for name in names for p in metadata[name].partitions.values())

    _wait(all_in_sync, 180, "kafka-%d back in every ISR" % node_id, profile.log)
    assert profile.alive()


def test_iot_pipeline_on_the_profile_survives_a_broker_sigkill(profile, tmp_path):
    killed = {}

    def kill_broker(node_id: int) -> None:
        name = "kafka-%d" % node_id
        killed[name] = (profile.pids()[name], profile.kill(name))

    config = IotPipelineConfig(state_dir=tmp_path / "iot", bootstrap=profile.bootstrap)
    with IotPipeline(config, say=print) as pipeline:
        print("iot pipeline started on the profile's Kafka: " + ", ".join(
            "%s=%.1fs" % item for item in pipeline.timings.items()))
        iot_faults.run(pipeline, kill_broker)
    assert len(killed) == 1 and all(old != new for old, new in killed.values()), killed
    assert profile.alive()


def test_marts_job_on_the_profile_survives_a_datanode_and_a_worker_sigkill(profile, postgres_server, tmp_path):  # noqa: F811
    day = marts_faults.prepare(profile.hdfs_url, profile.webhdfs_url)
    restarted = {}

    def kill_datanode():
        restarted["datanode-3"] = profile.kill("datanode-3")

    marts_faults.run(day, profile.spark, kill_datanode, postgres_server.app_dsn, tmp_path)
    assert restarted
    _wait(lambda: _registered(profile, 3), 180, "the restarted DataNode to register", profile.log)
    assert _live_datanodes(profile) == 3
    assert profile.alive()
