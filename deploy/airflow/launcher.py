"""Apache Airflow 3.3 on one machine, loopback only: the environment, the components, health.

`AirflowConfig` says where the state lives and which ports to use; `airflow_env()` turns it
into the environment every Airflow process of this deployment gets (AIRFLOW_HOME in the state
directory, SQLite metadata unless a database URL is given, the DAG folder jobs/commerce/dags
from the runfiles, loopback addresses, persisted secrets, the admin password, and the commerce
job's launcher as DP_COMMERCE_JOB). `AirflowStack` starts the same four components
`airflow standalone` starts (scheduler, DAG processor, triggerer, API server), each in its own
process group, waits for the API server's health endpoint to report all of them healthy, and
stops them with SIGTERM (SIGKILL after a grace period).

Why not `airflow standalone` itself: it starts the scheduler's and the triggerer's log servers,
which bind every interface (Airflow 3.3 has no host setting for them). Here both run with
`--skip-serve-logs`: with the LocalExecutor on one machine the API server reads task logs from
the local log folder, so nothing listens beyond 127.0.0.1. See docs/adr/0014-airflow-orchestration.md.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, List, Mapping, Optional, Sequence

from deploy.common.process import die_with_parent, free_ports, tail

DEFAULT_API_PORT = 8080
ADMIN_USER = "admin"
DAG_ID = "commerce_daily"
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
# The health endpoint names these; all must be "healthy" before the stack counts as up.
HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
# The workspace root inside this program's runfiles: deploy/airflow/launcher.py is two levels down.
WORKSPACE_RUNFILES = pathlib.Path(__file__).absolute().parents[2]


class AirflowError(RuntimeError):
    """Airflow did not start, answer or stop as expected; the message carries the log tail."""


@dataclasses.dataclass(frozen=True)
class AirflowConfig:
    state_dir: pathlib.Path  # AIRFLOW_HOME: airflow.db, logs/, secrets, the `airflow` wrapper
    host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    worker_log_port: int = 0  # configured for completeness; the log servers are not started
    trigger_log_port: int = 0
    database_url: Optional[str] = None  # default: SQLite in state_dir
    dags_folder: pathlib.Path = WORKSPACE_RUNFILES / "jobs" / "commerce" / "dags"
    job_launcher: Optional[pathlib.Path] = None
    admin_password: Optional[str] = None  # default: generated once, kept in state_dir
    unpaused: bool = False
    start_timeout: float = 240.0
    stop_timeout: float = 30.0

    @property
    def base_url(self) -> str:
        return "http://%s:%d" % (self.host, self.api_port)

    @property
    def passwords_file(self) -> pathlib.Path:
        return self.state_dir / "simple_auth_manager_passwords.json"

    @property
    def log_dir(self) -> pathlib.Path:
        return self.state_dir / "logs"

    @property
    def bin_dir(self) -> pathlib.Path:
        return self.state_dir / "bin"


def default_state_dir() -> pathlib.Path:
    """Outside the source tree, so nothing Airflow writes lands in the workspace:
    $DP_AIRFLOW_HOME, else $XDG_STATE_HOME/data-pipelines/airflow, else ~/.local/state/data-pipelines/airflow."""
    if os.environ.get("DP_AIRFLOW_HOME"):
        return pathlib.Path(os.environ["DP_AIRFLOW_HOME"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return pathlib.Path(base) / "data-pipelines" / "airflow"


def default_job_launcher() -> Optional[pathlib.Path]:
    """The commerce marts job's launcher in our runfiles, when it was built with us."""
    candidate = WORKSPACE_RUNFILES / "jobs" / "commerce" / "marts" / "job"
    return candidate if candidate.exists() else None


def with_free_ports(config: AirflowConfig) -> AirflowConfig:
    """Replaces every port given as 0 by a free loopback port."""
    wanted = [config.api_port, config.worker_log_port, config.trigger_log_port]
    picked = iter(free_ports(sum(1 for p in wanted if p == 0), config.host))
    api, worker, trigger = (p if p else next(picked) for p in wanted)
    return dataclasses.replace(config, api_port=api, worker_log_port=worker, trigger_log_port=trigger)


def _persisted_secrets(state_dir: pathlib.Path) -> Dict[str, str]:
    """JWT secret, API secret key and Fernet key: made once, shared by every component, kept 0600."""
    path = state_dir / "secrets.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    values = {
        "jwt_secret": secrets.token_urlsafe(32),
        "api_secret_key": secrets.token_urlsafe(32),
        "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode("ascii"),
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(values), encoding="utf-8")
    return values


def admin_password(config: AirflowConfig) -> str:
    """The admin password: from the config (env DP_AIRFLOW_ADMIN_PASSWORD), else the one kept in
    the state directory, else a new random one. Written to the simple auth manager's file."""
    path = config.passwords_file
    known = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    password = config.admin_password or known.get(ADMIN_USER) or secrets.token_urlsafe(12)
    if known.get(ADMIN_USER) != password:
        path.touch(mode=0o600)
        path.write_text(json.dumps({ADMIN_USER: password}) + "\n", encoding="utf-8")
    return password


def write_airflow_wrapper(config: AirflowConfig) -> pathlib.Path:
    """<state>/bin/airflow: this interpreter running `-m airflow`. Airflow starts its own
    subcommands through PATH, so this folder goes first on PATH (what a venv's bin does)."""
    config.bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = config.bin_dir / "airflow"
    text = "#!/bin/sh\n# written by deploy/airflow: the Airflow CLI of this deployment\nexec '%s' -m airflow \"$@\"\n" % sys.executable
    if not wrapper.exists() or wrapper.read_text() != text:
        wrapper.write_text(text)
        wrapper.chmod(0o755)
    return wrapper


def airflow_env(config: AirflowConfig, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of every Airflow process of this deployment (prepares the state dir)."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    keys = _persisted_secrets(config.state_dir)
    password = admin_password(config)
    write_airflow_wrapper(config)
    env = dict(os.environ if base is None else base)
    env.update({
        "AIRFLOW_HOME": str(config.state_dir),
        "AIRFLOW__CORE__DAGS_FOLDER": str(config.dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False" if config.unpaused else "True",
        "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "%s:admin" % ADMIN_USER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(config.passwords_file),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": config.database_url or "sqlite:///%s" % (config.state_dir / "airflow.db"),
        "AIRFLOW__API__HOST": config.host,
        "AIRFLOW__API__PORT": str(config.api_port),
        "AIRFLOW__API__BASE_URL": config.base_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": config.base_url + "/execution/",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(config.log_dir),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(config.worker_log_port or 8793),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(config.trigger_log_port or 8794),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "30",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "PATH": "%s%s%s" % (config.bin_dir, os.pathsep, env.get("PATH", os.defpath)),
        "NO_COLOR": "1",
    })
    launcher = config.job_launcher or default_job_launcher()
    if launcher and not env.get("DP_COMMERCE_JOB"):
        env["DP_COMMERCE_JOB"] = str(launcher)
    env["DP_AIRFLOW_ADMIN_PASSWORD"] = password
    return env


def run_cli(config: AirflowConfig, args: Sequence[str], env: Optional[Mapping[str, str]] = None,
            timeout: Optional[float] = None, capture: bool = True) -> subprocess.CompletedProcess:
    """One `airflow ...` command in this deployment's environment."""
    env = dict(env or airflow_env(config))
    return subprocess.run([sys.executable, "-m", "airflow", *args], env=env, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
                          text=True, stdin=subprocess.DEVNULL)


def migrate(config: AirflowConfig, env: Mapping[str, str]) -> float:
    """`airflow db migrate` (creates or upgrades the metadata database); seconds taken."""
    started = time.monotonic()
    result = run_cli(config, ["db", "migrate"], env=env, timeout=600)
    if result.returncode != 0:
        raise AirflowError("airflow db migrate failed (exit %d):\n%s" % (result.returncode, result.stdout[-4000:]))
    return time.monotonic() - started


def health(config: AirflowConfig, timeout: float = 5.0) -> Optional[Dict]:
    """The API server's /api/v2/monitor/health document, or None when it does not answer."""
    try:
        with urllib.request.urlopen(config.base_url + "/api/v2/monitor/health", timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def unhealthy(document: Optional[Dict]) -> List[str]:
    """The components not reported healthy (all of them when there is no document)."""
    if document is None:
        return ["api-server"]
    return [key for key in HEALTH_KEYS if (document.get(key) or {}).get("status") != "healthy"]


class AirflowStack:
    """The four components as child processes, each logging to <state>/logs/<component>.log."""

    def __init__(self, config: AirflowConfig, env: Optional[Mapping[str, str]] = None):
        self.config = config
        self.env = dict(env or airflow_env(config))
        self.processes: Dict[str, subprocess.Popen] = {}
        self.migrate_seconds: Optional[float] = None
        self.start_seconds: Optional[float] = None

    def log_path(self, component: str) -> pathlib.Path:
        return self.config.log_dir / ("%s.log" % component)

    def _argv(self, component: str) -> List[str]:
        argv = [sys.executable, "-m", "airflow", component]
        if component in ("scheduler", "triggerer"):
            argv.append("--skip-serve-logs")
        if component == "api-server":
            argv += ["--host", self.config.host, "--port", str(self.config.api_port), "--workers", "1"]
        return argv

    def start(self, cancel=None, progress=None) -> "AirflowStack":
        started = time.monotonic()
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self.migrate_seconds = migrate(self.config, self.env)
        if progress:
            progress("metadata database ready in %.1f s (%s)" % (
                self.migrate_seconds, self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].split("://")[0]))
        for component in COMPONENTS:
            with open(self.log_path(component), "ab") as log:
                self.processes[component] = subprocess.Popen(
                    self._argv(component), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
        try:
            self.wait_healthy(cancel=cancel)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def exited(self) -> Optional[str]:
        """The name of a component that has exited, if any."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name
        return None

    def wait_healthy(self, cancel=None) -> Dict:
        deadline = time.monotonic() + self.config.start_timeout
        missing = ["api-server"]
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise AirflowError("start cancelled")
            dead = self.exited()
            if dead:
                raise AirflowError("airflow %s exited with %s while starting; last lines of %s:\n%s" % (
                    dead, self.processes[dead].returncode, self.log_path(dead), tail(self.log_path(dead), 30)))
            document = health(self.config)
            missing = unhealthy(document)
            if not missing:
                return document
            time.sleep(1.0)
        raise AirflowError("airflow not healthy at %s/api/v2/monitor/health after %.0f s (not healthy: %s); logs in %s"
                           % (self.config.base_url, self.config.start_timeout, ", ".join(missing), self.config.log_dir))

    def stop(self) -> Dict[str, int]:
        """SIGTERM every component's process group (API server first), SIGKILL after the timeout."""
        codes = {}
        for name in reversed(COMPONENTS):
            process = self.processes.get(name)
            if process is None:
                continue
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name in reversed(COMPONENTS):
            process = self.processes.get(name)
            if process is None:
                continue
            try:
                process.wait(self.config.stop_timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()
            # Whatever the component left in its group (task runners) goes too.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            codes[name] = process.returncode
        self.processes.clear()
        return codes
