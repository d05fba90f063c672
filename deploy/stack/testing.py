"""Helpers of the tests that run the real `up`, `status` and `down` programs on free ports."""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

from deploy.common.process import free_ports, port_is_open

PORT_VARIABLES = ("DP_KAFKA_PORT", "DP_KAFKA_CONTROLLER_PORT", "DP_POSTGRES_PORT", "DP_CONNECT_PORT", "DP_ANALYTICS_PORT",
                  "DP_IOT_AGGREGATOR_HTTP_PORT", "DP_INGEST_PORT", "DP_INGEST_METRICS_PORT", "DP_WS_PORT",
                  "DP_HDFS_NAMENODE_PORT", "DP_HDFS_NAMENODE_HTTP_PORT", "DP_SPARK_CONNECT_PORT", "DP_SUPERSET_PORT",
                  "DP_AIRFLOW_PORT", "DP_FLINK_REST_PORT", "DP_FLINK_RPC_PORT")


def program(name: str, package: str = "deploy/stack") -> str:
    """A program of the test's runfiles (`bazel test` puts its data there)."""
    root = pathlib.Path(os.environ.get("TEST_SRCDIR", ".")) / "data_pipelines"
    path = root / package / name
    assert path.exists(), path
    return str(path)


def stack_environment(state_dir: pathlib.Path) -> dict:
    """This process's environment with the stack's state in `state_dir` and every port free."""
    ports = free_ports(len(PORT_VARIABLES))
    env = dict(os.environ, DP_STATE_DIR=str(state_dir), **{n: str(p) for n, p in zip(PORT_VARIABLES, ports)})
    # A DataNode takes base, base+1 and base+2: a free block of three.
    env["DP_HDFS_DATANODE_BASE_PORT"] = str(free_block(3))
    for name in ("DP_AIRFLOW_ADMIN_PASSWORD", "DP_SUPERSET_ADMIN_PASSWORD", "DP_HDFS_DATANODES",
                 "BUILD_WORKSPACE_DIRECTORY", "DP_STACK_PROFILE", "DP_STACK_SERVICES"):
        env.pop(name, None)
    return env


def run(env, name, *args, timeout=420, package="deploy/stack"):
    """Runs a program to its end; prints and returns (exit code, output, seconds)."""
    began = time.monotonic()
    result = subprocess.run([program(name, package), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=timeout)
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


def pids(state: pathlib.Path, names) -> dict:
    """PID of each named service from its PID file in the state directory."""
    return {name: int((state / "run" / ("%s.pid" % name)).read_text()) for name in names
            if (state / "run" / ("%s.pid" % name)).exists()}
