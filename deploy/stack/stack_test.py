"""The real `up`, `status`, `logs` and `down` programs, as a user runs them, on free ports.

One walk through the life of a stack: a cold `up` of the default services (Kafka, PostgreSQL,
Kafka Connect + the Debezium registration, analytics, aggregator, ingest, WebSocket gateway), `status`, a second `up`
that changes nothing, a kill -9 that `status` reports with log lines and a non-zero exit,
`up --only` restarting that one service, and `down` leaving no process and no PID file behind.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import time

import psutil
import pytest

from deploy.common.process import free_ports, port_is_open

SERVICES = ("kafka", "postgres", "connect", "register", "analytics", "aggregator", "ingest", "ws_gateway")
DAEMONS = tuple(name for name in SERVICES if name != "register")
COMMERCE = ("postgres", "hdfs", "spark", "superset", "airflow")
ROW_NAMES = SERVICES + COMMERCE + ("flink",)
PORT_VARIABLES = ("DP_KAFKA_PORT", "DP_KAFKA_CONTROLLER_PORT", "DP_POSTGRES_PORT", "DP_CONNECT_PORT", "DP_ANALYTICS_PORT",
                  "DP_IOT_AGGREGATOR_HTTP_PORT", "DP_INGEST_PORT", "DP_INGEST_METRICS_PORT", "DP_WS_PORT",
                  "DP_HDFS_NAMENODE_PORT", "DP_HDFS_NAMENODE_HTTP_PORT", "DP_SPARK_CONNECT_PORT", "DP_SUPERSET_PORT",
                  "DP_AIRFLOW_PORT", "DP_FLINK_REST_PORT", "DP_FLINK_RPC_PORT")


def program(name: str) -> str:
    root = pathlib.Path(os.environ.get("TEST_SRCDIR", ".")) / "data_pipelines"
    path = root / "deploy" / "stack" / name
    assert path.exists(), path
    return str(path)


@pytest.fixture
def stack_env(tmp_path):
    ports = free_ports(len(PORT_VARIABLES))
    env = dict(os.environ, DP_STATE_DIR=str(tmp_path / "state"), **{n: str(p) for n, p in zip(PORT_VARIABLES, ports)})
    # A DataNode takes base, base+1 and base+2: a free block of three.
    env["DP_HDFS_DATANODE_BASE_PORT"] = str(free_block(3))
    for name in ("DP_AIRFLOW_ADMIN_PASSWORD", "DP_SUPERSET_ADMIN_PASSWORD", "DP_HDFS_DATANODES"):
        env.pop(name, None)
    env.pop("BUILD_WORKSPACE_DIRECTORY", None)
    env.pop("DP_STACK_PROFILE", None)
    env.pop("DP_STACK_SERVICES", None)
    yield env
    # Whatever happened, nothing may outlive the test.
    subprocess.run([program("down")], env=env, timeout=300)


def run(env, name, *args, timeout=420):
    began = time.monotonic()
    result = subprocess.run([program(name), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=timeout)
    seconds = time.monotonic() - began
    print("$ %s %s  (exit %d, %.1f s)\n%s" % (name, " ".join(args), result.returncode, seconds, result.stdout))
    return result.returncode, result.stdout, seconds


def free_block(size: int) -> int:
    """The first of `size` consecutive free loopback ports."""
    for _ in range(50):
        base = free_ports(1)[0]
        if base + size < 65536 and not any(port_is_open("127.0.0.1", base + k) for k in range(1, size)):
            return base
    raise RuntimeError("no block of %d free ports" % size)


def pids(state: pathlib.Path, names=DAEMONS) -> dict:
    return {name: int((state / "run" / ("%s.pid" % name)).read_text()) for name in names
            if (state / "run" / ("%s.pid" % name)).exists()}


def status_rows(output: str) -> dict:
    rows = {}
    for line in output.splitlines():
        if line.startswith(("total RSS", "up in ")):
            break  # the table ends here
        parts = line.split()
        if parts and parts[0] in ROW_NAMES and len(parts) > 1:
            rows[parts[0]] = parts[1]
    return rows


def test_default_profile_up_status_crash_restart_down(stack_env):
    state = pathlib.Path(stack_env["DP_STATE_DIR"])

    code, out, cold = run(stack_env, "up")
    assert code == 0, out
    assert {name: status_rows(out).get(name) for name in SERVICES} == {
        **{name: "running" for name in DAEMONS}, "register": "done"}
    assert "user=dp_app" in out and "user=dp_cdc" in out
    assert str(state / "ingest" / "dev-api-key") in out and (state / "ingest" / "dev-api-key").exists()
    first = pids(state)
    assert set(first) == set(DAEMONS)
    for name, pid in first.items():
        assert os.getsid(pid) == pid, "%s is not in its own session" % name
        record = json.loads((state / "run" / ("%s.json" % name)).read_text())
        assert record["pid"] == pid and record["argv"] and record["started_at"] > 0
    assert (state / "logs" / "kafka.log").exists()

    code, out, _ = run(stack_env, "status")
    assert code == 0, out
    assert set(status_rows(out).values()) == {"running", "done"}
    total = re.search(r"total RSS: (\d+) MiB", out)
    assert total and int(total.group(1)) > 300, out  # two JVMs at least

    code, out, warm = run(stack_env, "up")
    assert code == 0, out
    assert "starting" not in out and out.count("already running") == len(DAEMONS)
    assert pids(state) == first
    assert warm < cold

    os.kill(first["analytics"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(first["analytics"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    code, out, _ = run(stack_env, "status")
    assert code != 0, out
    assert status_rows(out)["analytics"] == "crashed"
    assert "analytics crashed; last 10 lines of" in out and "event=" in out
    assert "up -- --only analytics" in out

    code, out, _ = run(stack_env, "logs", "analytics", "-n", "3")
    assert code == 0 and 1 <= len(out.strip().splitlines()) <= 3, out

    code, out, _ = run(stack_env, "up", "--only", "analytics")
    assert code == 0, out
    assert "stale PID file: pid %d" % first["analytics"] in out
    again = pids(state)
    assert again["analytics"] != first["analytics"]
    assert {n: p for n, p in again.items() if n != "analytics"} == {n: p for n, p in first.items() if n != "analytics"}
    code, out, _ = run(stack_env, "status")
    assert code == 0, out

    processes = []
    for pid in again.values():
        proc = psutil.Process(pid)
        processes += [proc] + proc.children(recursive=True)  # launchers, JVMs, postmaster and backends
    ports = [int(stack_env[n]) for n in ("DP_KAFKA_PORT", "DP_POSTGRES_PORT", "DP_CONNECT_PORT", "DP_ANALYTICS_PORT",
                                         "DP_IOT_AGGREGATOR_HTTP_PORT", "DP_INGEST_PORT", "DP_WS_PORT")]
    code, out, _ = run(stack_env, "down")
    assert code == 0, out
    assert out.index("ws_gateway") < out.index("ingest") < out.index("kafka")  # reverse dependency order
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
    assert not list((state / "run").glob("*.pid"))
    assert not [port for port in ports if port_is_open("127.0.0.1", port)]
    code, out, _ = run(stack_env, "down")
    assert code == 0 and "nothing" in out
    code, out, _ = run(stack_env, "status")
    assert code != 0 and set(status_rows(out).values()) <= {"stopped", "down"}, out


def test_commerce_profile_up_status_crash_restart_down(stack_env):
    """HDFS, the Spark Connect server, Superset and Airflow (with PostgreSQL) as one profile."""
    state = pathlib.Path(stack_env["DP_STATE_DIR"])

    code, out, _ = run(stack_env, "up", "--profile", "commerce", timeout=900)
    assert code == 0, out
    assert {name: status_rows(out).get(name) for name in COMMERCE} == {name: "running" for name in COMMERCE}
    assert "kafka" not in status_rows(out)
    # The generated admin logins are printed and kept in the state directory, nowhere else.
    airflow_password = json.loads((state / "airflow" / "simple_auth_manager_passwords.json").read_text())["admin"]
    superset_password = (state / "superset" / "admin_password").read_text().strip()
    assert "login: admin / %s" % airflow_password in out
    assert "login: admin / %s" % superset_password in out
    assert "sc://127.0.0.1:%s" % stack_env["DP_SPARK_CONNECT_PORT"] in out
    first = pids(state, COMMERCE)
    assert set(first) == set(COMMERCE)

    code, out, _ = run(stack_env, "status")
    assert code == 0, out
    assert set(status_rows(out).values()) == {"running"}
    assert "all components healthy" in out and "live DataNode" in out and "SparkConnectService answered" in out
    assert re.search(r"total RSS: (\d+) MiB", out)

    os.kill(first["spark"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while psutil.pid_exists(first["spark"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    code, out, _ = run(stack_env, "status")
    assert code != 0 and status_rows(out)["spark"] == "crashed", out
    assert "up -- --only spark" in out

    code, out, _ = run(stack_env, "up", "--only", "spark", timeout=600)
    assert code == 0, out
    again = pids(state, COMMERCE)
    assert again["spark"] != first["spark"]
    assert {n: p for n, p in again.items() if n != "spark"} == {n: p for n, p in first.items() if n != "spark"}

    processes = []
    for pid in again.values():
        proc = psutil.Process(pid)
        processes += [proc] + proc.children(recursive=True)
    code, out, _ = run(stack_env, "down")
    assert code == 0, out
    assert out.index("airflow") < out.index("hdfs") and out.index("superset") < out.index("postgres")
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
    ports = [int(stack_env[n]) for n in ("DP_POSTGRES_PORT", "DP_HDFS_NAMENODE_PORT", "DP_HDFS_NAMENODE_HTTP_PORT",
                                         "DP_SPARK_CONNECT_PORT", "DP_SUPERSET_PORT", "DP_AIRFLOW_PORT")]
    assert not [port for port in ports if port_is_open("127.0.0.1", port)]
