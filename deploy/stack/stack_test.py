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

from deploy.common.process import port_is_open
from deploy.stack.testing import program, run, stack_environment
from deploy.stack.testing import pids as service_pids

SERVICES = ("kafka", "postgres", "connect", "register", "analytics", "aggregator", "ingest", "ws_gateway")
DAEMONS = tuple(name for name in SERVICES if name != "register")
COMMERCE = ("postgres", "hdfs", "spark", "superset", "airflow")
ROW_NAMES = SERVICES + COMMERCE + ("flink",)


@pytest.fixture
def stack_env(tmp_path):
    env = stack_environment(tmp_path / "state")
    yield env
    # Whatever happened, nothing may outlive the test.
    subprocess.run([program("down")], env=env, timeout=300)


def pids(state: pathlib.Path, names=DAEMONS) -> dict:
    return service_pids(state, names)


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
