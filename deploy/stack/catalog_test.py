"""The service catalogue: start order, selection by profile and flags, the port plan."""

import pathlib

import pytest

from deploy.stack import catalog
from deploy.stack.catalog import CatalogError, Check, Context, Service


def fake(name, deps=(), profiles=("p",)):
    return Service(name=name, summary=name, binary="bin/" + name, ports=(), deps=tuple(deps), profiles=profiles,
                   args=lambda ctx: [], check=lambda ctx: Check("tcp", "127.0.0.1:1"), address=lambda ctx: "")


def names(services):
    return [s.name for s in services]


def test_dependencies_come_first_and_ties_keep_catalogue_order():
    services = [fake("app", ["db", "queue"]), fake("db"), fake("worker", ["queue"]), fake("queue")]
    order = names(catalog.topological_order(services))
    assert order == ["db", "queue", "app", "worker"]
    for service in services:
        for dep in service.deps:
            assert order.index(dep) < order.index(service.name)


def test_cycle_and_unknown_dependency_are_refused():
    with pytest.raises(CatalogError, match="cycle"):
        catalog.topological_order([fake("a", ["b"]), fake("b", ["a"])])
    with pytest.raises(CatalogError, match="unknown service 'nope'"):
        catalog.topological_order([fake("a", ["nope"])])


def test_real_catalogue_order():
    order = names(catalog.topological_order(catalog.SERVICES))
    assert order.index("kafka") < order.index("connect") < order.index("register")
    assert order.index("postgres") < order.index("register")
    assert order.index("kafka") < order.index("analytics")
    assert order.index("kafka") < order.index("ingest")
    assert set(order) == {"kafka", "postgres", "connect", "register", "analytics", "aggregator", "ingest"}


def test_selection_adds_dependencies():
    assert catalog.select(services_list=["analytics"]) == ["kafka", "analytics"]
    assert catalog.select(services_list=["register"]) == ["kafka", "postgres", "connect", "register"]
    assert catalog.select(["behaviour"]) == ["kafka", "ingest"]
    assert catalog.select(["iot"], without=["aggregator"]) == ["kafka", "postgres", "connect", "register", "analytics"]
    assert catalog.select(["core"], with_=["ingest"]) == ["kafka", "postgres", "ingest"]
    # Leaving out a dependency of something enabled does not work: it is added back.
    assert "kafka" in catalog.select(["iot"], without=["kafka"])
    assert catalog.select() == names(catalog.topological_order(catalog.SERVICES))


def test_selection_errors_name_the_choices():
    with pytest.raises(CatalogError, match="unknown profile 'nope'.*iot"):
        catalog.select(["nope"])
    with pytest.raises(CatalogError, match="unknown service 'nope'.*kafka"):
        catalog.select(services_list=["nope"])


def test_dependents():
    assert catalog.dependents("connect") == ["register"]
    assert set(catalog.dependents("kafka")) == {"connect", "register", "analytics", "aggregator", "ingest"}


def test_port_plan_defaults_env_and_flags():
    plan = catalog.port_plan(env={})
    assert plan["kafka"] == {"port": 9092, "controller": 9093}
    assert plan["postgres"] == {"port": 5432}
    assert plan["connect"] == {"port": 8083}
    assert plan["analytics"] == {"port": 8400}
    assert plan["aggregator"] == {"port": 9464}
    assert plan["ingest"] == {"port": 50051, "metrics": 9471}
    assert plan["register"] == {}
    plan = catalog.port_plan({"kafka": 19092, "ingest.metrics": 19471},
                             env={"DP_KAFKA_PORT": "29092", "DP_POSTGRES_PORT": "15432"})
    assert plan["kafka"] == {"port": 19092, "controller": 9093}  # the flag wins over the environment
    assert plan["postgres"] == {"port": 15432}
    assert plan["ingest"] == {"port": 50051, "metrics": 19471}


def test_port_plan_errors():
    with pytest.raises(CatalogError, match="DP_KAFKA_PORT='x' is not a port number"):
        catalog.port_plan(env={"DP_KAFKA_PORT": "x"})
    with pytest.raises(CatalogError, match="no such port"):
        catalog.port_plan({"kafka.nope": 1}, env={})
    with pytest.raises(CatalogError, match="not 1..65535"):
        catalog.port_plan({"kafka": 70000}, env={})
    assert catalog.parse_port_override("kafka=19092") == ("kafka", 19092)
    with pytest.raises(CatalogError):
        catalog.parse_port_override("kafka")


def test_command_lines_follow_the_plan_and_state_dir():
    ctx = Context(pathlib.Path("/s"), catalog.port_plan({"kafka": 1001, "kafka.controller": 1002, "postgres": 1003,
                                                         "connect": 1004}, env={}))
    services = catalog.by_name()
    assert services["kafka"].args(ctx) == ["--port", "1001", "--controller-port", "1002", "--state-dir", "/s"]
    assert services["connect"].args(ctx)[:2] == ["--bootstrap", "127.0.0.1:1001"]
    register = services["register"].args(ctx)
    assert register[register.index("--connect") + 1] == "http://127.0.0.1:1004"
    assert "port=1003" in register[register.index("--postgres-dsn") + 1]
    assert "user=dp_cdc" in register[register.index("--postgres-dsn") + 1]
    assert services["analytics"].args(ctx)[-2:] == ["--data-dir", "/s/analytics"]
    assert services["ingest"].env(ctx)["BUILD_WORKSPACE_DIRECTORY"] == "/s/run/ingest-home"
    assert any("user=dp_app" in line for line in services["postgres"].credentials(ctx))
    assert services["ingest"].credentials(ctx) == ["dev API key file: /s/ingest/dev-api-key"]
