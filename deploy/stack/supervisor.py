"""Start, inspect and stop the local stack as detached, supervised background processes.

`up` starts each enabled service in its own session (it outlives `up`), output to
`<state>/logs/<name>.log`, a PID file and a JSON record in `<state>/run/`, in dependency order,
waiting for each one's health check. `status` checks health live and reads PIDs, ports, memory
and CPU of each process tree. `down` stops in reverse dependency order. See README.md.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, TextIO

import psutil

from deploy.common.process import port_is_open, tail
from deploy.stack import catalog, health
from deploy.stack.catalog import HOST, Context, Service
from deploy.stack.state import Record, StateDir, is_alive, process_of, tree

WORKSPACE = "data_pipelines"
CRASH_LOG_LINES = 10
CHILD_ENV_DROPPED = ("PYTHONPATH", "PYTHONSAFEPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE")


class StackError(RuntimeError):
    """`up` could not bring a service up; the message says which, why, and its last log lines."""


def default_state_dir(env: Mapping[str, str] = os.environ) -> pathlib.Path:
    """DP_STATE_DIR, else <workspace>/.state under `bazel run`, else ./.state."""
    if env.get("DP_STATE_DIR"):
        return pathlib.Path(env["DP_STATE_DIR"]).absolute()
    return (pathlib.Path(env.get("BUILD_WORKSPACE_DIRECTORY") or os.getcwd()) / ".state").absolute()


def runfiles_workspace() -> pathlib.Path:
    """<runfiles>/data_pipelines of the running program: where the services' programs are.

    The children run from here after `up` has exited: the tree stays in bazel-bin until the
    next build of //deploy/stack:up replaces it in place.
    """
    candidates = []
    for variable in ("RUNFILES_DIR", "TEST_SRCDIR"):
        if os.environ.get(variable):
            candidates.append(pathlib.Path(os.environ[variable]) / WORKSPACE)
    for parent in pathlib.Path(os.path.abspath(__file__)).parents:
        if parent.name.endswith(".runfiles"):
            candidates.append(parent / WORKSPACE)
            break
    candidates.append(pathlib.Path.cwd())
    for candidate in candidates:
        if (candidate / "deploy" / "stack" / "kafka_broker").exists():
            return candidate.absolute()
    raise StackError("the services' programs are not in this program's runfiles (looked in %s); "
                     "run it as bazel run //deploy:up" % ", ".join(map(str, candidates)))


@dataclasses.dataclass
class Row:
    """One line of the `up` and `status` tables."""

    name: str
    status: str
    health: str = ""
    address: str = ""
    pid: str = "-"
    ports: str = ""
    rss: int = 0
    cpu: Optional[float] = None
    uptime: Optional[float] = None
    credentials: List[str] = dataclasses.field(default_factory=list)
    log_tail: str = ""


class Stack:
    """The stack in one state directory: its services (catalogue), enabled set and port plan."""

    def __init__(self, state_dir: pathlib.Path, ports: Optional[Dict[str, Dict[str, int]]] = None,
                 services: Sequence[Service] = catalog.SERVICES, out: TextIO = sys.stdout,
                 check: Callable = health.run):
        self.services = catalog.topological_order(services)
        self.known = catalog.by_name(self.services)
        self.state = StateDir(state_dir)
        # `up` passes the plan from flags and environment; status, logs and down use the plan of
        # the last `up` (stack.json), so they look where the services were started.
        saved = (self.state.read_stack() or {}).get("ports") if ports is None else None
        self.requested_ports = ports or catalog.port_plan(services=self.services)
        for name, numbers in (saved or {}).items():
            if name in self.requested_ports and isinstance(numbers, dict):
                self.requested_ports[name].update({k: int(v) for k, v in numbers.items()})
        self.out = out
        self._check = check
        self.popens: Dict[str, subprocess.Popen] = {}

    # -- helpers ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def record(self, name: str) -> Optional[Record]:
        return self.state.read_record(name)

    def effective_ports(self) -> Dict[str, Dict[str, int]]:
        """The requested plan, except that a running service keeps the ports it was started with."""
        plan = {name: dict(ports) for name, ports in self.requested_ports.items()}
        for service in self.services:
            record = self.record(service.name)
            if record is not None and record.ports and is_alive(record):
                plan[service.name] = dict(record.ports)
        return plan

    def context(self, ports: Optional[Dict[str, Dict[str, int]]] = None) -> Context:
        return Context(self.state.root, ports or self.effective_ports())

    def healthy(self, service: Service, ctx: Context):
        return self._check(service.check(ctx))

    def enabled(self) -> List[str]:
        stack = self.state.read_stack() or {}
        return [n for n in stack.get("enabled", []) if n in self.known]

    # -- up --------------------------------------------------------------------------------

    def up(self, enabled: Sequence[str], only: Sequence[str] = ()) -> List[Row]:
        """Start what is not running of `enabled` (or restart just `only`), in dependency order."""
        self.state.ensure()
        for name in only:
            if name not in self.known:
                raise catalog.CatalogError("--only %s: unknown service (choose from %s)" % (name, ", ".join(self.known)))
        if only:
            targets = [s for s in self.services if s.name in set(only)]
            previous = self.enabled()
            enabled = [s.name for s in self.services if s.name in set(previous) | set(only)]
        else:
            targets = [s for s in self.services if s.name in set(enabled)]
        ctx = self.context()
        self.state.write_stack(list(enabled), ctx.ports)
        self._warn_port_changes(ctx)
        rows = []
        for service in targets:
            self._check_dependencies(service, ctx)
            self._up_one(service, ctx, restart=service.name in set(only))
        for name in enabled:
            rows.append(self.row(self.known[name], ctx, measure=False))
        return rows

    def _warn_port_changes(self, ctx: Context) -> None:
        for name, ports in ctx.ports.items():
            if ports != self.requested_ports.get(name, ports):
                self.say("note: %s keeps running on %s (started so); `down` and `up` to move it to %s"
                         % (name, _ports_text(ports), _ports_text(self.requested_ports[name])))

    def _check_dependencies(self, service: Service, ctx: Context) -> None:
        for dep in service.deps:
            ok, detail = self.healthy(self.known[dep], ctx)
            if not ok:
                raise StackError("%s needs %s, which is not healthy (%s): start it with `up` or `up --only %s`"
                                 % (service.name, dep, detail, dep))

    def _up_one(self, service: Service, ctx: Context, restart: bool) -> None:
        name = service.name
        record = self.record(name)
        if service.oneshot:
            ok, detail = self.healthy(service, ctx)
            if ok and not restart:
                self.say("%-10s already done (%s)" % (name, detail))
                return
            self._run_oneshot(service, ctx)
            return
        proc = process_of(record)
        if proc is not None:
            if restart:
                self.say("%-10s restarting (pid %d)" % (name, proc.pid))
                self.stop_one(service)
            else:
                ok, detail = self.healthy(service, ctx)
                if ok:
                    self.say("%-10s already running (pid %d, %s)" % (name, proc.pid, detail))
                    return
                self.say("%-10s running (pid %d) but not healthy (%s): waiting up to %.0f s"
                         % (name, proc.pid, detail, service.start_timeout))
                try:
                    self._wait_healthy(service, ctx, None, time.monotonic() + service.start_timeout)
                    return
                except StackError as err:
                    self.say("%-10s still not healthy: restarting it (%s)" % (name, str(err).splitlines()[0]))
                    self.stop_one(service)
        elif record is not None:
            self.say("%-10s stale PID file: pid %d (started %s) is gone; last lines of %s:\n%s"
                     % (name, record.pid, _when(record.started_at), self.state.log(name),
                        _indent(tail(self.state.log(name), CRASH_LOG_LINES, "(no log)"))))
            self.state.remove_record(name)
        self._start(service, ctx)

    def _check_ports_free(self, service: Service, ctx: Context) -> None:
        for port_name, number in ctx.ports[service.name].items():
            if port_is_open(HOST, number):
                env = next(p.env for p in service.ports if p.name == port_name)
                key = service.name if port_name == "port" else "%s.%s" % (service.name, port_name)
                raise StackError(
                    "port %d (%s %s) is already in use by %s, which is not part of this stack (state %s): "
                    "stop it, or choose another port with %s=<port> or --port %s=<port>"
                    % (number, service.name, port_name, _port_owner(number), self.state.root, env, key))

    def _command(self, service: Service, ctx: Context) -> tuple:
        if os.path.isabs(service.binary):  # a program outside the runfiles (the unit tests' stand-ins)
            return [service.binary] + service.args(ctx), str(self.state.root), dict(os.environ, **service.env(ctx))
        root = runfiles_workspace()
        program = root / service.binary
        if not program.exists():
            raise StackError("%s is not in the runfiles of up (%s): add its target to the data of //deploy/stack:up"
                             % (service.binary, root))
        # Each program's launcher sets its own Python path (several Python sets share this tree:
        # core, spark, airflow, superset, flink); ours must not leak into it.
        env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROPPED}
        env.update(service.env(ctx))
        return [str(program)] + service.args(ctx), str(root), env

    def _spawn(self, service: Service, ctx: Context) -> subprocess.Popen:
        argv, cwd, env = self._command(service, ctx)
        if service.name == "ingest":
            _ingest_home(self.state.root)
        log_path = self.state.log(service.name)
        with open(log_path, "ab") as log:
            log.write(("\n=== %s: %s starting: %s\n" % (_when(time.time()), service.name, " ".join(argv))).encode())
            log.flush()
            popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        self.popens[service.name] = popen
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = 0.0
        self.state.write_record(Record(
            name=service.name, pid=popen.pid, create_time=create_time, argv=argv, cwd=cwd,
            ports=dict(ctx.ports[service.name]), started_at=time.time(), log=str(log_path),
            oneshot=service.oneshot))
        return popen

    def _start(self, service: Service, ctx: Context) -> None:
        self._check_ports_free(service, ctx)
        began = time.monotonic()
        self.say("%-10s starting: %s" % (service.name, service.summary))
        popen = self._spawn(service, ctx)
        try:
            self._wait_healthy(service, ctx, popen, time.monotonic() + service.start_timeout)
        except StackError:
            if popen.poll() is None:  # timed out: do not leave a half-started process behind
                self.stop_one(service)
            raise
        self.say("%-10s healthy in %.1f s (pid %d, %s)" % (service.name, time.monotonic() - began, popen.pid,
                                                           service.address(ctx)))
        if service.name == "kafka":
            self._ensure_topics(ctx)

    def _ensure_topics(self, ctx: Context) -> None:
        """Every topic of the topics module: the broker never creates topics by itself."""
        from datapipelines import kafka as dp_kafka

        created = dp_kafka.ensure_topics(ctx.bootstrap)
        if created:
            self.say("%-10s created topics: %s" % ("kafka", ", ".join(created)))

    def _run_oneshot(self, service: Service, ctx: Context) -> None:
        began = time.monotonic()
        self.say("%-10s running: %s" % (service.name, service.summary))
        popen = self._spawn(service, ctx)
        try:
            code = popen.wait(service.start_timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            code = popen.wait()
        record = self.record(service.name)
        record.exit_code, record.finished_at = code, time.time()
        self.state.write_record(record)
        if code != 0:
            raise StackError("%s exited with %d; last lines of %s:\n%s" % (
                service.name, code, self.state.log(service.name),
                _indent(tail(self.state.log(service.name), 20, "(no log)"))))
        ok, detail = self.healthy(service, ctx)
        self.say("%-10s done in %.1f s (%s)" % (service.name, time.monotonic() - began, detail))

    def _wait_healthy(self, service: Service, ctx: Context, popen: Optional[subprocess.Popen],
                      deadline: float) -> None:
        detail = "no answer yet"
        record = self.record(service.name)
        while True:
            exited = popen.poll() if popen is not None else (None if is_alive(record) else "gone")
            if exited is not None:
                raise StackError("%s exited (%s) while starting; last lines of %s:\n%s" % (
                    service.name, exited, self.state.log(service.name),
                    _indent(tail(self.state.log(service.name), 20, "(no log)"))))
            ok, detail = self.healthy(service, ctx)
            if ok:
                return
            if time.monotonic() > deadline:
                raise StackError("%s not healthy after %.0f s (%s); last lines of %s:\n%s" % (
                    service.name, service.start_timeout, detail, self.state.log(service.name),
                    _indent(tail(self.state.log(service.name), 20, "(no log)"))))
            time.sleep(0.5)

    # -- down ------------------------------------------------------------------------------

    def down(self, names: Sequence[str] = ()) -> List[str]:
        """Stop services (all with a record, or `names`) in reverse dependency order."""
        stopped = []
        for service in reversed(self.services):
            if names and service.name not in names:
                continue
            if self.record(service.name) is None:
                continue
            if self.stop_one(service):
                stopped.append(service.name)
        return stopped

    def stop_one(self, service: Service) -> bool:
        """SIGTERM, wait `stop_timeout`, SIGKILL the process tree's stragglers, drop the PID file.

        Returns True when a live process was stopped."""
        record = self.record(service.name)
        proc = process_of(record)
        if proc is None:
            self.state.remove_record(service.name)
            return False
        began = time.monotonic()
        members = tree(proc)
        self.say("%-10s stopping (pid %d, %d processes)" % (service.name, proc.pid, len(members)))
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
        popen = self.popens.pop(service.name, None)
        _gone, alive = psutil.wait_procs([proc], timeout=service.stop_timeout)
        if popen is not None:
            popen.poll()  # reap our own child
        # The launchers stop their JVMs and postmasters before exiting; give stragglers a moment.
        _gone, alive = psutil.wait_procs([m for m in members if _running(m)], timeout=5)
        for straggler in alive:
            self.say("%-10s pid %d (%s) did not exit: SIGKILL" % (service.name, straggler.pid, _name(straggler)))
            try:
                straggler.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.state.remove_record(service.name)
        self.say("%-10s stopped in %.1f s" % (service.name, time.monotonic() - began))
        return True

    # -- status ----------------------------------------------------------------------------

    def names_to_show(self) -> List[str]:
        shown = set(self.enabled()) | set(n for n in self.state.recorded_names() if n in self.known)
        return [s.name for s in self.services if s.name in shown]

    def row(self, service: Service, ctx: Context, measure: bool = True) -> Row:
        record = self.record(service.name)
        proc = process_of(record)
        ports = ctx.ports.get(service.name, {})
        row = Row(name=service.name, status="stopped", address=service.address(ctx),
                  ports=_ports_text(ports), credentials=service.credentials(ctx))
        ok, detail = self.healthy(service, ctx)
        row.health = detail
        if service.oneshot:
            if record is not None and record.exit_code not in (None, 0):
                row.status = "failed"
                row.log_tail = tail(self.state.log(service.name), CRASH_LOG_LINES, "(no log)")
            else:
                row.status = "done" if ok else ("running" if proc is not None else "down")
            return row
        if proc is not None:
            row.pid = str(proc.pid)
            row.status = "running" if ok else "unhealthy"
            row.uptime = time.time() - proc.create_time()
        elif record is not None:
            row.status = "crashed"
            row.pid = "%d (gone)" % record.pid
            row.log_tail = tail(self.state.log(service.name), CRASH_LOG_LINES, "(no log)")
        elif ok:
            row.status = "foreign"  # something answers on our port, but we did not start it
        return row

    def status(self) -> List[Row]:
        ctx = self.context()
        rows = [self.row(self.known[name], ctx) for name in self.names_to_show()]
        _measure(rows, self)
        return rows

    def ok(self, rows: Sequence[Row]) -> bool:
        enabled = set(self.enabled())
        return all(row.status in ("running", "done") for row in rows if row.name in enabled)


def _measure(rows: Sequence[Row], stack: Stack, interval: float = 0.5) -> None:
    """RSS and CPU% of each service's whole process tree (launcher + JVM / postmaster + backends)."""
    trees: Dict[str, List[psutil.Process]] = {}
    for row in rows:
        proc = process_of(stack.record(row.name))
        if proc is not None:
            trees[row.name] = tree(proc)
            for member in trees[row.name]:
                try:
                    member.cpu_percent(None)
                except psutil.Error:
                    pass
    if trees:
        time.sleep(interval)
    for row in rows:
        members = trees.get(row.name)
        if not members:
            continue
        rss, cpu = 0, 0.0
        for member in members:
            try:
                with member.oneshot():
                    rss += member.memory_info().rss
                    cpu += member.cpu_percent(None)
            except psutil.Error:
                pass
        row.rss, row.cpu = rss, cpu


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return "?"


def _port_owner(port: int) -> str:
    """Who listens on a TCP port, as far as this user may see."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                try:
                    proc = psutil.Process(conn.pid)
                    command = " ".join(" ".join(proc.cmdline()[:3]).split())[:100]
                    return "pid %d (%s)" % (conn.pid, command or proc.name())
                except psutil.Error:
                    return "pid %d" % conn.pid
    except (psutil.Error, OSError):
        pass
    return "another process"


def _ingest_home(state_root: pathlib.Path) -> None:
    """<state>/run/ingest-home/.state -> <state>: the ingestion service's default key store
    (<workspace>/.state/ingest, with a dev key) then lands in <state>/ingest."""
    home = state_root / "run" / "ingest-home"
    home.mkdir(parents=True, exist_ok=True)
    link = home / ".state"
    if not link.is_symlink() or os.readlink(link) != str(state_root):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(state_root, target_is_directory=True)


def _ports_text(ports: Mapping[str, int]) -> str:
    ordered = sorted(ports.items(), key=lambda item: item[0] != "port")
    return ",".join(str(n) if k == "port" else "%s %d" % (k, n) for k, n in ordered) or "-"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "unknown"


def _indent(text: str, prefix: str = "    | ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def human_bytes(count: int) -> str:
    return "%.0f MiB" % (count / (1024 * 1024)) if count else "-"


def human_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm%02ds" % divmod(seconds, 60)
    return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)] if rows else [len(h) for h in headers]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)
