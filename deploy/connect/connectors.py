"""Kafka Connect connector configurations of the project, rendered from the topics module.

`iot_readings_cdc(source)` is the Debezium PostgreSQL connector that streams public.readings
into topics.IOT_CDC_READINGS. Topic names are never spelled here: the route target and the
heartbeat topic come from `datapipelines.topics`. The committed template
deploy/connect/connectors/iot-readings-cdc.json is this function's output with placeholders for
the database address and credentials; `connectors_golden_test` fails when it is stale and

    bazel run //deploy/connect:connectors.update

rewrites it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Dict, Optional

IOT_READINGS_CDC = "iot-readings-cdc"
POSTGRES_CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
REGEX_ROUTER = "org.apache.kafka.connect.transforms.RegexRouter"

# Debezium names its topics <topic.prefix>.<schema>.<table>; the router renames the one table
# topic to the registry's CDC topic.
TOPIC_PREFIX = "iot"
CAPTURED_TABLE = "public.readings"
# Created by deploy/postgres/migrations (the CDC role cannot create publications).
PUBLICATION = "dp_iot_publication"
SLOT = "dp_iot_slot"
HEARTBEAT_INTERVAL_MS = 10_000
# Debezium's defaults are 2048 / 8192 / 500 ms (measured before and after: README "Throughput").
MAX_BATCH_SIZE = 8192
MAX_QUEUE_SIZE = 4 * MAX_BATCH_SIZE
POLL_INTERVAL_MS = 100

TEMPLATE_FILE = "deploy/connect/connectors/iot-readings-cdc.json"
UPDATE_COMMAND = "bazel run //deploy/connect:connectors.update"


@dataclasses.dataclass(frozen=True)
class PostgresSource:
    """Where Debezium connects: the CDC role (REPLICATION + SELECT) over TCP."""

    host: str
    port: str
    database: str
    user: str
    password: str

    @classmethod
    def placeholders(cls) -> "PostgresSource":
        """The template's stand-ins; registration fills in real values."""
        return cls(host="${postgres.host}", port="${postgres.port}", database="${postgres.database}",
                   user="${postgres.user}", password="${postgres.password}")

    @classmethod
    def from_dsn(cls, dsn: str, password: Optional[str] = None) -> "PostgresSource":
        """From a libpq DSN or URI, e.g. "host=127.0.0.1 port=5432 dbname=datapipelines user=dp_cdc password=...".

        A Unix-socket host is refused: Debezium connects over TCP.
        """
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
        host = params.get("host") or "127.0.0.1"
        if host.startswith("/"):
            raise ValueError("the DSN names a Unix socket (%s); Debezium needs a TCP host, e.g. host=127.0.0.1" % host)
        missing = [key for key in ("dbname", "user") if not params.get(key)]
        if missing:
            raise ValueError("the DSN lacks %s" % ", ".join(missing))
        secret = password if password is not None else params.get("password")
        if not secret:
            raise ValueError("no password: put password=... in the DSN or pass --postgres-password")
        return cls(host=host, port=str(params.get("port") or 5432), database=params["dbname"],
                   user=params["user"], password=secret)


def heartbeat_prefix() -> str:
    """Debezium names its heartbeat topic <topic.heartbeat.prefix>.<topic.prefix>: derive the
    prefix from the registry's DEBEZIUM_HEARTBEAT so the two can never disagree."""
    from datapipelines import topics

    suffix = "." + TOPIC_PREFIX
    name = topics.DEBEZIUM_HEARTBEAT.name
    if not name.endswith(suffix):
        raise ValueError("topics.DEBEZIUM_HEARTBEAT (%s) must end in %r, the connector's topic.prefix" % (name, suffix))
    return name[: -len(suffix)]


def _java_regex_literal(text: str) -> str:
    """`text` as a Java regular expression matching exactly itself."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)


def iot_readings_cdc(source: PostgresSource, exactly_once: bool = True) -> Dict[str, str]:
    """The Debezium connector config: public.readings → topics.IOT_CDC_READINGS, keyed by site."""
    from datapipelines import topics

    config = {
        "connector.class": POSTGRES_CONNECTOR_CLASS,
        "tasks.max": "1",  # the PostgreSQL connector runs one task (one replication slot)
        "database.hostname": source.host,
        "database.port": source.port,
        "database.dbname": source.database,
        "database.user": source.user,
        "database.password": source.password,
        # Logical decoding with PostgreSQL's built-in plugin, over the publication the migrations
        # created; the connector never creates or alters publications.
        "plugin.name": "pgoutput",
        "publication.name": PUBLICATION,
        "publication.autocreate.mode": "disabled",
        "slot.name": SLOT,
        # First start: a consistent snapshot of the table (op "r"), then the WAL from the slot.
        "snapshot.mode": "initial",
        "table.include.list": CAPTURED_TABLE,
        "topic.prefix": TOPIC_PREFIX,
        # The record key is the site, not the primary key, so one site's readings share a partition.
        "message.key.columns": "%s:site_id" % CAPTURED_TABLE,
        # A delete is one event with "before"; no null-value tombstone after it (the topic is not compacted).
        "tombstones.on.delete": "false",
        "heartbeat.interval.ms": str(HEARTBEAT_INTERVAL_MS),
        "topic.heartbeat.prefix": heartbeat_prefix(),
        # Values as JSON numbers/strings: double precision columns are doubles anyway; numeric
        # columns (none today) would be doubles rather than base64 bytes.
        "decimal.handling.mode": "double",
        # timestamptz columns (reading_time, inserted_at) arrive as ISO-8601 strings in UTC
        # (io.debezium.time.ZonedTimestamp, e.g. "2024-05-01T12:00:00.123456Z") in every mode;
        # this mode keeps date/time columns without zone at their microsecond precision.
        "time.precision.mode": "adaptive_time_microseconds",
        # Batching between the WAL reader and Connect. With exactly-once support every poll is
        # one Kafka transaction: a poll returns max.batch.size changes as soon as they are queued,
        # else what arrived within poll.interval.ms (Debezium waits that long for a full batch;
        # its default 500 ms was most of the CDC hop's latency under light load).
        "max.batch.size": str(MAX_BATCH_SIZE),
        "max.queue.size": str(MAX_QUEUE_SIZE),
        "poll.interval.ms": str(POLL_INTERVAL_MS),
        "key.converter": JSON_CONVERTER,
        "key.converter.schemas.enable": "false",
        "value.converter": JSON_CONVERTER,
        "value.converter.schemas.enable": "false",
        "transforms": "route",
        "transforms.route.type": REGEX_ROUTER,
        "transforms.route.regex": _java_regex_literal("%s.%s" % (TOPIC_PREFIX, CAPTURED_TABLE)),
        "transforms.route.replacement": topics.IOT_CDC_READINGS.name,
    }
    if exactly_once:
        # Refuse to start on a worker without exactly-once source support rather than silently
        # degrading to at-least-once; each poll's records and offsets form one transaction.
        config["exactly.once.support"] = "required"
        config["transaction.boundary"] = "poll"
    return config


def template() -> Dict[str, object]:
    """The committed template's content: name, the command that regenerates it, the config."""
    return {
        "name": IOT_READINGS_CDC,
        "generated_by": UPDATE_COMMAND,
        "config": iot_readings_cdc(PostgresSource.placeholders()),
    }


def render_template() -> str:
    return json.dumps(template(), indent=2, sort_keys=False) + "\n"


def main() -> int:
    import os
    import pathlib

    workspace = pathlib.Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    path = workspace / TEMPLATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_template(), encoding="utf-8")
    print("wrote %s" % TEMPLATE_FILE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
