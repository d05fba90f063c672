"""Apache Superset 6.1 on loopback, provisioned from code: the BI layer over the commerce marts.

    bazel run //deploy/superset:server -- --help

One command takes an empty state directory to a serving Superset: configuration from the
environment (deploy/superset/superset_config.py), `superset db upgrade`, `superset init`, the
admin user, the dashboard bundle built from deploy/superset/dashboards/*.yaml (revenue, funnel,
cohorts, top products, RFM over PostgreSQL schema `mart`), and the PostgreSQL connection those
dashboards query. Then gunicorn serves `superset.app:create_app()` on 127.0.0.1:PORT until
SIGTERM/Ctrl-C, which stops it gracefully (in-flight requests finish).

A second start on the same state directory is idempotent: the metadata database is kept, `init`
is skipped while the Superset version is unchanged, the bundle is re-imported over the existing
dashboards (same UUIDs, so nothing is duplicated) and the connection URI is set again (an import
never changes an existing connection's credentials).

Everything Superset keeps lives under <state-dir>/superset: superset.db (metadata, SQLite),
secret_key and admin_password (0600, only when generated here), bootstrap.json, log/.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, Optional, Sequence

from deploy.common import process

LOG = logging.getLogger("superset_server")

DEFAULT_PORT = 8088
DEFAULT_HOST = "127.0.0.1"
# The connection the dashboards' datasets point at; the name is the one in
# dashboards/databases/marts.yaml (the import matches the connection by UUID, this by name).
DATABASE_NAME = "Data Pipelines marts"
# deploy/postgres on its default port, as the application role (local stack only).
DEFAULT_DATABASE_URI = "postgresql+psycopg2://dp_app:dp-app-local@127.0.0.1:5432/datapipelines"
DEFAULT_ADMIN = "admin"
# Chart results are cached for an hour: the DAG's last task invalidates and re-warms them after
# each published day, and a day published without it (no Superset configured) shows within the hour.
DEFAULT_CACHE_SECONDS = 3600
# Workspace paths of the runfiles this launcher needs.
CONFIG_RUNFILE = "deploy/superset/superset_config.py"
BUNDLE_RUNFILE = "deploy/superset/dashboards.zip"
# Dashboards of the bundle, by slug: printed as URLs and checked after every import.
DASHBOARD_SLUGS = ("commerce-revenue", "commerce-funnel", "commerce-cohorts", "commerce-top-products", "commerce-rfm")


class SupersetError(RuntimeError):
    """Superset could not be set up, started or stopped; the message says why and what to do."""


def superset_version() -> str:
    return importlib.metadata.version("apache-superset")


def redact_uri(uri: str) -> str:
    """The URI with its password replaced by ***, for logs and errors."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(":%s@" % parts.password, ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclasses.dataclass(frozen=True)
class SupersetConfig:
    """Everything one Superset needs; `parse_args` gives the local-stack defaults."""

    state_dir: pathlib.Path
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    database_uri: str = DEFAULT_DATABASE_URI
    admin_username: str = DEFAULT_ADMIN
    admin_password: str = ""  # empty: read from the state directory, else generated there
    admin_email: str = "admin@localhost"
    secret_key: str = ""  # empty: read from the state directory, else generated there
    bundle: Optional[pathlib.Path] = None  # default: the bundle built from dashboards/*.yaml
    workers: int = 1
    threads: int = 4
    cache_seconds: int = DEFAULT_CACHE_SECONDS  # chart results kept this long; 0: no cache
    start_timeout: float = 240.0
    stop_timeout: float = 30.0

    @property
    def superset_dir(self) -> pathlib.Path:
        return self.state_dir / "superset"

    @property
    def log_dir(self) -> pathlib.Path:
        return self.superset_dir / "log"

    @property
    def metadata_db(self) -> pathlib.Path:
        return self.superset_dir / "superset.db"

    @property
    def url(self) -> str:
        return "http://%s:%d" % (self.host, self.port)


def _secret_file(path: pathlib.Path, generate) -> str:
    """The value stored in `path`, or a new one written there readable by the owner only."""
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


class SupersetServer:
    """Bootstraps the metadata in a child process, then runs gunicorn as another child."""

    def __init__(self, config: SupersetConfig):
        self.config = config
        self.process: Optional[subprocess.Popen] = None
        self.admin_password = ""
        self.admin_password_generated = False
        self.bootstrap_report: Dict = {}
        self.bootstrap_seconds: Optional[float] = None
        self.serve_seconds: Optional[float] = None

    # -- files and environment -----------------------------------------------------------

    @property
    def gunicorn_log(self) -> pathlib.Path:
        return self.config.log_dir / "gunicorn.log"

    @property
    def bootstrap_log(self) -> pathlib.Path:
        return self.config.log_dir / "bootstrap.log"

    def _runfile(self, workspace_path: str) -> pathlib.Path:
        # Not resolved: the runfiles tree is symlinks, and the bundle exists only in the tree.
        here = pathlib.Path(os.path.abspath(__file__)).parent
        candidate = here / pathlib.Path(workspace_path).name
        if candidate.exists():
            return candidate
        for root in (os.environ.get("RUNFILES_DIR"), os.environ.get("TEST_SRCDIR")):
            if root and pathlib.Path(root, "data_pipelines", workspace_path).exists():
                return pathlib.Path(root, "data_pipelines", workspace_path)
        raise SupersetError("%s is not in the runfiles: run this through `bazel run //deploy/superset:server`"
                            % workspace_path)

    def _environment(self) -> Dict[str, str]:
        config = self.config
        secret_key = config.secret_key or _secret_file(
            config.superset_dir / "secret_key", lambda: secrets.token_urlsafe(48))
        env = dict(os.environ)
        env.update({
            "SUPERSET_CONFIG_PATH": str(self._runfile(CONFIG_RUNFILE)),
            "SUPERSET_HOME": str(config.superset_dir),
            "DP_SUPERSET_SECRET_KEY": secret_key,
            "DP_SUPERSET_METADATA_URI": "sqlite:///%s" % config.metadata_db,
            "DP_SUPERSET_CACHE_SECONDS": str(config.cache_seconds),
            # Superset's CLI and gunicorn's workers resolve `superset` through this interpreter.
            "PYTHONUNBUFFERED": "1",
        })
        # Superset imports matplotlib-free pandas code paths only, but keep caches out of $HOME
        # (unset inside Bazel's sandbox).
        env.setdefault("HOME", str(config.superset_dir))
        return env

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, cancel: Optional[threading.Event] = None) -> "SupersetServer":
        config = self.config
        if process.port_is_open(config.host, config.port):
            raise SupersetError("%s:%d is already in use: stop what listens there or pass --port"
                                % (config.host, config.port))
        config.log_dir.mkdir(parents=True, exist_ok=True)
        env = self._environment()
        if config.admin_password:
            self.admin_password = config.admin_password
        else:
            stored = config.superset_dir / "admin_password"
            self.admin_password_generated = not stored.exists()
            self.admin_password = _secret_file(stored, lambda: secrets.token_urlsafe(12))
        bundle = config.bundle or self._runfile(BUNDLE_RUNFILE)
        if not bundle.is_file():
            raise SupersetError("dashboard bundle %s does not exist" % bundle)

        started = time.monotonic()
        self._bootstrap(env, bundle, cancel)
        self.bootstrap_seconds = time.monotonic() - started
        if cancel is not None and cancel.is_set():
            raise SupersetError("stopped before serving")
        started = time.monotonic()
        self._serve(env, cancel)
        self.serve_seconds = time.monotonic() - started
        return self

    def _bootstrap(self, env: Dict[str, str], bundle: pathlib.Path, cancel: Optional[threading.Event]) -> None:
        config = self.config
        report = config.superset_dir / "bootstrap.json"
        child_env = dict(env, DP_SUPERSET_ADMIN_PASSWORD=self.admin_password,
                         DP_SUPERSET_DATABASE_URI=config.database_uri)
        argv = [
            sys.executable, "-m", "deploy.superset.bootstrap",
            "--bundle", str(bundle),
            "--admin-username", config.admin_username,
            "--admin-email", config.admin_email,
            "--database-name", DATABASE_NAME,
            "--report", str(report),
        ]
        for slug in DASHBOARD_SLUGS:
            argv += ["--expect-dashboard", slug]
        print("superset: bootstrapping metadata in %s (log: %s)" % (config.superset_dir, self.bootstrap_log),
              flush=True)
        with open(self.bootstrap_log, "ab") as log:
            child = subprocess.Popen(argv, env=child_env, stdout=subprocess.PIPE, stderr=log,
                                     stdin=subprocess.DEVNULL, preexec_fn=process.die_with_parent())
            assert child.stdout is not None
            for raw in child.stdout:  # progress lines, one per step
                line = raw.decode("utf-8", "replace").rstrip()
                log.write(raw)
                log.flush()
                print(line, flush=True)
                if cancel is not None and cancel.is_set():
                    child.terminate()
            code = child.wait()
        if code != 0:
            raise SupersetError("bootstrap failed (exit %s); last log lines:\n%s"
                                % (code, process.tail(self.bootstrap_log, 30)))
        self.bootstrap_report = json.loads(report.read_text(encoding="utf-8"))

    def _serve(self, env: Dict[str, str], cancel: Optional[threading.Event]) -> None:
        config = self.config
        argv = [
            sys.executable, "-m", "gunicorn",
            "--bind", "%s:%d" % (config.host, config.port),
            "--workers", str(config.workers),
            "--worker-class", "gthread",
            "--threads", str(config.threads),
            "--timeout", "120",
            "--graceful-timeout", str(int(config.stop_timeout)),
            "--access-logfile", "-",
            "--error-logfile", "-",
            "--name", "superset",
            "superset.app:create_app()",
        ]
        with open(self.gunicorn_log, "ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=process.die_with_parent())
        deadline = time.monotonic() + config.start_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise SupersetError("stopped while starting")
            code = self.process.poll()
            if code is not None:
                raise SupersetError("gunicorn exited with %s while starting; last log lines:\n%s"
                                    % (code, process.tail(self.gunicorn_log, 30)))
            healthy, last = self.health()
            if healthy:
                return
            time.sleep(0.5)
        raise SupersetError("superset not healthy at %s/health after %.0f s (%s); last log lines:\n%s"
                            % (config.url, config.start_timeout, last, process.tail(self.gunicorn_log, 30)))

    def health(self) -> tuple:
        """(healthy, what was seen) from GET /health."""
        try:
            with urllib.request.urlopen(self.config.url + "/health", timeout=5) as response:
                body = response.read().decode("utf-8", "replace").strip()
                return response.status == 200 and body == "OK", "HTTP %d %s" % (response.status, body[:40])
        except urllib.error.HTTPError as exc:
            return False, "HTTP %d" % exc.code
        except OSError as exc:
            return False, str(exc)

    def stop(self) -> int:
        """SIGTERM to gunicorn (graceful: workers finish their requests), SIGKILL after the timeout."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.config.stop_timeout + 10)
            except subprocess.TimeoutExpired:
                LOG.warning("event=kill reason=stop_timeout pid=%d", self.process.pid)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "SupersetServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def default_state_dir() -> pathlib.Path:
    """<workspace>/.state under `bazel run` (ignored by git), else a new temporary directory."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if workspace:
        return pathlib.Path(workspace) / ".state"
    return pathlib.Path(tempfile.mkdtemp(prefix="dp-state-"))


def _build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="server",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Run Apache Superset %s on loopback, provisioned from code: metadata (SQLite), admin user,\n"
            "the PostgreSQL connection to the commerce marts and the dashboards of\n"
            "deploy/superset/dashboards. Serves until SIGTERM/Ctrl-C, then stops gracefully (exit 0).\n"
            "Re-running on the same state directory updates dashboards and the connection in place."
            % "6.1"
        ),
        epilog=(
            "Files: <state-dir>/superset/superset.db (metadata), secret_key and admin_password\n"
            "(generated on the first start when not given, mode 0600), bootstrap.json, log/.\n"
            "Secrets are read from the environment, never from flags that show in `ps`.\n\n"
            "Example: DP_SUPERSET_ADMIN_PASSWORD=... bazel run //deploy/superset:server -- --port 18088 \\\n"
            "           --database-uri postgresql+psycopg2://dp_app:PASSWORD@127.0.0.1:15432/datapipelines"
        ),
    )
    parser.add_argument("--port", type=int, default=process.env_int("DP_SUPERSET_PORT", DEFAULT_PORT, "a port number"),
                        help="HTTP port on 127.0.0.1 [env DP_SUPERSET_PORT, default %d]" % DEFAULT_PORT)
    parser.add_argument("--state-dir", type=pathlib.Path,
                        default=pathlib.Path(env("DP_STATE_DIR")) if env("DP_STATE_DIR") else None,
                        help="state root; Superset uses <state-dir>/superset [env DP_STATE_DIR, default "
                             "<workspace>/.state under bazel run, else a new temporary directory]")
    parser.add_argument("--database-uri", default=env("DP_SUPERSET_DATABASE_URI", DEFAULT_DATABASE_URI),
                        help="SQLAlchemy URI of the PostgreSQL database holding schema `mart` "
                             "[env DP_SUPERSET_DATABASE_URI, default the local stack's %s]"
                             % redact_uri(DEFAULT_DATABASE_URI))
    parser.add_argument("--admin-username", default=env("DP_SUPERSET_ADMIN_USER", DEFAULT_ADMIN),
                        help="admin user name [env DP_SUPERSET_ADMIN_USER, default %s]" % DEFAULT_ADMIN)
    parser.add_argument("--admin-email", default=env("DP_SUPERSET_ADMIN_EMAIL", "admin@localhost"),
                        help="admin e-mail [env DP_SUPERSET_ADMIN_EMAIL]")
    parser.add_argument("--bundle", type=pathlib.Path, default=None,
                        help="dashboard import zip [default: the one built from deploy/superset/dashboards]")
    parser.add_argument("--workers", type=int, default=process.env_int("DP_SUPERSET_WORKERS", 1),
                        help="gunicorn worker processes [env DP_SUPERSET_WORKERS, default 1]")
    parser.add_argument("--threads", type=int, default=process.env_int("DP_SUPERSET_THREADS", 4),
                        help="threads per worker [env DP_SUPERSET_THREADS, default 4]")
    parser.add_argument("--cache-seconds", type=int,
                        default=process.env_int("DP_SUPERSET_CACHE_SECONDS", DEFAULT_CACHE_SECONDS, "seconds"),
                        help="how long chart results stay cached (files in <state-dir>/superset/cache); the "
                             "DAG's refresh_dashboards invalidates and re-warms them after each published day; "
                             "0 turns the cache off [env DP_SUPERSET_CACHE_SECONDS, default %d]"
                             % DEFAULT_CACHE_SECONDS)
    parser.add_argument("--start-timeout", type=float, default=240.0,
                        help="seconds to wait for the bootstrap and /health [240]")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> SupersetConfig:
    args = _build_parser().parse_args(argv)
    if args.cache_seconds < 0:
        raise SystemExit("--cache-seconds must be 0 (no cache) or more, got %d" % args.cache_seconds)
    if not args.database_uri.startswith("postgresql"):
        raise SystemExit("--database-uri must be a postgresql:// SQLAlchemy URI, got %s" % redact_uri(args.database_uri))
    return SupersetConfig(
        state_dir=(args.state_dir or default_state_dir()).absolute(),
        port=args.port,
        database_uri=args.database_uri,
        admin_username=args.admin_username,
        admin_password=os.environ.get("DP_SUPERSET_ADMIN_PASSWORD", ""),
        admin_email=args.admin_email,
        secret_key=os.environ.get("DP_SUPERSET_SECRET_KEY", ""),
        bundle=args.bundle.absolute() if args.bundle else None,
        workers=args.workers,
        threads=args.threads,
        cache_seconds=args.cache_seconds,
        start_timeout=args.start_timeout,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = parse_args(argv)
    stop_requested = process.stop_on_signals(LOG)

    server = SupersetServer(config)
    try:
        server.start(cancel=stop_requested)
    except SupersetError as err:
        server.stop()
        print("superset failed to start: %s" % err, file=sys.stderr)
        return 0 if stop_requested.is_set() else 1
    report = server.bootstrap_report
    print("superset %s ready on %s (bootstrap %.1f s: %s; serve %.1f s; state: %s; logs: %s)" % (
        superset_version(), config.url, server.bootstrap_seconds,
        ", ".join("%s %.1f s" % (step, seconds) for step, seconds in report.get("steps", {}).items()),
        server.serve_seconds, config.superset_dir, config.log_dir), flush=True)
    password_note = ("generated, stored in %s" % (config.superset_dir / "admin_password")
                     if server.admin_password_generated else "from DP_SUPERSET_ADMIN_PASSWORD"
                     if config.admin_password else "stored in %s" % (config.superset_dir / "admin_password"))
    print("  login: %s / %s (%s)" % (config.admin_username, server.admin_password, password_note), flush=True)
    print("  database %r -> %s" % (DATABASE_NAME, redact_uri(config.database_uri)), flush=True)
    for slug in DASHBOARD_SLUGS:
        print("  dashboard: %s/superset/dashboard/%s/" % (config.url, slug), flush=True)
    while not stop_requested.wait(0.5):
        if server.process is None or server.process.poll() is not None:
            code = server.stop()
            print("superset exited by itself with %s; see %s" % (code, server.gunicorn_log), file=sys.stderr)
            return 1
    code = server.stop()
    if code not in (0, -signal.SIGTERM):
        print("superset stopped with exit %s; see %s" % (code, server.gunicorn_log), file=sys.stderr)
        return 1
    print("superset stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
