"""The port plan agrees with each component's own flag defaults; environments, flows and secrets hold.

The agreement with the local stack's catalogue is stack_agreement_test (it reads deploy/stack from the workspace).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

import pytest

from deploy.k8s import config, source_defaults

RUNFILES = pathlib.Path(__file__).absolute().parents[2]

# Component -> the source whose flag defaults it must match (read as text: no imports, no services).
COMPONENT_SOURCES = {
    "ingest": "services/ingest/config.py",
    "ws_gateway": "services/ws_gateway/config.py",
    "analytics": "services/analytics/config.py",
    "aggregator": "jobs/iot/aggregator/config.py",
}


def default_for_env(source: str, env_name: str, root: Optional[pathlib.Path] = None) -> Optional[int]:
    return source_defaults.default_for_env((root or RUNFILES) / source, env_name)


@pytest.mark.parametrize("component,source", sorted(COMPONENT_SOURCES.items()))
def test_component_defaults_agree_with_the_plan(component, source):
    checked = 0
    for p in config.PORTS[component]:
        if p.env:
            found = default_for_env(source, p.env)
            assert found is not None, "%s does not read %s" % (source, p.env)
            assert found == p.number, "%s: %s defaults to %d, config.PORTS says %d" % (source, p.env, found, p.number)
            checked += 1
    assert checked


def test_default_reader_finds_a_changed_default(tmp_path):
    # The check above must be able to fail: a copy with another default disagrees.
    text = (RUNFILES / "services/ws_gateway/config.py").read_text()
    assert "DEFAULT_PORT = 8765" in text
    (tmp_path / "services/ws_gateway").mkdir(parents=True)
    (tmp_path / "services/ws_gateway/config.py").write_text(text.replace("DEFAULT_PORT = 8765", "DEFAULT_PORT = 8766"))
    assert default_for_env("services/ws_gateway/config.py", "DP_WS_PORT", tmp_path) == 8766


def test_port_numbers_are_unique_per_component_and_valid():
    for component, ports in config.PORTS.items():
        names = [p.name for p in ports]
        assert len(names) == len(set(names)), component
        assert "port" in names, "%s has no main port" % component
        for p in ports:
            assert 1 <= p.number <= 65535


@pytest.mark.parametrize("name", sorted(config.ENVIRONMENTS))
def test_environments_are_consistent(name):
    env = config.environment(name)
    assert env.name == name
    assert env.namespace.startswith("dp-")
    for component in config.WORKLOADS:
        resources = env.resources[component].to_k8s()
        assert resources["requests"]["cpu"] and resources["limits"]["memory"]


def test_production_is_replicated():
    prod = config.environment("prod")
    assert prod.kafka_brokers >= 3 and prod.kafka_replication == 3 and prod.kafka_min_isr == 2
    assert prod.hdfs_replication == 3 and prod.postgres_instances >= 3
    assert prod.replicas["ingest"] >= 2 and prod.ws_emulated_users == 0


def test_inconsistent_environment_is_refused():
    bad = dataclasses.replace(config.ENVIRONMENTS["staging"], kafka_min_isr=4)
    with pytest.raises(config.ConfigError, match="kafka_min_isr"):
        bad.check()
    bad = dataclasses.replace(config.ENVIRONMENTS["staging"], replicas={**config.ENVIRONMENTS["staging"].replicas,
                                                                         "analytics": 2})
    with pytest.raises(config.ConfigError, match="analytics"):
        bad.check()
    with pytest.raises(config.ConfigError, match="choose from"):
        config.environment("qa")


def test_flows_name_known_components_and_ports():
    known = set(config.PORTS) | {"kafka", "postgres", "flink", "spark", "airflow", "superset", "iot_simulator",
                                 "connect"}
    for flow in config.FLOWS:
        assert flow.source in known and flow.target in config.PORTS, flow
        config.port(flow.target, flow.port)


def test_secrets_have_keys_and_unique_names():
    assert len(config.SECRET_NAMES) == len(config.SECRETS)
    for secret in config.SECRETS:
        assert secret.keys and secret.what
