"""Register (or update) the IoT readings CDC connector on a running Kafka Connect worker.

    bazel run //deploy/connect:register -- --help
    bazel run //deploy/connect:register -- --connect http://127.0.0.1:8083 \
        --postgres-dsn "host=127.0.0.1 port=5432 dbname=datapipelines user=dp_cdc password=..."

`PUT /connectors/iot-readings-cdc/config` creates the connector or replaces its config, so
running it twice changes nothing. Before that the connector's topics (topics.IOT_CDC_READINGS
and topics.DEBEZIUM_HEARTBEAT) are created on the broker if missing (the broker never creates
topics by itself). Then it waits until the connector and its task are RUNNING and prints the
status; a FAILED task prints its stack trace and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import urllib.parse
from typing import Dict, List, Optional, Sequence

from deploy.connect import connectors
from deploy.connect.worker import http_json

LOG = logging.getLogger("connect_register")


class RegistrationError(RuntimeError):
    """The connector could not be registered or did not run; the message says why."""


@dataclasses.dataclass
class ConnectorStatus:
    name: str
    connector_state: str
    task_states: List[str]
    traces: List[str]
    raw: dict

    @property
    def running(self) -> bool:
        return self.connector_state == "RUNNING" and bool(self.task_states) and all(
            state == "RUNNING" for state in self.task_states
        )

    @property
    def failed(self) -> bool:
        return self.connector_state == "FAILED" or "FAILED" in self.task_states


def connector_topics():
    """The topics the connector writes (created before registration)."""
    from datapipelines import topics

    return (topics.IOT_CDC_READINGS, topics.DEBEZIUM_HEARTBEAT)


def status(connect_url: str, name: str) -> Optional[ConnectorStatus]:
    """The connector's status, or None while the worker does not know it (yet)."""
    code, body = http_json("GET", "%s/connectors/%s/status" % (connect_url.rstrip("/"), urllib.parse.quote(name)))
    if code == 404:
        return None
    if code != 200 or not isinstance(body, dict):
        raise RegistrationError("GET status of %s on %s answered %d: %s" % (name, connect_url, code, body))
    connector = body.get("connector", {})
    tasks = body.get("tasks", [])
    traces = [connector.get("trace", "")] + [task.get("trace", "") for task in tasks]
    return ConnectorStatus(
        name=name,
        connector_state=connector.get("state", "UNKNOWN"),
        task_states=[task.get("state", "UNKNOWN") for task in tasks],
        traces=[trace for trace in traces if trace],
        raw=body,
    )


def put_config(connect_url: str, name: str, config: Dict[str, str]) -> bool:
    """PUT the config; True when the connector was created, False when it existed (updated)."""
    url = "%s/connectors/%s/config" % (connect_url.rstrip("/"), urllib.parse.quote(name))
    for attempt in range(30):
        code, body = http_json("PUT", url, config, timeout=60)
        if code in (200, 201):
            return code == 201
        # 409: a rebalance is in progress; the worker asks to retry.
        if code == 409 and attempt < 29:
            time.sleep(1)
            continue
        message = body.get("message", body) if isinstance(body, dict) else body
        raise RegistrationError("PUT %s answered %d: %s" % (url, code, message))
    raise AssertionError("unreachable")


def wait_running(connect_url: str, name: str, timeout: float = 120.0) -> ConnectorStatus:
    """Polls until connector and tasks are RUNNING; raises with the traces when one FAILED."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = status(connect_url, name)
        if last is not None and last.running:
            return last
        if last is not None and last.failed:
            raise RegistrationError(
                "connector %s failed on %s (connector %s, tasks %s):\n%s"
                % (name, connect_url, last.connector_state, ", ".join(last.task_states) or "none",
                   "\n\n".join(last.traces) or "(no trace)")
            )
        time.sleep(0.25)
    raise RegistrationError(
        "connector %s on %s not RUNNING after %.0f s (last status: %s)"
        % (name, connect_url, timeout, json.dumps(last.raw) if last else "unknown to the worker")
    )


def register_iot_readings_cdc(connect_url: str, bootstrap: str, source: connectors.PostgresSource,
                              exactly_once: bool = True, timeout: float = 120.0) -> ConnectorStatus:
    """Create the connector's topics, PUT its config, wait until it runs. Idempotent."""
    from datapipelines import kafka

    began = time.monotonic()
    try:
        created_topics = kafka.ensure_topics(bootstrap, connector_topics(), timeout=15.0)
    except Exception as err:  # KafkaException, RuntimeError: the broker is unreachable or refused
        raise RegistrationError(
            "creating the connector's topics on %s failed: %s (is the broker running? "
            "bazel run //deploy/kafka:broker)" % (bootstrap, err)
        ) from None
    config = connectors.iot_readings_cdc(source, exactly_once=exactly_once)
    created = put_config(connect_url, connectors.IOT_READINGS_CDC, config)
    LOG.info("event=connector_%s name=%s connect=%s topics_created=%s", "created" if created else "updated",
             connectors.IOT_READINGS_CDC, connect_url, ",".join(created_topics) or "none")
    result = wait_running(connect_url, connectors.IOT_READINGS_CDC, timeout)
    LOG.info("event=connector_running name=%s seconds=%.1f", connectors.IOT_READINGS_CDC, time.monotonic() - began)
    return result


def _default_dsn() -> str:
    from deploy.postgres import migrate

    return "host=127.0.0.1 port=%s dbname=%s user=%s password=%s" % (
        os.environ.get("DP_POSTGRES_PORT", "5432"), os.environ.get("DP_POSTGRES_DB", "datapipelines"),
        migrate.CDC_ROLE, os.environ.get("DP_POSTGRES_CDC_PASSWORD") or migrate.DEFAULT_CDC_PASSWORD,
    )


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="register",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Register the Debezium connector %s (public.readings -> the CDC topic) on a Kafka Connect\n"
            "worker, idempotently, and wait until it and its task are RUNNING." % connectors.IOT_READINGS_CDC
        ),
        epilog=(
            "The DSN's role needs REPLICATION and SELECT on public.readings (dp_cdc from\n"
            "deploy/postgres/migrations). Stack order: broker, postgres, worker, then this.\n"
            "Example: bazel run //deploy/connect:register -- --connect http://127.0.0.1:8083"
        ),
    )
    parser.add_argument("--connect", default=env("DP_CONNECT_URL", "http://127.0.0.1:%s" % env("DP_CONNECT_PORT", "8083")),
                        help="Connect REST URL [env DP_CONNECT_URL, default http://127.0.0.1:$DP_CONNECT_PORT or :8083]")
    parser.add_argument("--bootstrap", default=env("DP_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="Kafka bootstrap servers, to create the connector's topics "
                             "[env DP_KAFKA_BOOTSTRAP, default 127.0.0.1:9092]")
    parser.add_argument("--postgres-dsn", default=env("DP_POSTGRES_CDC_DSN"),
                        help="libpq DSN of the CDC role over TCP [env DP_POSTGRES_CDC_DSN, default the local "
                             "stack: host=127.0.0.1 port=$DP_POSTGRES_PORT|5432 dbname=datapipelines user=dp_cdc]")
    parser.add_argument("--postgres-password", default=None,
                        help="overrides the DSN's password; '${env:NAME}' makes the worker read it from its "
                             "own environment instead of storing it in the configs topic")
    parser.add_argument("--exactly-once", dest="exactly_once", action=argparse.BooleanOptionalAction, default=True,
                        help="require the worker's exactly-once source support [default on]")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for RUNNING [120]")
    parser.add_argument("--print-config", action="store_true",
                        help="print the connector config (password masked) and exit without registering")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("datapipelines.kafka").setLevel(logging.WARNING)
    args = parse_args(argv)
    try:
        source = connectors.PostgresSource.from_dsn(args.postgres_dsn or _default_dsn(), args.postgres_password)
    except ValueError as err:
        print("bad --postgres-dsn: %s" % err, file=sys.stderr)
        return 2
    if args.print_config:
        config = connectors.iot_readings_cdc(dataclasses.replace(source, password="***"), args.exactly_once)
        print(json.dumps({"name": connectors.IOT_READINGS_CDC, "config": config}, indent=2))
        return 0
    try:
        result = register_iot_readings_cdc(args.connect, args.bootstrap, source, args.exactly_once, args.timeout)
    except RegistrationError as err:
        print("registering %s failed: %s" % (connectors.IOT_READINGS_CDC, err), file=sys.stderr)
        return 1
    except OSError as err:
        print("Kafka Connect at %s is unreachable (%s): start it with bazel run //deploy/connect:worker"
              % (args.connect, err), file=sys.stderr)
        return 1
    print("connector %s RUNNING on %s (tasks: %s)" % (result.name, args.connect, ", ".join(result.task_states)))
    print(json.dumps(result.raw, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
