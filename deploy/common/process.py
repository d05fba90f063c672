"""Helpers every launcher of the local stack shares: ports, log tails, env settings, child processes.

The launchers (deploy/kafka/broker.py, deploy/postgres/server.py, deploy/connect/worker.py) start
a server as a child process, wait until it answers on a loopback port, and stop it. What they
have in common lives here, so a fix reaches all of them.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable, Optional, Tuple

_PR_SET_PDEATHSIG = 1


class JavaNotFound(RuntimeError):
    """No usable Java runtime; the message says what was tried and what to install."""


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_ports(count: int, host: str = "127.0.0.1") -> Tuple[int, ...]:
    """Ports that are free on `host` right now (all held open together, so distinct).

    They are closed before returning: another process may take one before the caller binds
    it, so a caller retries a start that fails on a port clash.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return tuple(sock.getsockname()[1] for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def stop_child(child: Optional[subprocess.Popen], timeout: float) -> Optional[int]:
    """SIGTERM to a child process, SIGKILL if it has not exited after `timeout` seconds; its exit
    code (None when there is no child)."""
    if child is None:
        return None
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return child.returncode


def tail(path: pathlib.Path, lines: int = 25, missing: str = "") -> str:
    """The last `lines` lines of a text file, or `missing` when it cannot be read."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return missing
    return "\n".join(text[-lines:])


def env_int(name: str, default: int, what: str = "a number") -> int:
    """An integer setting from the environment; exits with a clear message when it is not one."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit("%s=%r is not %s" % (name, value, what)) from None


def workspace_state_dir() -> pathlib.Path:
    """<workspace>/.state: the workspace under `bazel run`, else the current directory."""
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY") or os.getcwd()
    return pathlib.Path(workspace) / ".state"


def _load_prctl():
    """libc's prctl, looked up now: a child between fork and exec must not load libraries (locks)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def set_parent_death_signal(signum: int) -> None:
    """In a child before exec: receive `signum` when the launching process dies.

    Call it after any change of credentials (setuid clears the death signal). A no-op where
    prctl is unavailable.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)


def stop_on_signals(log) -> threading.Event:
    """An Event that the first SIGTERM or SIGINT sets (and `log` records), for a launcher's main().

    Call it from the main thread before starting anything: the launcher passes the Event as the
    `cancel` of its start-up and waits on it afterwards, then stops its processes gracefully.
    """
    requested = threading.Event()

    def request_stop(signum, _frame) -> None:
        log.info("event=signal_received signal=%s", signal.Signals(signum).name)
        requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return requested


def die_with_parent(signum: int = signal.SIGTERM) -> Optional[Callable[[], None]]:
    """A `preexec_fn` that makes the child get `signum` when we die; None where unsupported."""
    if _PRCTL is None:
        return None

    def preexec() -> None:
        set_parent_death_signal(signum)

    return preexec


def find_java(explicit: Optional[str] = None, min_major: int = 17, needed_by: str = "this program") -> Tuple[str, str]:
    """The java launcher to use and its version: `explicit`, else $JAVA_HOME/bin/java, else `java`.

    Raises JavaNotFound unless it is Java `min_major` or newer.
    """
    candidates = [explicit] if explicit else []
    if not explicit and os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "bin", "java"))
    if not explicit:
        candidates.append("java")
    for java in candidates:
        try:
            result = subprocess.run(
                [java, "-XX:-UsePerfData", "-version"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r'version "(\d+)(?:\.(\d+))?[^"]*"', result.stdout)
        if not match:
            continue
        major = int(match.group(1))
        if major == 1:  # "1.8.0_x" style
            major = int(match.group(2) or 0)
        version = match.group(0).split('"')[1]
        if major < min_major:
            raise JavaNotFound(
                "%s is Java %s; %s needs Java %d+ (set JAVA_HOME or install openjdk-17-jre-headless)"
                % (java, version, needed_by, min_major)
            )
        return java, version
    raise JavaNotFound(
        "no java found (tried %s): install Java %d+ or set JAVA_HOME" % (", ".join(candidates), min_major)
    )
