"""The analytics store: one API, two backends running the same SQL.

- `ChdbStore(path)`: ClickHouse in-process (chdb), the default on one machine. Only one process
  may open a chdb data path, so the analytics service is the store's single owner and readers
  go through its HTTP API (docs/adr/0007-analytics-store.md).
- `ClickHouseServerStore(...)`: a ClickHouse server through clickhouse-connect, when one is
  configured (`--clickhouse-url`). Grafana or Superset may then read the server directly.

Every statement is plain ClickHouse SQL; the migrations, the sink's inserts and the named
queries are byte-for-byte the same on both. Query values are never spliced into SQL text: they
travel as ClickHouse query parameters (`{name:Type}` placeholders, bound and type-checked by the
engine), which both chdb and the server protocol support.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pathlib
import threading
import urllib.parse
from typing import Any, Mapping, Optional, Sequence

LOG = logging.getLogger("analytics.store")

# Inserts are length-delimited protobuf messages. A ClickHouse server gets the schema inline
# (protobuf_insert_settings: no schema file on the server); chdb reads it from a file in its
# data path (ChdbStore.schema_file).
PROTOBUF_FORMAT = "Protobuf"

# Where ChdbStore keeps the .proto files of its Protobuf inserts, inside its data path.
FORMAT_SCHEMA_DIR = "format_schemas"


class StoreError(RuntimeError):
    """A statement failed in the store; the message names the backend and the statement."""


@dataclasses.dataclass(frozen=True)
class QueryResult:
    columns: tuple
    rows: list  # of tuples, in `columns` order

    def dicts(self) -> list:
        return [dict(zip(self.columns, row)) for row in self.rows]


def protobuf_insert_settings(schema: str, message_name: str) -> dict:
    return {
        "format_schema_source": "string",
        "format_schema": schema,
        "format_schema_message_name": message_name,
    }


def sql_string(value: str) -> str:
    """A ClickHouse string literal (only for settings the engine needs inline, never user input)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def escape_parameter(value: str) -> str:
    """A query parameter value in the escaped text form ClickHouse parses parameters with."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _short(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 160 else text[:157] + "..."


class Store:
    """The operations the service needs; see ChdbStore and ClickHouseServerStore."""

    backend = "abstract"
    database = ""

    def command(self, sql: str) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: Optional[Mapping[str, Any]] = None) -> QueryResult:
        raise NotImplementedError

    def insert_protobuf(self, table: str, schema: str, message_name: str, payload: bytes) -> None:
        """Insert length-delimited protobuf messages (see protobuf_schema.frame) into `table`."""
        raise NotImplementedError

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert a few rows given as Python values (bookkeeping, not the hot path)."""
        raise NotImplementedError

    def ping(self) -> bool:
        try:
            return self.query("SELECT 1 AS ok").rows == [(1,)]
        except StoreError:
            return False

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class ChdbStore(Store):
    """chdb (ClickHouse in-process) at a data directory this process owns.

    Two sessions on the one path: the writer (DDL, inserts) and the reader (queries), each
    behind its own lock, so HTTP queries are not held up by a streaming insert (a chdb
    connection accepts nothing else while an insert is open).
    """

    backend = "chdb"

    def __init__(self, path: pathlib.Path | str, database: str = "datapipelines"):
        from chdb import session as chdb_session  # imported here: the server mode does not need it

        self.path = pathlib.Path(path)
        self.database = database
        if ":" in str(self.path.resolve()):
            # format_schema is `<file>:<message>`; ClickHouse splits it at the first colon.
            raise StoreError("chdb data path %s contains ':', which the Protobuf inserts cannot name; "
                             "choose a --data-dir without it" % self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = chdb_session.Session(str(self.path))
        except Exception as err:  # chdb raises RuntimeError subclasses with the engine's text
            text = str(err)
            if "Cannot lock file" in text or "already running" in text:
                raise StoreError(
                    "chdb data path %s is open in another process (only one process may own it): stop "
                    "the other analytics service or point --data-dir elsewhere" % self.path
                ) from None
            raise StoreError("cannot open chdb at %s: %s" % (self.path, text)) from None
        self._reader = chdb_session.Session(str(self.path))
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False
        self._run(self._writer, "CREATE DATABASE IF NOT EXISTS `%s`" % database)
        self._run(self._writer, "USE `%s`" % database)
        self._run(self._reader, "USE `%s`" % database)
        self.format_schema_path = self.path.resolve() / FORMAT_SCHEMA_DIR
        self.format_schema_path.mkdir(exist_ok=True)
        self._schema_files: dict = {}  # schema text -> its file in format_schema_path

    def _run(self, session, sql: str, fmt: str = "CSV", params: Optional[Mapping[str, Any]] = None):
        if self._closed:
            raise StoreError("chdb store at %s is closed" % self.path)
        try:
            return session.query(sql, fmt, params=params or None)
        except Exception as err:
            raise StoreError("chdb at %s failed: %s; statement: %s" % (self.path, str(err).strip(), _short(sql))) from None

    def command(self, sql: str) -> None:
        with self._write_lock:
            self._run(self._writer, sql)

    def query(self, sql: str, params: Optional[Mapping[str, Any]] = None) -> QueryResult:
        bound = {name: escape_parameter(str(value)) for name, value in (params or {}).items()}
        with self._read_lock:
            table = self._run(self._reader, sql, "ArrowTable", bound)
        columns = tuple(table.column_names)
        data = [table.column(i).to_pylist() for i in range(len(columns))]
        return QueryResult(columns, list(zip(*data)) if data else [])

    def _send_insert(self, statement: str, fmt: str, payload: bytes) -> None:
        if self._closed:
            raise StoreError("chdb store at %s is closed" % self.path)
        with self._write_lock:
            try:
                with self._writer.send_insert(statement, fmt) as inserter:
                    inserter.append(payload)
                    inserter.finish()
            except Exception as err:
                raise StoreError("chdb insert at %s failed: %s; statement: %s"
                                 % (self.path, str(err).strip(), _short(statement))) from None

    def schema_file(self, schema: str) -> pathlib.Path:
        """The schema as a file in `<data path>/format_schemas/`, named by its SHA-256.

        clickhouse-local (the engine inside chdb) never applies the `format_schema_path` server
        setting: relative schema files, and the `__cache__/` folder that
        `format_schema_source='string'` writes, land in the process's working directory. An
        absolute path keeps them in the data path. Content-addressed names, because the engine
        caches a parsed schema by its file name for the life of the process.
        """
        path = self._schema_files.get(schema)
        if path is None:
            path = self.format_schema_path / (hashlib.sha256(schema.encode("utf-8")).hexdigest()[:32] + ".proto")
            if not path.is_file() or path.read_text(encoding="utf-8") != schema:
                partial = path.with_name(path.name + ".tmp-%d" % os.getpid())
                partial.write_text(schema, encoding="utf-8")
                os.replace(partial, path)
            self._schema_files[schema] = path
        return path

    def insert_protobuf(self, table: str, schema: str, message_name: str, payload: bytes) -> None:
        if self._closed:
            raise StoreError("chdb store at %s is closed" % self.path)
        try:
            schema_file = self.schema_file(schema)
        except OSError as err:
            raise StoreError("cannot write the Protobuf schema into %s: %s" % (self.format_schema_path, err)) from None
        settings = "format_schema_source = 'file', format_schema = %s" % sql_string(
            "%s:%s" % (schema_file, message_name))
        self._send_insert("INSERT INTO %s SETTINGS %s" % (table, settings), PROTOBUF_FORMAT, payload)

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        import pyarrow as pa

        arrays = [pa.array([row[i] for row in rows]) for i in range(len(columns))]
        batch = pa.table(arrays, names=list(columns))
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_table(batch)
        self._send_insert("INSERT INTO %s (%s)" % (table, ", ".join(columns)), "ArrowStream", sink.getvalue())

    def insert_arrow_stream(self, table: str, columns: Sequence[str], payload: bytes) -> None:
        """Raw ArrowStream bytes into `table` (the benchmark's baseline path)."""
        self._send_insert("INSERT INTO %s (%s)" % (table, ", ".join(columns)), "ArrowStream", payload)

    def describe(self) -> str:
        return "chdb path=%s database=%s" % (self.path, self.database)

    def close(self) -> None:
        if self._closed:
            return
        with self._write_lock, self._read_lock:
            self._closed = True
            self._reader.close()
            self._writer.close()
        LOG.info("event=store_closed backend=chdb path=%s", self.path)


@dataclasses.dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    user: str
    password: str
    database: str
    secure: bool

    def redacted(self) -> str:
        scheme = "https" if self.secure else "http"
        return "%s://%s@%s:%d/%s" % (scheme, self.user, self.host, self.port, self.database)


def parse_clickhouse_url(url: str, password: Optional[str] = None) -> ServerAddress:
    """`http(s)://user[:password]@host[:port]/database`; `password` (from the environment) wins."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("--clickhouse-url %r: want http(s)://user@host:port/database (the HTTP interface)" % url)
    database = parts.path.strip("/") or "datapipelines"
    if "/" in database:
        raise ValueError("--clickhouse-url %r: the path must be one database name" % url)
    secure = parts.scheme == "https"
    return ServerAddress(
        host=parts.hostname,
        port=parts.port or (8443 if secure else 8123),
        user=urllib.parse.unquote(parts.username or "default"),
        password=password if password is not None else urllib.parse.unquote(parts.password or ""),
        database=database,
        secure=secure,
    )


class ClickHouseServerStore(Store):
    """A ClickHouse server through clickhouse-connect (HTTP interface).

    `client` may be given instead of an address: any object with clickhouse-connect's `Client`
    API (the tests pass one backed by chdb, and a recording fake for the contract test).
    """

    backend = "clickhouse-server"

    def __init__(self, address: Optional[ServerAddress] = None, client: Any = None, database: Optional[str] = None):
        self.address = address
        self.database = database or (address.database if address else "datapipelines")
        if client is None:
            if address is None:
                raise ValueError("ClickHouseServerStore needs an address or a client")
            import clickhouse_connect

            try:
                # Connect without a database first: it may not exist yet.
                client = clickhouse_connect.get_client(
                    host=address.host, port=address.port, username=address.user, password=address.password,
                    secure=address.secure, database="default",
                )
            except Exception as err:
                raise StoreError("cannot reach ClickHouse at %s: %s (is the server up? check --clickhouse-url)"
                                 % (address.redacted(), str(err).strip())) from None
        self._client = client
        self._lock = threading.Lock()  # one HTTP session per client: keep statements in order
        self._call(self._client.command, "CREATE DATABASE IF NOT EXISTS `%s`" % self.database)
        self._client.database = self.database

    def _call(self, method, sql: str, **kwargs):
        try:
            with self._lock:
                return method(sql, **kwargs)
        except StoreError:
            raise
        except Exception as err:
            raise StoreError("ClickHouse %s failed: %s; statement: %s"
                             % (self.describe(), str(err).strip(), _short(sql))) from None

    def command(self, sql: str) -> None:
        self._call(self._client.command, sql)

    def query(self, sql: str, params: Optional[Mapping[str, Any]] = None) -> QueryResult:
        result = self._call(self._client.query, sql, parameters=dict(params or {}))
        return QueryResult(tuple(result.column_names), [tuple(row) for row in result.result_rows])

    def insert_protobuf(self, table: str, schema: str, message_name: str, payload: bytes) -> None:
        self._call(lambda t, **kw: self._client.raw_insert(t, **kw), table, insert_block=payload,
                   settings=protobuf_insert_settings(schema, message_name), fmt=PROTOBUF_FORMAT)

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self._call(lambda t, **kw: self._client.insert(t, **kw), table,
                   data=[list(row) for row in rows], column_names=list(columns))

    def describe(self) -> str:
        if self.address is not None:
            return "server %s" % self.address.redacted()
        return "clickhouse-connect client %s database=%s" % (type(self._client).__name__, self.database)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as err:  # closing must not hide the shutdown path
            LOG.warning("event=store_close_failed backend=clickhouse-server error=%r", str(err))
        LOG.info("event=store_closed backend=clickhouse-server")
