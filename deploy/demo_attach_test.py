"""The demo attached to a running local stack: `up` (default profile) on free ports in a temporary
state directory, then `demo --stack attach` with short durations (commerce and the browser check
off), then `down`.

What must hold: the demo exits 0 with its IoT and behaviour proof lines; it started none of the
stack's components (no Kafka, PostgreSQL, Connect, analytics, aggregator, ingest or gateway among
its descendants, which are sampled while it runs and do include its own Flink job); the stack's
services keep their PIDs and JVMs and stay healthy after it. Without a stack, `--stack attach`
fails at once and names the `up` command.
"""

import pathlib
import re
import subprocess
import threading
import time

import psutil
import pytest

from deploy.stack.testing import pids, program, run, stack_environment

DAEMONS = ("kafka", "postgres", "connect", "analytics", "aggregator", "ingest", "ws_gateway")
# Markers of the stack's components in a process's command line (or its name, for PostgreSQL).
STACK_COMPONENTS = ("kafka.Kafka", "ConnectDistributed", "services/analytics/analytics",
                    "jobs/iot/aggregator/aggregator", "services/ingest/ingest", "services/ws_gateway/ws_gateway",
                    "deploy/stack/")
FLINK_JOB = "jobs/behaviour/metrics/metrics"


@pytest.fixture
def stack_env(tmp_path):
    env = stack_environment(tmp_path / "state")
    for name in ("DP_DEMO_STACK", "DP_DEMO_DASHBOARDS_CHECK"):
        env.pop(name, None)
    yield env
    subprocess.run([program("down")], env=env, timeout=300)


def java_processes(roots: dict) -> list:
    out = []
    for pid in roots.values():
        try:
            proc = psutil.Process(pid)
            out += [p.pid for p in [proc] + proc.children(recursive=True) if p.name() == "java"]
        except psutil.Error:
            pass
    return sorted(out)


class Descendants:
    """Samples the command lines of every descendant of a process, twice a second, until it exits."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.seen = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.popen.poll() is None:
            try:
                for child in psutil.Process(self.popen.pid).children(recursive=True):
                    try:
                        self.seen.setdefault(child.pid, (child.name(), " ".join(child.cmdline())))
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            time.sleep(0.5)


def test_demo_attaches_to_the_running_stack_and_leaves_it_running(stack_env):
    state = pathlib.Path(stack_env["DP_STATE_DIR"])
    code, out, _ = run(stack_env, "up")
    assert code == 0, out
    before = pids(state, DAEMONS)
    assert set(before) == set(DAEMONS)
    jvms = java_processes(before)
    assert len(jvms) >= 2, jvms  # Kafka and Connect at least

    argv = [program("demo", "deploy"), "--stack", "attach", "--stack-state-dir", str(state),
            "--commerce-events", "0", "--no-dashboards-check", "--iot-seconds", "10", "--iot-rate", "200",
            "--behaviour-seconds", "15"]
    began = time.monotonic()
    demo = subprocess.Popen(argv, env=stack_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    descendants = Descendants(demo)
    out, _ = demo.communicate(timeout=900)
    descendants.thread.join(5)
    print("$ demo %s  (exit %d, %.1f s)\n%s" % (" ".join(argv[1:]), demo.returncode, time.monotonic() - began, out))

    assert demo.returncode == 0, out
    assert "attached to the local stack in %s" % state in out
    assert "every check passed" in out
    tag = re.search(r"\(run ([0-9a-f]{6})\)", out).group(1)
    iot = re.search(r"^  IoT +(\d+) readings written .* the latest 1-min window of (\d+) sites", out, re.M)
    assert iot and int(iot.group(1)) > 0 and int(iot.group(2)) == 4, out
    assert "site-01-%s" % tag in out
    behaviour = re.search(r"^  behaviour +(\d+) events of this run's client counted once each in (\d+) closed "
                          r"one-minute windows .*: all served", out, re.M)
    assert behaviour and int(behaviour.group(1)) >= 10 and int(behaviour.group(2)) >= 1, out
    assert "http://127.0.0.1:%s/dashboards/iot" % stack_env["DP_ANALYTICS_PORT"] in out

    # The demo started none of the stack's components, and the sampling did see what it started.
    commands = list(descendants.seen.values())
    assert any(FLINK_JOB in command for _, command in commands), commands
    started = [(name, command[:160]) for name, command in commands
               if name == "postgres" or any(marker in command for marker in STACK_COMPONENTS)]
    assert not started, started

    # The stack is untouched: same services, same JVMs, all healthy.
    assert pids(state, DAEMONS) == before
    assert all(psutil.pid_exists(pid) for pid in before.values())
    assert java_processes(before) == jvms
    code, out, _ = run(stack_env, "status")
    assert code == 0, out


def test_attach_without_a_stack_fails_at_once_naming_up(tmp_path):
    env = stack_environment(tmp_path / "no-stack")
    code, out, seconds = run(env, "demo", "--stack", "attach", "--stack-state-dir", str(tmp_path / "no-stack"),
                             timeout=120, package="deploy")
    assert code == 2, out
    assert "bazel run //deploy:up" in out and str(tmp_path / "no-stack") in out
