"""Live health checks: each answers (healthy, detail) within a few seconds and never raises."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Tuple

from deploy.stack.catalog import Check

Result = Tuple[bool, str]


def _split(address: str) -> Tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def tcp(address: str, timeout: float = 1.0) -> Result:
    try:
        with socket.create_connection(_split(address), timeout=timeout):
            return True, "accepting connections"
    except OSError as err:
        return False, "%s: %s" % (address, err.strerror or err)


def http(url: str, timeout: float = 3.0) -> Result:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, "HTTP %d" % response.status
    except urllib.error.HTTPError as err:
        body = err.read(200).decode("utf-8", errors="replace").strip()
        return False, "HTTP %d %s" % (err.code, body)
    except (OSError, ValueError) as err:
        return False, str(getattr(err, "reason", err))


def connector(url: str, timeout: float = 3.0) -> Result:
    """A Kafka Connect connector's status URL: healthy when it and every task are RUNNING."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as err:
        return False, "HTTP %d (%s)" % (err.code, "not registered" if err.code == 404 else "error")
    except (OSError, ValueError) as err:
        return False, str(getattr(err, "reason", err))
    state = body.get("connector", {}).get("state", "UNKNOWN")
    tasks = [task.get("state", "UNKNOWN") for task in body.get("tasks", [])]
    ok = state == "RUNNING" and bool(tasks) and all(t == "RUNNING" for t in tasks)
    return ok, "connector %s, tasks %s" % (state, ",".join(tasks) or "none")


def kafka(bootstrap: str, timeout: float = 5.0) -> Result:
    """A metadata round trip that lists a broker (a TCP accept alone is not a serving broker)."""
    ok, detail = tcp(bootstrap)
    if not ok:
        return ok, detail
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000),
                         "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception as err:  # KafkaException: not serving (yet)
        return False, "metadata: %s" % err
    if not metadata.brokers:
        return False, "metadata lists no broker"
    return True, "%d topics" % len(metadata.topics)


def postgres(dsn: str, timeout: float = 3.0) -> Result:
    """Log in as the given role (the app role exists with its password only after migration)."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=max(1, int(timeout))) as conn:
            conn.execute("SELECT 1")
        return True, "login ok"
    except psycopg.Error as err:
        return False, str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def grpc_health(address: str, timeout: float = 3.0) -> Result:
    """The standard gRPC health service: the server's overall status must be SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ok, detail = tcp(address)
    if not ok:
        return ok, detail
    try:
        with grpc.insecure_channel(address) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""),
                                                                  timeout=timeout)
    except grpc.RpcError as err:
        return False, "gRPC %s" % err.code().name
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return status == "SERVING", status


def _json(url: str, timeout: float):
    """(document, None) or (None, why it could not be read)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read()), None
    except urllib.error.HTTPError as err:
        return None, "HTTP %d" % err.code
    except (OSError, ValueError) as err:
        return None, str(getattr(err, "reason", err))


def hdfs(namenode_http_url: str, timeout: float = 3.0) -> Result:
    """The NameNode's JMX and WebHDFS: operational, out of safe mode, at least one live DataNode."""
    from deploy.hdfs.cluster import namenode_health

    try:
        state = namenode_health(namenode_http_url)
    except (OSError, ValueError, KeyError) as err:
        return False, str(getattr(err, "reason", err))
    ok = (state["fs_state"] == "Operational" and not state["safemode"] and state["webhdfs"]
          and state["live_datanodes"] >= 1)
    return ok, "%d live DataNode(s), %s%s" % (state["live_datanodes"], state["fs_state"] or "no FS state",
                                              ", safe mode" if state["safemode"] else "")


def spark_connect(address: str, timeout: float = 5.0) -> Result:
    """Spark Connect's gRPC service answers a call (an empty Config request it rejects as invalid).

    The Connect client lives in another Python set (pyspark); an application-level error from
    SparkConnectService proves the server is up and serving, UNAVAILABLE or UNIMPLEMENTED not."""
    import grpc

    ok, detail = tcp(address)
    if not ok:
        return ok, detail
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/spark.connect.SparkConnectService/Config",
                                   request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        try:
            call(b"", timeout=timeout)
            return True, "SparkConnectService answered"
        except grpc.RpcError as err:
            code = err.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED):
                return False, "gRPC %s" % code.name
            return True, "SparkConnectService answered (%s to an empty request)" % code.name


def flink(overview_url: str, timeout: float = 3.0) -> Result:
    """The JobManager's REST /overview lists at least one TaskManager with slots."""
    overview, error = _json(overview_url, timeout)
    if error:
        return False, error
    managers, slots = overview.get("taskmanagers", 0), overview.get("slots-total", 0)
    return managers >= 1 and slots >= 1, "%d TaskManager(s), %d slots, %d running jobs" % (
        managers, slots, overview.get("jobs-running", 0))


def airflow(health_url: str, timeout: float = 5.0) -> Result:
    """/api/v2/monitor/health: metadatabase, scheduler, triggerer and DAG processor all healthy."""
    from deploy.airflow.launcher import unhealthy

    document, error = _json(health_url, timeout)
    if error:
        return False, error
    bad = unhealthy(document)
    return not bad, ("not healthy: " + ", ".join(bad)) if bad else "all components healthy"


_CHECKS = {"tcp": tcp, "http": http, "connector": connector, "kafka": kafka, "postgres": postgres,
           "grpc": grpc_health, "hdfs": hdfs, "spark": spark_connect, "flink": flink, "airflow": airflow}


def run(check: Check) -> Result:
    try:
        return _CHECKS[check.kind](check.target)
    except Exception as err:  # a check must report, not crash the caller
        return False, "%s check failed: %s" % (check.kind, err)
