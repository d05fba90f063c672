"""PID files and records, and the supervisor's decisions, with small stand-in processes.

The stand-ins are Python one-liners listening on a free port (health: TCP), so up, idempotence,
stale PID files, restart of one service, status and down are exercised in seconds.
"""

import io
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from deploy.common.process import free_ports, port_is_open
from deploy.stack.catalog import Check, Port, Service
from deploy.stack.state import Record, StateDir, is_alive, process_of
from deploy.stack.supervisor import Stack, StackError

LISTENER = """
import signal, socket, sys, time
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1]))); sock.listen()
print("listening", sys.argv[1], flush=True)
signal.signal(signal.SIGTERM, lambda *a: (print("bye", flush=True), sys.exit(0)))
while True:
    time.sleep(0.1)
"""


def standin(name, deps=(), stop_timeout=10.0):
    return Service(
        name=name, summary="stand-in " + name, binary=sys.executable,
        ports=(Port("port", "DP_TEST_%s_PORT" % name.upper(), 1),), deps=tuple(deps), profiles=("p",),
        args=lambda ctx: ["-c", LISTENER, str(ctx.port(name))],
        check=lambda ctx: Check("tcp", "127.0.0.1:%d" % ctx.port(name)),
        address=lambda ctx: "127.0.0.1:%d" % ctx.port(name), start_timeout=20.0, stop_timeout=stop_timeout)


@pytest.fixture
def stack(tmp_path):
    services = [standin("db"), standin("app", ["db"])]
    a, b = free_ports(2)
    plan = {"db": {"port": a}, "app": {"port": b}}
    out = io.StringIO()
    the_stack = Stack(tmp_path / "state", ports=plan, services=services, out=out)
    yield the_stack
    Stack(tmp_path / "state", services=services, out=io.StringIO()).down()


# -- records ---------------------------------------------------------------------------------

def test_record_round_trip_and_liveness(tmp_path):
    state = StateDir(tmp_path)
    me = psutil.Process()
    record = Record(name="svc", pid=me.pid, create_time=me.create_time(), argv=["x"], cwd="/", ports={"port": 1},
                    started_at=time.time(), log=str(state.log("svc")))
    state.write_record(record)
    assert state.pid_file("svc").read_text().strip() == str(me.pid)
    assert state.read_record("svc") == record
    assert is_alive(record)
    assert state.recorded_names() == ["svc"]
    state.remove_record("svc")
    assert state.read_record("svc") is None
    assert state.recorded_names() == []


def test_dead_pid_and_reused_pid_are_not_alive(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = Record(name="svc", pid=child.pid, create_time=0.0, argv=[], cwd="", ports={}, started_at=0, log="")
    assert not is_alive(dead)
    me = psutil.Process()
    reused = Record(name="svc", pid=me.pid, create_time=me.create_time() - 3600, argv=[], cwd="", ports={},
                    started_at=0, log="")
    assert process_of(reused) is None  # same PID, another process: not ours


def test_zombie_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)  # exited, not reaped yet: a zombie
    record = Record(name="z", pid=child.pid, create_time=0.0, argv=[], cwd="", ports={}, started_at=0, log="")
    try:
        assert not is_alive(record)
    finally:
        child.wait()


def test_pid_file_without_record_and_garbage(tmp_path):
    state = StateDir(tmp_path)
    state.ensure()
    state.pid_file("svc").write_text("%d\n" % os.getpid())
    record = state.read_record("svc")
    assert record.pid == os.getpid() and record.create_time == 0.0
    assert is_alive(record)
    state.pid_file("svc").write_text("not a pid")
    assert state.read_record("svc") is None


def test_finished_oneshot_keeps_a_record_but_no_pid_file(tmp_path):
    state = StateDir(tmp_path)
    state.write_record(Record(name="once", pid=os.getpid(), create_time=0.0, argv=[], cwd="", ports={},
                              started_at=0, log="", oneshot=True))
    assert state.pid_file("once").exists()
    record = state.read_record("once")
    record.exit_code = 0
    state.write_record(record)
    assert not state.pid_file("once").exists()
    assert not is_alive(state.read_record("once"))


# -- supervisor decisions -----------------------------------------------------------------

def test_up_is_idempotent_and_down_stops_everything(stack):
    rows = stack.up(["db", "app"])
    assert [(r.name, r.status) for r in rows] == [("db", "running"), ("app", "running")]
    pids = {name: stack.record(name).pid for name in ("db", "app")}
    log = stack.out.getvalue()
    assert log.index("db         starting") < log.index("app        starting")
    # Detached: own session, not in ours.
    assert os.getsid(pids["db"]) == pids["db"] != os.getsid(0)

    stack.out.truncate(0)
    stack.up(["db", "app"])
    assert "already running" in stack.out.getvalue() and "starting" not in stack.out.getvalue()
    assert {name: stack.record(name).pid for name in ("db", "app")} == pids

    rows = stack.status()
    assert all(r.status == "running" and r.rss > 0 for r in rows)
    assert stack.ok(rows)

    stopped = stack.down()
    assert stopped == ["app", "db"]  # reverse dependency order
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in pids.values())
    assert stack.state.recorded_names() == []
    assert stack.down() == []  # idempotent
    assert not stack.ok(stack.status())


def test_crash_is_reported_and_only_restarts_one(stack):
    stack.up(["db", "app"])
    db_pid, app_pid = stack.record("db").pid, stack.record("app").pid
    os.kill(app_pid, signal.SIGKILL)
    _wait_gone(app_pid)
    rows = {r.name: r for r in stack.status()}
    assert rows["app"].status == "crashed"
    assert "listening" in rows["app"].log_tail
    assert not stack.ok(rows.values())

    stack.out.truncate(0)
    stack.up([], only=["app"])
    assert "stale PID file: pid %d" % app_pid in stack.out.getvalue()
    assert stack.record("db").pid == db_pid  # the dependency was checked, not restarted
    assert stack.record("app").pid != app_pid
    assert stack.ok(stack.status())
    assert stack.enabled() == ["db", "app"]


def test_only_refuses_when_a_dependency_is_down(stack):
    with pytest.raises(StackError, match="app needs db, which is not healthy"):
        stack.up([], only=["app"])


def test_a_foreign_process_on_our_port_is_refused(stack):
    port = stack.requested_ports["db"]["port"]
    squatter = subprocess.Popen([sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE)
    try:
        squatter.stdout.readline()
        # Healthy by TCP but not ours: `up` must not adopt it, and must say who holds the port.
        assert stack.row(stack.known["db"], stack.context()).status == "foreign"
        with pytest.raises(StackError, match="port %d \\(db port\\) is already in use by .*not part of this stack"
                                             ".*DP_TEST_DB_PORT=<port> or --port db=<port>" % port):
            stack.up(["db"])
    finally:
        squatter.kill()
        squatter.wait()


def test_a_service_that_dies_while_starting_fails_with_its_log(tmp_path):
    broken = Service(name="broken", summary="exits", binary=sys.executable, ports=(Port("port", "X", 1),), deps=(),
                     profiles=("p",), args=lambda ctx: ["-c", "import sys; print('bad config'); sys.exit(3)"],
                     check=lambda ctx: Check("tcp", "127.0.0.1:%d" % ctx.port("broken")),
                     address=lambda ctx: "", start_timeout=20.0)
    stack = Stack(tmp_path, ports={"broken": {"port": free_ports(1)[0]}}, services=[broken], out=io.StringIO())
    with pytest.raises(StackError, match="(?s)broken exited \\(3\\) while starting.*bad config"):
        stack.up(["broken"])
    rows = stack.status()
    assert rows[0].status == "crashed"


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    stubborn = Service(
        name="stubborn", summary="ignores SIGTERM", binary=sys.executable, ports=(Port("port", "X", 1),), deps=(),
        profiles=("p",),
        args=lambda ctx: ["-c", "import signal, socket, time, sys\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                "s = socket.socket(); s.bind(('127.0.0.1', %d)); s.listen()\n"
                                "while True: time.sleep(1)" % ctx.port("stubborn")],
        check=lambda ctx: Check("tcp", "127.0.0.1:%d" % ctx.port("stubborn")),
        address=lambda ctx: "", start_timeout=20.0, stop_timeout=1.0)
    port = free_ports(1)[0]
    stack = Stack(tmp_path, ports={"stubborn": {"port": port}}, services=[stubborn], out=io.StringIO())
    stack.up(["stubborn"])
    pid = stack.record("stubborn").pid
    assert stack.down() == ["stubborn"]
    assert "did not exit: SIGKILL" in stack.out.getvalue()
    _wait_gone(pid)
    assert not port_is_open("127.0.0.1", port)


def _wait_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError("pid %d still alive" % pid)
