"""The real `up`, `status`, `logs` and `down` programs, as a user runs them, on free ports.

One walk through the life of a stack: a cold `up` of every service (Kafka, PostgreSQL, Kafka
Connect + the Debezium registration, analytics, aggregator, ingest), `status`, a second `up`
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

SERVICES = ("kafka", "postgres", "connect", "register", "analytics", "aggregator", "ingest")
DAEMONS = tuple(name for name in SERVICES if name != "register")


def program(name: str) -> str:
    root = pathlib.Path(os.environ.get("TEST_SRCDIR", ".")) / "data_pipelines"
    path = root / "deploy" / "stack" / name
    assert path.exists(), path
    return str(path)


@pytest.fixture
def stack_env(tmp_path):
    ports = free_ports(8)
    names = ("DP_KAFKA_PORT", "DP_KAFKA_CONTROLLER_PORT", "DP_POSTGRES_PORT", "DP_CONNECT_PORT", "DP_ANALYTICS_PORT",
             "DP_IOT_AGGREGATOR_HTTP_PORT", "DP_INGEST_PORT", "DP_INGEST_METRICS_PORT")
    env = dict(os.environ, DP_STATE_DIR=str(tmp_path / "state"), **{n: str(p) for n, p in zip(names, ports)})
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


def pids(state: pathlib.Path) -> dict:
    return {name: int((state / "run" / ("%s.pid" % name)).read_text()) for name in DAEMONS
            if (state / "run" / ("%s.pid" % name)).exists()}


def status_rows(output: str) -> dict:
    rows = {}
    for line in output.splitlines():
        if line.startswith(("total RSS", "up in ")):
            break  # the table ends here
        parts = line.split()
        if parts and parts[0] in SERVICES and len(parts) > 1:
            rows[parts[0]] = parts[1]
    return rows


def test_up_status_crash_restart_down(stack_env):
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
                                         "DP_IOT_AGGREGATOR_HTTP_PORT", "DP_INGEST_PORT")]
    code, out, _ = run(stack_env, "down")
    assert code == 0, out
    assert out.index("ingest") < out.index("kafka")  # reverse dependency order
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
    assert not list((state / "run").glob("*.pid"))
    assert not [port for port in ports if port_is_open("127.0.0.1", port)]
    code, out, _ = run(stack_env, "down")
    assert code == 0 and "nothing" in out
    code, out, _ = run(stack_env, "status")
    assert code != 0 and set(status_rows(out).values()) <= {"stopped", "down"}, out
