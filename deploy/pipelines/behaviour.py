"""The user-behaviour pipeline as one unit of real processes on loopback, against a given broker:

    WebSocket gateway (emulated users + real clients) -> ingestion service (gRPC)
        -> behaviour.events.v1 -> Flink job (mini-cluster) -> behaviour.metrics.v1 / sessions / late
        -> analytics service (chdb)

`BehaviourPipeline.start()` starts, in dependency order, the analytics service (unless an
already running one is given: one service owns the store of both streaming pipelines), the
ingestion service with an API key made for this run, the Flink job as a child process (its own
Python set) and the gateway, each waited on through a real readiness signal. `stop()` ends them
in reverse order. The demo, the end-to-end tests and the benchmark drive the pipeline through this
class and inject crashes with `kill_flink_job()` / `restart_flink_job()` (restored from the
job's latest retained checkpoint) and `kill_ingest()` / `start_ingest()`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import subprocess
import time
import urllib.request
import uuid
from typing import Callable, Optional

from datapipelines import kafka, topics
from deploy.common.process import die_with_parent, free_port, tail
from deploy.common.service import ServiceError, ServiceProcess, runfile
from deploy.pipelines.base import StreamingPipeline
from services.ingest import api_keys, auth

INGEST_BINARY = "services/ingest/ingest"
GATEWAY_BINARY = "services/ws_gateway/ws_gateway"
FLINK_JOB_BINARY = "jobs/behaviour/metrics/metrics"

TOPICS = (topics.BEHAVIOUR_EVENTS, topics.BEHAVIOUR_LATE_EVENTS, topics.BEHAVIOUR_METRICS, topics.BEHAVIOUR_SESSIONS)


@dataclasses.dataclass(frozen=True)
class BehaviourPipelineConfig:
    state_dir: pathlib.Path
    bootstrap: str
    # An analytics service already consuming this broker (e.g. the IoT pipeline's); None starts one.
    analytics_url: Optional[str] = None
    analytics_batch_max_ms: int = 300
    tenant: str = "behaviour-pipeline"
    # Emulated users of the gateway (0: real WebSocket clients only).
    users: int = 20
    rate: float = 40.0
    seed: int = 7
    late_fraction: float = 0.03
    # Lag of the model's late events. Kept below the job's allowed lateness, they arrive out of
    # order but are counted; events further behind go to the late topic.
    max_lateness_seconds: float = 5.0
    # The Flink job.
    allowed_lateness_seconds: float = 20.0
    idle_timeout_seconds: float = 10.0
    session_gap_seconds: int = 30 * 60
    checkpoint_interval_seconds: float = 2.0
    parallelism: int = 1
    # Where the job starts reading behaviour.events.v1: earliest-offset (all of it) or
    # latest-offset (from its start: a run on a long-lived broker).
    startup_mode: str = "earliest-offset"
    # The ingestion service: how far ahead of its clock a client_time may be.
    max_clock_skew_seconds: float = 300.0


class FlinkJob:
    """The behaviour job's py_binary as a child process in its own process group (Python + JVM)."""

    def __init__(self, argv: list[str], log_path: pathlib.Path):
        self.argv = argv
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None
        self.start_seconds: Optional[float] = None

    def start(self, timeout: float = 240.0) -> "FlinkJob":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the job's own Python set only
        argv = [str(runfile(self.argv[0]))] + self.argv[1:]
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True, preexec_fn=die_with_parent())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(f"flink job exited with {self.process.returncode} while starting; last log lines:\n"
                                   f"{tail(self.log_path, 40)}")
            if "event=job_submitted" in self._log_since(offset):
                self.start_seconds = time.monotonic() - began
                return self
            time.sleep(0.5)
        self.kill9()
        raise ServiceError(f"flink job not submitted after {timeout:.0f} s; last log lines:\n{tail(self.log_path, 40)}")

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 60.0) -> Optional[int]:
        """SIGTERM to the job's process: it cancels the job (checkpoints are retained) and exits."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()
        return self.process.returncode

    def kill9(self) -> Optional[int]:
        """SIGKILL to the whole group (Python driver and the JVM running the mini-cluster): a crash."""
        if self.process is None:
            return None
        self._kill_group()
        return self.process.returncode

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


class BehaviourPipeline(StreamingPipeline):
    """All components of the behaviour pipeline; `say` receives one line per step."""

    STOP_ORDER = (("gateway", "terminate"), ("flink_job", "terminate"), ("ingest", "terminate"),
                  ("analytics", "terminate"))

    def __init__(self, config: BehaviourPipelineConfig, say: Callable[[str], None] = print):
        super().__init__(config, say)
        self.ingest: Optional[ServiceProcess] = None
        self.gateway: Optional[ServiceProcess] = None
        self.flink_job: Optional[FlinkJob] = None
        self.flink_restarts = 0
        self._ingest_port = free_port()
        self._ingest_metrics_port = free_port()
        self._gateway_port = free_port()
        # One id per pipeline: consumer group and transactional ids must not clash with another
        # job on the same broker, and must stay the same across restarts of this one.
        self.run_id = uuid.uuid4().hex[:8]
        self._api_key: Optional[str] = None

    # --- addresses ------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap

    @property
    def analytics_url(self) -> str:
        return self.config.analytics_url or f"http://127.0.0.1:{self._analytics_port}"

    @property
    def ingest_target(self) -> str:
        return f"127.0.0.1:{self._ingest_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self._gateway_port}"

    @property
    def websocket_url(self) -> str:
        return f"ws://127.0.0.1:{self._gateway_port}/ws"

    @property
    def flink_state_dir(self) -> pathlib.Path:
        return self.config.state_dir / "flink"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> "BehaviourPipeline":
        try:
            kafka.ensure_topics(self.bootstrap, TOPICS)
            if self.config.analytics_url is None:
                self.start_analytics()
                self.say(f"analytics service (chdb) on {self.analytics_url}")
            self.start_ingest()
            self.say(f"ingestion service (gRPC) on {self.ingest_target}, tenant {self.config.tenant}")
            self.start_flink_job()
            self.say(f"flink job (mini-cluster, parallelism {self.config.parallelism}, checkpoints every "
                     f"{self.config.checkpoint_interval_seconds:g} s) submitted in {self.flink_job.start_seconds:.0f} s")
            self.start_gateway()
            self.say(f"websocket gateway on {self.gateway_url} ({self.config.users} emulated users, "
                     f"{self.config.rate:g} events/s)")
            return self
        except BaseException:
            self.stop()
            raise

    def _key(self) -> str:
        if self._api_key is None:
            self._api_key, record = auth.new_key(self.config.tenant, [auth.ANY], [auth.ANY])
            api_keys.append(self._keys_file, record)  # the file keeps only a salted hash
        return self._api_key

    @property
    def _keys_file(self) -> pathlib.Path:
        return self.config.state_dir / "ingest" / "api_keys.jsonl"

    def start_ingest(self) -> ServiceProcess:
        self._key()
        self.ingest = ServiceProcess(
            "ingest",
            [INGEST_BINARY, "--bootstrap", self.bootstrap, "--port", str(self._ingest_port),
             "--metrics-port", str(self._ingest_metrics_port), "--api-keys-file", str(self._keys_file),
             "--max-clock-skew-seconds", str(self.config.max_clock_skew_seconds), "--drain-seconds", "5"],
            self.logs_dir / "ingest.log",
            # /metrics answers once the gRPC server is serving (it starts after the port is bound).
            health_url=f"http://127.0.0.1:{self._ingest_metrics_port}/metrics",
        )
        self._timed("ingest", lambda: self.ingest.start(timeout=60))
        return self.ingest

    def start_flink_job(self, restore: bool = False) -> FlinkJob:
        c = self.config
        argv = [FLINK_JOB_BINARY, "--bootstrap", self.bootstrap, "--state-dir", str(self.flink_state_dir),
                "--startup-mode", c.startup_mode, "--group-id", f"behaviour-{self.run_id}",
                "--transactional-id-prefix", f"behaviour-{self.run_id}",
                "--checkpoint-interval-seconds", str(c.checkpoint_interval_seconds),
                "--allowed-lateness-seconds", str(c.allowed_lateness_seconds),
                "--idle-timeout-seconds", str(c.idle_timeout_seconds),
                "--session-gap-seconds", str(c.session_gap_seconds),
                "--parallelism", str(c.parallelism)]
        if restore:
            argv += ["--restore-from", "latest"]
        self.flink_job = FlinkJob(argv, self.logs_dir / "flink-job.log")
        self._timed("flink_restore" if restore else "flink", lambda: self.flink_job.start())
        return self.flink_job

    def kill_flink_job(self) -> Optional[int]:
        """SIGKILL of the job's driver and JVM (the mini-cluster dies with it)."""
        return self.flink_job.kill9() if self.flink_job else None

    def restart_flink_job(self) -> FlinkJob:
        """Starts the job again from its newest retained checkpoint (offsets, windows, sessions)."""
        self.flink_restarts += 1
        return self.start_flink_job(restore=True)

    def latest_checkpoint(self) -> Optional[pathlib.Path]:
        found = sorted(self.flink_state_dir.glob("checkpoints/*/chk-*/_metadata"), key=lambda p: p.stat().st_mtime)
        return found[-1].parent if found else None

    def kill_ingest(self) -> int:
        return self.ingest.kill9()

    def start_gateway(self, users: Optional[int] = None, rate: Optional[float] = None) -> ServiceProcess:
        c = self.config
        users = c.users if users is None else users
        self.gateway = ServiceProcess(
            "ws_gateway",
            [GATEWAY_BINARY, "--port", str(self._gateway_port), "--ingest-target", self.ingest_target,
             "--tenant", c.tenant, "--producer-id", f"ws-gateway-{self.run_id}", "--users", str(users),
             "--rate", str(c.rate if rate is None else rate), "--seed", str(c.seed),
             "--late-fraction", str(c.late_fraction), "--max-lateness-seconds", str(c.max_lateness_seconds),
             "--drain-seconds", "10"],
            self.logs_dir / "ws_gateway.log",
            health_url=f"{self.gateway_url}/healthz",
            env={"DP_WS_API_KEY": self._key()},  # never on the command line
        )
        self._timed("gateway", lambda: self.gateway.start(timeout=60))
        return self.gateway

    def stop_gateway(self) -> dict:
        """SIGTERM: emulation stops, queued events are sent and acknowledged; returns the emulation summary."""
        if self.gateway is None:
            return {}
        code = self.gateway.terminate()
        if code != 0:
            self.say(f"ws_gateway exited with {code}")
        return emulation_summary(self.gateway.log_text())

    # --- queries --------------------------------------------------------------------------

    def gateway_metric(self, name: str) -> float:
        """Sum of one Prometheus series family of the gateway (all label sets)."""
        return prometheus_sum(f"{self.gateway_url}/metrics", name)


def prometheus_sum(metrics_url: str, name: str) -> float:
    """Sum of one Prometheus series family (all label sets) a /metrics endpoint serves."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def emulation_summary(log_text: str) -> dict:
    """The gateway's emulation figures as numbers: its exit summary (after the drain), else its last log line."""
    lines = ([line for line in log_text.splitlines() if line.startswith("ws_gateway: emulated ")]
             or [line for line in log_text.splitlines() if "event=emulation_s" in line])
    if not lines:
        return {}
    out = {}
    for key, value in re.findall(r"(\w+)=([0-9.]+)", lines[-1]):
        out[key] = float(value) if "." in value else int(value)
    return out
