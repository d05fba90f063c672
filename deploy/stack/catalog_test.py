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
    assert order.index("ingest") < order.index("ws_gateway")
    for dep in ("postgres", "hdfs", "spark"):
        assert order.index(dep) < order.index("airflow")
    assert order.index("postgres") < order.index("superset")
    assert set(order) == {"kafka", "postgres", "connect", "register", "analytics", "aggregator", "ingest",
                          "ws_gateway", "hdfs", "spark", "superset", "airflow", "flink"}


def test_selection_adds_dependencies():
    assert catalog.select(services_list=["analytics"]) == ["kafka", "analytics"]
    assert catalog.select(services_list=["register"]) == ["kafka", "postgres", "connect", "register"]
    assert catalog.select(["behaviour"]) == ["kafka", "analytics", "ingest", "ws_gateway"]
    assert catalog.select(["commerce"]) == ["postgres", "hdfs", "spark", "superset", "airflow"]
    assert catalog.select(services_list=["airflow"]) == ["postgres", "hdfs", "spark", "airflow"]
    assert catalog.select(services_list=["ws_gateway"]) == ["kafka", "ingest", "ws_gateway"]
    assert catalog.select(["iot"], without=["aggregator"]) == ["kafka", "postgres", "connect", "register", "analytics"]
    assert catalog.select(["core"], with_=["ingest"]) == ["kafka", "postgres", "ingest"]
    # Leaving out a dependency of something enabled does not work: it is added back.
    assert "kafka" in catalog.select(["iot"], without=["kafka"])
    # No flag: the streaming services; `all` adds commerce; the Flink cluster only on request.
    streaming = ["kafka", "postgres", "connect", "register", "analytics", "aggregator", "ingest", "ws_gateway"]
    assert catalog.select() == streaming
    assert catalog.select(["all"]) == streaming + ["hdfs", "spark", "superset", "airflow"]
    assert catalog.select(["flink"]) == ["flink"]
    assert catalog.select(["all"], with_=["flink"]) == names(catalog.topological_order(catalog.SERVICES))
    assert catalog.select(["iot", "commerce"]) == ["kafka", "postgres", "connect", "register", "analytics",
                                                   "aggregator", "hdfs", "spark", "superset", "airflow"]


def test_selection_errors_name_the_choices():
    with pytest.raises(CatalogError, match="unknown profile 'nope'.*iot"):
        catalog.select(["nope"])
    with pytest.raises(CatalogError, match="unknown service 'nope'.*kafka"):
        catalog.select(services_list=["nope"])


def test_dependents():
    assert catalog.dependents("connect") == ["register"]
    assert set(catalog.dependents("kafka")) == {"connect", "register", "analytics", "aggregator", "ingest",
                                                "ws_gateway"}
    assert catalog.dependents("postgres") == ["register", "superset", "airflow"]
    assert catalog.dependents("spark") == ["airflow"]


def test_port_plan_defaults_env_and_flags():
    plan = catalog.port_plan(env={})
    assert plan["kafka"] == {"port": 9092, "controller": 9093}
    assert plan["postgres"] == {"port": 5432}
    assert plan["connect"] == {"port": 8083}
    assert plan["analytics"] == {"port": 8400}
    assert plan["aggregator"] == {"port": 9464}
    assert plan["ingest"] == {"port": 50051, "metrics": 9471}
    assert plan["register"] == {}
    assert plan["ws_gateway"] == {"port": 8765}
    assert plan["hdfs"] == {"port": 8020, "http": 9870, "datanode": 9866}
    assert plan["spark"] == {"port": 15002}
    assert plan["superset"] == {"port": 8088}
    assert plan["airflow"] == {"port": 8080}
    assert plan["flink"] == {"port": 18081, "rpc": 16123}
    assert catalog.port_plan({"hdfs.http": 19870}, env={"DP_AIRFLOW_PORT": "18080"})["hdfs"]["http"] == 19870
    assert catalog.port_plan(env={"DP_AIRFLOW_PORT": "18080"})["airflow"] == {"port": 18080}
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


def commerce_context(state_dir):
    return Context(state_dir, catalog.port_plan({"postgres": 1003, "hdfs": 1010, "hdfs.http": 1011,
                                                 "hdfs.datanode": 1020, "spark": 1030, "superset": 1040,
                                                 "airflow": 1050, "ingest": 1060, "ws_gateway": 1070,
                                                 "flink": 1080, "flink.rpc": 1081}, env={}))


def test_commerce_and_gateway_command_lines(tmp_path, monkeypatch):
    for name in ("DP_AIRFLOW_ADMIN_PASSWORD", "DP_SUPERSET_ADMIN_PASSWORD", "DP_POSTGRES_APP_PASSWORD",
                 "DP_HDFS_DATANODES", "DP_FLINK_TASKMANAGERS"):
        monkeypatch.delenv(name, raising=False)
    ctx = commerce_context(tmp_path)
    services = catalog.by_name()
    hdfs = services["hdfs"].args(ctx)
    assert hdfs[hdfs.index("--namenode-port") + 1] == "1010"
    assert hdfs[hdfs.index("--namenode-http-port") + 1] == "1011"
    assert hdfs[hdfs.index("--datanode-base-port") + 1] == "1020"
    assert hdfs[hdfs.index("--datanodes") + 1] == "1"
    assert services["hdfs"].check(ctx) == Check("hdfs", "http://127.0.0.1:1011")
    assert services["spark"].args(ctx)[:2] == ["--port", "1030"]
    assert services["spark"].check(ctx) == Check("spark", "127.0.0.1:1030")
    assert services["spark"].address(ctx) == "sc://127.0.0.1:1030"
    gateway = services["ws_gateway"].args(ctx)
    assert gateway[gateway.index("--ingest-target") + 1] == "127.0.0.1:1060"
    assert gateway[gateway.index("--api-key-file") + 1] == str(tmp_path / "ingest" / "dev-api-key")
    flink = services["flink"].args(ctx)
    assert flink[flink.index("--flink-rest-port") + 1] == "1080" and flink[flink.index("--flink-rpc-port") + 1] == "1081"
    assert services["flink"].check(ctx) == Check("flink", "http://127.0.0.1:1080/overview")

    # Passwords travel in the environment, never on a command line.
    superset = services["superset"]
    assert not any("dp-app" in arg or "postgresql" in arg for arg in superset.args(ctx))
    assert superset.env(ctx)["DP_SUPERSET_DATABASE_URI"].startswith("postgresql+psycopg2://dp_app:")
    assert superset.env(ctx)["DP_SUPERSET_DATABASE_URI"].endswith("@127.0.0.1:1003/datapipelines")
    airflow = services["airflow"]
    assert airflow.args(ctx)[:4] == ["--port", "1050", "--state-dir", str(tmp_path / "airflow")]
    env = airflow.env(ctx)
    assert env["DP_WEBHDFS_URL"] == "http://127.0.0.1:1011/webhdfs/v1"
    assert env["DP_COMMERCE_RAW_ROOT"] == "hdfs://127.0.0.1:1010/raw/commerce/events"
    assert env["DP_SPARK_REMOTE"] == "sc://127.0.0.1:1030"
    assert "port=1003" in env["DP_COMMERCE_POSTGRES_DSN"] and "user=dp_app" in env["DP_COMMERCE_POSTGRES_DSN"]
    assert "DP_SUPERSET_URL" not in env  # no Superset password yet: the refresh task is skipped

    # Before the first start the logins name the file the service will write.
    assert "written by the service" in airflow.credentials(ctx)[0]
    (tmp_path / "airflow").mkdir()
    (tmp_path / "airflow" / "simple_auth_manager_passwords.json").write_text('{"admin": "s3cret"}')
    (tmp_path / "superset").mkdir()
    (tmp_path / "superset" / "admin_password").write_text("other\n")
    assert airflow.credentials(ctx)[0].startswith("login: admin / s3cret")
    assert superset.credentials(ctx)[0].startswith("login: admin / other")
    env = airflow.env(ctx)
    assert (env["DP_SUPERSET_URL"], env["DP_SUPERSET_PASSWORD"]) == ("http://127.0.0.1:1040", "other")
    monkeypatch.setenv("DP_AIRFLOW_ADMIN_PASSWORD", "from-env")
    assert airflow.credentials(ctx)[0].startswith("login: admin / from-env")
