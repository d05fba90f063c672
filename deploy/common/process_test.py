import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from deploy.common import process


def test_port_is_open_sees_a_listener_and_its_absence():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert process.port_is_open("127.0.0.1", port)
    assert not process.port_is_open("127.0.0.1", port)


def test_free_ports_are_distinct_and_bindable():
    ports = process.free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    assert 0 < process.free_port() < 65536


def test_tail_returns_the_last_lines_or_the_placeholder(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("".join("line %d\n" % n for n in range(100)))
    assert process.tail(log, 3) == "line 97\nline 98\nline 99"
    assert process.tail(tmp_path / "missing.log") == ""
    assert process.tail(tmp_path / "missing.log", missing="(no log)") == "(no log)"


def test_env_int(monkeypatch):
    monkeypatch.delenv("DP_TEST_PORT", raising=False)
    assert process.env_int("DP_TEST_PORT", 7) == 7
    monkeypatch.setenv("DP_TEST_PORT", "")
    assert process.env_int("DP_TEST_PORT", 7) == 7
    monkeypatch.setenv("DP_TEST_PORT", "8083")
    assert process.env_int("DP_TEST_PORT", 7) == 8083
    monkeypatch.setenv("DP_TEST_PORT", "eighty")
    with pytest.raises(SystemExit, match="DP_TEST_PORT='eighty' is not a port number"):
        process.env_int("DP_TEST_PORT", 7, "a port number")


def test_workspace_state_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", str(tmp_path))
    assert process.workspace_state_dir() == tmp_path / ".state"
    monkeypatch.delenv("BUILD_WORKSPACE_DIRECTORY")
    monkeypatch.chdir(tmp_path)
    assert process.workspace_state_dir() == pathlib.Path(os.getcwd()) / ".state"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux only")
def test_child_dies_with_its_parent(tmp_path):
    # A middle process starts a long sleeper that must die with it, then exits abruptly.
    pid_file = tmp_path / "sleeper.pid"
    middle = (
        "import subprocess, sys, os, signal\n"
        "from deploy.common import process\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=process.die_with_parent(signal.SIGTERM))\n"
        "open(sys.argv[1], 'w').write(str(child.pid))\n"
        "os._exit(0)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", middle, str(pid_file)], check=True, env=env)
    sleeper = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(sleeper, 0)
        except ProcessLookupError:
            return
        # Reaped by init (or a subreaper) once it died; a zombie still answers kill(0).
        try:
            state = pathlib.Path("/proc/%d/stat" % sleeper).read_text().split()[2]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.05)
    os.kill(sleeper, signal.SIGKILL)
    pytest.fail("the child outlived its parent by 10 s")


def test_find_java_refuses_an_old_java(tmp_path):
    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake.chmod(0o755)
    with pytest.raises(process.JavaNotFound, match="Kafka Connect needs Java 17"):
        process.find_java(str(fake), 17, needed_by="Kafka Connect")


def test_find_java_reports_what_it_tried(tmp_path):
    with pytest.raises(process.JavaNotFound, match="no java found"):
        process.find_java(str(tmp_path / "nope"))


def test_stop_on_signals_sets_the_event_on_sigterm_and_sigint():
    logged = []

    class Log:
        def info(self, fmt, *args):
            logged.append(fmt % args)

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            requested = process.stop_on_signals(Log())
            assert not requested.is_set()
            os.kill(os.getpid(), signum)
            assert requested.wait(5)
        assert logged == ["event=signal_received signal=SIGTERM", "event=signal_received signal=SIGINT"]
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
