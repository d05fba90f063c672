"""Where the commerce DAG finds its services: Airflow Variables and Connections, else environment, else defaults.

Two kinds of settings, read at two different times:

- `DagSettings` shape the DAG (start date, retries, sensor timing). They are read from the
  environment when the scheduler parses the file, so they must stay cheap: no Variable, no
  Connection, no network.
- `RuntimeSettings` say where the services are. Tasks read them when they run, through
  `resolve()`, which takes the lookups as arguments (Airflow's Variable/Connection getters in
  a task, plain dicts in the unit tests).

Every runtime setting, first match wins (jobs/commerce/dags/README.md has the table):

| setting | Airflow Variable | Connection | environment | default |
|---|---|---|---|---|
| WebHDFS | commerce_webhdfs_url | | DP_WEBHDFS_URL | http://127.0.0.1:9870/webhdfs/v1 |
| raw root | commerce_raw_root | | DP_COMMERCE_RAW_ROOT | hdfs://127.0.0.1:8020/raw/commerce/events |
| Spark Connect | commerce_spark_remote | | DP_SPARK_REMOTE | sc://127.0.0.1:15002 |
| PostgreSQL | commerce_postgres_dsn | commerce_postgres | DP_COMMERCE_POSTGRES_DSN | dp_app on 127.0.0.1:5432 |
| Superset | commerce_superset_url | commerce_superset | DP_SUPERSET_URL | none: refresh is skipped |
| job launcher | | | DP_COMMERCE_JOB | none: the submit task fails and says how to set it |
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import urllib.parse
from typing import Callable, Mapping, Optional

DEFAULT_WEBHDFS_URL = "http://127.0.0.1:9870/webhdfs/v1"
DEFAULT_RAW_ROOT = "hdfs://127.0.0.1:8020/raw/commerce/events"
DEFAULT_SPARK_REMOTE = "sc://127.0.0.1:15002"
# The local stack's application role (deploy/postgres); loopback only, never anywhere else.
DEFAULT_POSTGRES_DSN = "host=127.0.0.1 port=5432 dbname=datapipelines user=dp_app password=dp-app-local"
DEFAULT_SUPERSET_USER = "admin"
DEFAULT_START_DATE = "2026-01-01"

POSTGRES_CONN_ID = "commerce_postgres"
SUPERSET_CONN_ID = "commerce_superset"


class SettingsError(ValueError):
    """A setting is malformed; the message names it, where it came from, and the expected form."""


@dataclasses.dataclass(frozen=True)
class DagSettings:
    """What shapes the DAG; from the environment at parse time."""

    start_date: datetime.date
    retries: int
    retry_delay: datetime.timedelta
    max_retry_delay: datetime.timedelta
    sensor_poke_interval: datetime.timedelta
    sensor_timeout: datetime.timedelta
    job_timeout: datetime.timedelta


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError("%s=%r is not a whole number" % (name, raw)) from None
    if value < minimum:
        raise SettingsError("%s=%d must be at least %d" % (name, value, minimum))
    return value


def dag_settings(env: Optional[Mapping[str, str]] = None) -> DagSettings:
    """DagSettings from `env` (default: os.environ)."""
    env = os.environ if env is None else env
    raw_start = env.get("DP_COMMERCE_START_DATE") or DEFAULT_START_DATE
    try:
        start = datetime.date.fromisoformat(raw_start)
    except ValueError:
        raise SettingsError("DP_COMMERCE_START_DATE=%r is not a day (YYYY-MM-DD)" % raw_start) from None
    seconds = datetime.timedelta(seconds=1)
    return DagSettings(
        start_date=start,
        retries=_env_int(env, "DP_COMMERCE_RETRIES", 3),
        retry_delay=_env_int(env, "DP_COMMERCE_RETRY_DELAY_SECONDS", 60, 1) * seconds,
        max_retry_delay=_env_int(env, "DP_COMMERCE_MAX_RETRY_DELAY_SECONDS", 1800, 1) * seconds,
        sensor_poke_interval=_env_int(env, "DP_COMMERCE_SENSOR_POKE_SECONDS", 300, 1) * seconds,
        sensor_timeout=_env_int(env, "DP_COMMERCE_SENSOR_TIMEOUT_SECONDS", 12 * 3600, 1) * seconds,
        job_timeout=_env_int(env, "DP_COMMERCE_JOB_TIMEOUT_SECONDS", 2 * 3600, 1) * seconds,
    )


@dataclasses.dataclass(frozen=True)
class ConnectionInfo:
    """The parts of an Airflow Connection the DAG uses."""

    conn_type: str = ""
    host: str = ""
    port: Optional[int] = None
    login: str = ""
    password: str = ""
    schema: str = ""
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """Where the services are, for one task run. `describe()` is safe to log (no secrets)."""

    webhdfs_url: str
    raw_root: str
    spark_remote: str
    postgres_dsn: str
    superset_url: Optional[str]
    superset_user: str
    superset_password: str
    job_launcher: Optional[str]
    sources: Mapping[str, str]

    @property
    def raw_path(self) -> str:
        """The raw root as a file-system path (/raw/commerce/events) for WebHDFS."""
        return urllib.parse.urlsplit(self.raw_root).path.rstrip("/") or "/"

    def partition_path(self, day: str) -> str:
        return "%s/dt=%s" % (self.raw_path.rstrip("/"), day)

    def describe(self) -> str:
        values = {
            "webhdfs_url": self.webhdfs_url,
            "raw_root": self.raw_root,
            "spark_remote": self.spark_remote,
            "postgres_dsn": redact_dsn(self.postgres_dsn),
            "superset_url": self.superset_url or "(none)",
            "job_launcher": self.job_launcher or "(unset)",
        }
        return " ".join("%s=%s[%s]" % (k, v, self.sources.get(k, "default")) for k, v in values.items())


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ***."""
    dsn = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)


def normalise_webhdfs_url(url: str) -> str:
    """http://HOST:PORT, or with /webhdfs/v1 already, -> http://HOST:PORT/webhdfs/v1."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError("WebHDFS URL %r: want http://HOST:PORT[/webhdfs/v1]" % url)
    path = parts.path.rstrip("/")
    if not path.endswith("/webhdfs/v1"):
        path += "/webhdfs/v1"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def connection_dsn(conn: ConnectionInfo) -> str:
    """A libpq DSN from a `postgres` Connection (host, port, login, password, schema = database)."""
    params = {
        "host": conn.host or "127.0.0.1",
        "port": str(conn.port or 5432),
        "dbname": conn.schema or "datapipelines",
        "user": conn.login,
        "password": conn.password,
    }
    for key in ("sslmode", "connect_timeout", "options"):
        if conn.extra.get(key):
            params[key] = str(conn.extra[key])
    return " ".join("%s=%s" % (k, _quote(v)) for k, v in params.items() if v)


def _quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


VariableGetter = Callable[[str], Optional[str]]
ConnectionGetter = Callable[[str], Optional[ConnectionInfo]]


def resolve(variable: VariableGetter, connection: ConnectionGetter,
            env: Optional[Mapping[str, str]] = None) -> RuntimeSettings:
    """RuntimeSettings: Variable, then Connection (where one applies), then env, then default."""
    env = os.environ if env is None else env
    sources = {}

    def pick(key: str, variable_name: str, env_name: str, default: Optional[str]) -> Optional[str]:
        value = variable(variable_name)
        if value:
            sources[key] = "variable " + variable_name
            return value.strip()
        if env.get(env_name):
            sources[key] = "env " + env_name
            return env[env_name].strip()
        sources[key] = "default"
        return default

    webhdfs = normalise_webhdfs_url(pick("webhdfs_url", "commerce_webhdfs_url", "DP_WEBHDFS_URL", DEFAULT_WEBHDFS_URL))
    raw_root = pick("raw_root", "commerce_raw_root", "DP_COMMERCE_RAW_ROOT", DEFAULT_RAW_ROOT)
    if not re.match(r"^(hdfs|webhdfs)://[^/]+/", raw_root):
        raise SettingsError("raw root %r (%s): want hdfs://HOST:PORT/PATH" % (raw_root, sources["raw_root"]))
    spark_remote = pick("spark_remote", "commerce_spark_remote", "DP_SPARK_REMOTE", DEFAULT_SPARK_REMOTE)
    if not spark_remote.startswith("sc://"):
        raise SettingsError("Spark Connect URL %r (%s): want sc://HOST:PORT" % (spark_remote, sources["spark_remote"]))

    dsn = variable("commerce_postgres_dsn")
    if dsn:
        sources["postgres_dsn"] = "variable commerce_postgres_dsn"
    else:
        conn = connection(POSTGRES_CONN_ID)
        if conn is not None:
            dsn = connection_dsn(conn)
            sources["postgres_dsn"] = "connection " + POSTGRES_CONN_ID
        elif env.get("DP_COMMERCE_POSTGRES_DSN"):
            dsn = env["DP_COMMERCE_POSTGRES_DSN"]
            sources["postgres_dsn"] = "env DP_COMMERCE_POSTGRES_DSN"
        else:
            dsn = DEFAULT_POSTGRES_DSN
            sources["postgres_dsn"] = "default"

    superset_url = variable("commerce_superset_url")
    superset_user = env.get("DP_SUPERSET_USER") or DEFAULT_SUPERSET_USER
    superset_password = env.get("DP_SUPERSET_PASSWORD", "")
    superset_conn = connection(SUPERSET_CONN_ID)
    if superset_url:
        sources["superset_url"] = "variable commerce_superset_url"
    elif superset_conn is not None and superset_conn.host:
        scheme = superset_conn.extra.get("scheme") or "http"
        host = superset_conn.host if "://" in superset_conn.host else "%s://%s" % (scheme, superset_conn.host)
        superset_url = host + (":%d" % superset_conn.port if superset_conn.port else "")
        sources["superset_url"] = "connection " + SUPERSET_CONN_ID
    elif env.get("DP_SUPERSET_URL"):
        superset_url = env["DP_SUPERSET_URL"]
        sources["superset_url"] = "env DP_SUPERSET_URL"
    if superset_conn is not None:
        superset_user = superset_conn.login or superset_user
        superset_password = superset_conn.password or superset_password
    if superset_url:
        parts = urllib.parse.urlsplit(superset_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SettingsError("Superset URL %r (%s): want http://HOST:PORT" % (superset_url, sources["superset_url"]))
        superset_url = superset_url.rstrip("/")

    launcher = env.get("DP_COMMERCE_JOB") or None
    if launcher:
        sources["job_launcher"] = "env DP_COMMERCE_JOB"
    return RuntimeSettings(
        webhdfs_url=webhdfs,
        raw_root=raw_root,
        spark_remote=spark_remote,
        postgres_dsn=dsn,
        superset_url=superset_url or None,
        superset_user=superset_user,
        superset_password=superset_password,
        job_launcher=launcher,
        sources=sources,
    )
