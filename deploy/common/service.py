"""A Python service of this repository run as a child process: start, wait healthy, stop, kill.

Used wherever one component drives another as a real process: the end-to-end tests, the
benchmarks and the demo. The program is a `py_binary` found in the caller's runfiles (tests and
`bazel run` both start in the runfiles root of this workspace), its output goes to a log file,
readiness is an HTTP health endpoint, and it dies with its parent.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Mapping, Optional, Sequence

from deploy.common.process import die_with_parent, tail


class ServiceError(RuntimeError):
    """The service did not start or stop as expected; the message carries its last log lines."""


def runfile(workspace_path: str) -> pathlib.Path:
    """A file of this workspace in the current runfiles tree (e.g. a py_binary's launcher)."""
    candidates = []
    for root in (os.environ.get("RUNFILES_DIR"), os.environ.get("TEST_SRCDIR")):
        if root:
            candidates.append(pathlib.Path(root, "data_pipelines", workspace_path))
    candidates.append(pathlib.Path.cwd() / workspace_path)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise ServiceError(
        f"{workspace_path} is not in the runfiles (looked in: {', '.join(map(str, candidates))}); "
        "add its target to the data of the test or binary that starts it"
    )


class ServiceProcess:
    """One child service. `argv[0]` may be a workspace path of a py_binary (see `runfile`)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: pathlib.Path,
        health_url: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
    ):
        self.name = name
        self.argv = list(argv)
        self.log_path = pathlib.Path(log_path)
        self.health_url = health_url
        self.env = dict(os.environ, **(env or {}))
        self.process: Optional[subprocess.Popen] = None
        self.start_seconds: Optional[float] = None

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process else None

    def exited(self) -> Optional[int]:
        return self.process.poll() if self.process else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 90.0) -> "ServiceProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = list(self.argv)
        if not os.path.isabs(argv[0]) and "/" in argv[0]:
            argv[0] = str(runfile(argv[0]))
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                preexec_fn=die_with_parent(),
            )
        if self.health_url:
            self.wait_healthy(timeout)
        self.start_seconds = time.monotonic() - started
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.exited()
            if code is not None:
                raise ServiceError(f"{self.name} exited with {code} while starting; last log lines:\n"
                                   f"{tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ServiceError(f"{self.name} not healthy at {self.health_url} after {timeout:.0f} s ({last}); "
                           f"last log lines:\n{tail(self.log_path)}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (the service drains); SIGKILL after `timeout`."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"{self.name} did not stop within {timeout:.0f} s: killing it", file=sys.stderr)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill9(self) -> int:
        """SIGKILL: the crash the fault tests inject."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self.process.returncode if self.process else 0

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.terminate()
