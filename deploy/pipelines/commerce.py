"""The commerce batch pipeline as one unit of real processes on loopback, against a given PostgreSQL:

    shop simulator -> HDFS (WebHDFS) /raw/commerce/events/dt=D/ -> Airflow DAG commerce_daily
        (`airflow dags test`: sensor, Spark job through Spark Connect, quality checks, publish)
        -> PostgreSQL schema mart

`CommercePipeline.start()` starts HDFS (NameNode + DataNodes, in-process launcher) and the Spark
Connect server (its own launcher and Python set) side by side, each waited on through its real
readiness signal; `generate_day()` runs the shop simulator for one day; `run_dag()` runs the DAG
for that day with the real Airflow (SQLite metadata under the state directory), printing the task
states as they change, and returns what proves the day worked (`DayResult`, read back from
PostgreSQL and the Airflow metadata); `stop()` ends the servers in reverse order.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import os
import pathlib
import re
import sqlite3
import subprocess
import time
from typing import Callable, Dict, Optional

from deploy.common.process import die_with_parent, free_port, free_ports, tail
from deploy.common.service import ServiceError, ServiceProcess, runfile
from deploy.hdfs.cluster import PORTS_PER_DATANODE, DataNodePorts, HdfsCluster, HdfsConfig
from deploy.pipelines.base import Pipeline

SPARK_BINARY = "deploy/spark/connect_server"
SHOP_SIMULATOR_BINARY = "services/shop_simulator/shop_simulator"
AIRFLOW_CLI_BINARY = "deploy/airflow/cli"
DAG_ID = "commerce_daily"
RAW_ROOT = "/raw/commerce/events"
SPARK_READY = re.compile(r"spark connect server ready on (sc://\S+)")
JOB_COMPUTED = re.compile(r"event=computed table=(\S+) rows=(\d+)")
SPARK_READY_SECONDS = re.compile(r"event=server_ready .*seconds=([0-9.]+)")
# Another Python set's launcher sets its own path; ours (core) must not leak into it.
FOREIGN_ENV = ("PYTHONPATH", "PYTHONSAFEPATH", "RUNFILES_DIR", "RUNFILES_MANIFEST_FILE")


@dataclasses.dataclass(frozen=True)
class CommercePipelineConfig:
    state_dir: pathlib.Path
    # The application role's DSN of a migrated PostgreSQL (deploy/postgres): the marts' home.
    postgres_dsn: str
    datanodes: int = 1
    spark_master: str = "local[2]"
    spark_driver_memory: str = "768m"
    # One simulated day of shop logs.
    users: int = 300
    products: int = 60
    events_per_day: int = 3000
    part_lines: int = 2000
    seed: int = 7
    dag_timeout_seconds: float = 900.0
    progress_seconds: float = 15.0
    # More environment of the DAG's run (e.g. a running Superset's address and login: the publish
    # step refreshes its dashboards).
    extra_airflow_env: Optional[Dict[str, str]] = None


@dataclasses.dataclass
class DayResult:
    """What proves one day went through: raw lines in, valid and rejected, marts out, revenue, tasks."""

    day: dt.date
    dag_exit_code: Optional[int] = None
    dag_state: str = "unknown"
    task_states: Dict[str, str] = dataclasses.field(default_factory=dict)
    raw_lines: int = 0
    valid_events: int = 0
    rejected_lines: int = 0
    mart_rows: Dict[str, int] = dataclasses.field(default_factory=dict)
    revenue: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)  # currency -> gross/net minor
    quality_report: str = ""
    dag_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (self.dag_state == "success" and self.raw_lines > 0
                and self.valid_events + self.rejected_lines == self.raw_lines
                and sum(self.mart_rows.values()) > 0 and bool(self.quality_report))


class CommercePipeline(Pipeline):
    """HDFS and the Spark Connect server; the simulator and the DAG run as child processes."""

    STOP_ORDER = (("spark", "terminate"), ("hdfs", "stop"))

    def __init__(self, config: CommercePipelineConfig, say: Callable[[str], None] = print):
        super().__init__(config, say)
        self.hdfs: Optional[HdfsCluster] = None
        self.spark: Optional[ServiceProcess] = None
        self.spark_remote: Optional[str] = None
        self._spark_port = free_port()
        self._spark_launched = 0.0
        self._spark_timeout = 300.0
        self._airflow_migrate: Optional[subprocess.Popen] = None
        self._attached: Optional[Dict[str, str]] = None

    # --- addresses ------------------------------------------------------------------------

    @property
    def webhdfs_url(self) -> str:
        return self._attached["webhdfs_url"] if self._attached else self.hdfs.webhdfs_url

    @property
    def raw_root(self) -> str:
        return (self._attached["hdfs_url"] if self._attached else self.hdfs.hdfs_url) + RAW_ROOT

    def attach(self, webhdfs_url: str, hdfs_url: str, spark_remote: str) -> "CommercePipeline":
        """Use a running HDFS and Spark Connect server (e.g. the local stack's) instead of starting
        them: `start()` is not called, `stop()` leaves them alone."""
        self._attached = {"webhdfs_url": webhdfs_url, "hdfs_url": hdfs_url}
        self.spark_remote = spark_remote
        return self

    @property
    def airflow_home(self) -> pathlib.Path:
        return self.config.state_dir / "airflow"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> "CommercePipeline":
        """The Spark Connect server is launched first and HDFS started while its JVM comes up.

        Every process is started from the calling thread: a child's parent-death signal fires
        when the thread that forked it ends, so a helper thread would stop the servers with it."""
        try:
            if self.spark is None:
                self.launch_spark()
            self._timed("hdfs", self._start_hdfs)
            self.say(f"hdfs {self.hdfs.version} on {self.hdfs.hdfs_url} (WebHDFS {self.webhdfs_url}), "
                     f"{self.config.datanodes} DataNode(s)")
            self.wait_spark()
            self.say(f"spark connect server ({self.config.spark_master}) on {self.spark_remote}")
            return self
        except BaseException:
            self.stop()
            raise

    def _start_hdfs(self) -> None:
        ports = free_ports(2 + PORTS_PER_DATANODE * self.config.datanodes)
        nodes = tuple(DataNodePorts(*ports[2 + PORTS_PER_DATANODE * k: 2 + PORTS_PER_DATANODE * (k + 1)])
                      for k in range(self.config.datanodes))
        self.hdfs = HdfsCluster(HdfsConfig(state_dir=self.config.state_dir, namenode_port=ports[0],
                                           namenode_http_port=ports[1], datanode_ports=nodes))
        self.hdfs.start()

    def launch_spark(self, timeout: float = 300.0) -> None:
        """Starts the Spark Connect server's launcher and returns at once (`wait_spark` waits).

        Call it early: the JVM and SparkContext take 15-120 s, time other components can use."""
        self._spark_launched = time.monotonic()
        self._spark_timeout = timeout
        self.spark = ServiceProcess(
            "spark", [SPARK_BINARY, "--port", str(self._spark_port), "--state-dir", str(self.config.state_dir),
                      "--master", self.config.spark_master, "--driver-memory", self.config.spark_driver_memory,
                      "--start-timeout", str(int(timeout))],
            self.logs_dir / "spark-connect.log")
        for name in FOREIGN_ENV:
            self.spark.env.pop(name, None)
        self.spark.start()

    def wait_spark(self) -> None:
        """Until the launcher's ready line, printed only after a query through the Connect client answered."""
        deadline = self._spark_launched + self._spark_timeout + 10
        while time.monotonic() < deadline:
            match = SPARK_READY.search(self.spark.log_text())
            if match:
                self.spark_remote = match.group(1)
                # The launcher's own figure: this wait may begin long after the server was ready.
                took = SPARK_READY_SECONDS.search(self.spark.log_text())
                self.timings["spark"] = float(took.group(1)) if took else time.monotonic() - self._spark_launched
                return
            if self.spark.exited() is not None:
                break
            time.sleep(0.5)
        raise ServiceError(f"the Spark Connect server did not become ready; last log lines:\n"
                           f"{tail(self.spark.log_path, 30)}")

    # --- the day --------------------------------------------------------------------------

    def _child_env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def generate_day(self, day: dt.date) -> int:
        """One day of shop logs into HDFS (part files, then _SUCCESS); returns the lines written."""
        c = self.config
        argv = [str(runfile(SHOP_SIMULATOR_BINARY)), "--start-date", day.isoformat(), "--days", "1",
                "--users", str(c.users), "--products", str(c.products), "--events-per-day", str(c.events_per_day),
                "--part-lines", str(c.part_lines), "--seed", str(c.seed), "--webhdfs-url", self.webhdfs_url,
                "--root", RAW_ROOT]
        lines, last = 0, collections.deque(maxlen=20)
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              text=True, env=self._child_env(), preexec_fn=die_with_parent()) as process:
            for line in process.stdout:
                line = line.strip()
                last.append(line)
                if "event=day_published" in line or "event=finished" in line:
                    self.say("shop simulator: " + line)
                    match = re.search(r"\blines=(\d+)", line)
                    lines = int(match.group(1)) if match and "day_published" in line else lines
        if process.returncode != 0:
            raise ServiceError(f"the shop simulator exited with {process.returncode}; last lines:\n" + "\n".join(last))
        return lines

    def _airflow_env(self) -> dict:
        return self._child_env(
            DP_AIRFLOW_HOME=self.airflow_home, DP_WEBHDFS_URL=self.webhdfs_url, DP_COMMERCE_RAW_ROOT=self.raw_root,
            DP_SPARK_REMOTE=self.spark_remote, DP_COMMERCE_POSTGRES_DSN=self.config.postgres_dsn,
            DP_COMMERCE_RETRY_DELAY_SECONDS=5, DP_COMMERCE_MAX_RETRY_DELAY_SECONDS=20,
            DP_COMMERCE_SENSOR_POKE_SECONDS=5, DP_COMMERCE_SENSOR_TIMEOUT_SECONDS=300,
            **(self.config.extra_airflow_env or {}))

    def prepare_airflow(self) -> None:
        """Creates Airflow's metadata database in the background (a minute on a busy machine);
        `run_dag` waits for it. Call it from the thread that lives longest (see `start`)."""
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / "airflow-db-migrate.log", "ab") as log:
            self._airflow_migrate = subprocess.Popen(
                [str(runfile(AIRFLOW_CLI_BINARY)), "db", "migrate"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self._airflow_env(), preexec_fn=die_with_parent())

    def run_dag(self, day: dt.date) -> DayResult:
        """`airflow dags test commerce_daily DAY` on the real services; prints task states as they change."""
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"airflow-dags-test-{day.isoformat()}.log"
        env = self._airflow_env()
        result = DayResult(day=day)
        began = time.monotonic()
        if self._airflow_migrate is not None:
            self.say("waiting for the Airflow metadata database (db migrate)")
            if self._airflow_migrate.wait(self.config.dag_timeout_seconds) != 0:
                self.say(f"airflow db migrate failed; see {self.logs_dir / 'airflow-db-migrate.log'}")
            self._airflow_migrate = None
        with open(log_path, "ab") as log:
            process = subprocess.Popen([str(runfile(AIRFLOW_CLI_BINARY)), "dags", "test", DAG_ID, day.isoformat()],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                       preexec_fn=die_with_parent())
        shown, last_report = None, began
        try:
            deadline = began + self.config.dag_timeout_seconds
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(1)
                states = self.task_states(day)
                # A line when a task changes state, and at least every `progress_seconds`.
                if (states and states != shown) or time.monotonic() - last_report >= self.config.progress_seconds:
                    shown, last_report = states, time.monotonic()
                    computed = JOB_COMPUTED.findall(tail(log_path, 40))
                    self.say(f"{last_report - began:4.0f} s: " + (", ".join(
                        f"{task} {state}" for task, state in states.items()) or "airflow starting (db migrate, DAG parse)")
                        + (f"; the job computed {computed[-1][0]} ({computed[-1][1]} rows)" if computed else ""))
            if process.poll() is None:
                process.kill()
                self.say(f"airflow dags test did not finish in {self.config.dag_timeout_seconds:.0f} s: killed")
            result.dag_exit_code = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        result.dag_seconds = time.monotonic() - began
        result.task_states = self.task_states(day)
        result.dag_state = self.dag_state(day)
        if result.dag_state != "success":
            self.say(f"the DAG run ended {result.dag_state}; last lines of {log_path}:\n{tail(log_path, 30)}")
        self._read_marts(result)
        return result

    # --- results --------------------------------------------------------------------------

    def _airflow_db(self, sql: str, *params) -> list:
        path = self.airflow_home / "airflow.db"
        if not path.exists():
            return []
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.Error:  # not migrated yet, or locked for a moment
            return []

    def task_states(self, day: dt.date) -> Dict[str, str]:
        """{task_id: state} of the latest run of `day` (tries shown when above 1)."""
        rows = self._airflow_db(
            "SELECT ti.task_id, ti.state, ti.try_number FROM task_instance ti JOIN dag_run dr ON dr.dag_id = ti.dag_id "
            "AND dr.run_id = ti.run_id WHERE dr.dag_id = ? AND date(dr.logical_date) = ? "
            "ORDER BY ti.start_date IS NULL, ti.start_date, ti.task_id",
            DAG_ID, day.isoformat())
        return {task: (state or "pending") + (f" (try {tries})" if tries and tries > 1 else "")
                for task, state, tries in rows}

    def dag_state(self, day: dt.date) -> str:
        rows = self._airflow_db("SELECT state FROM dag_run WHERE dag_id = ? AND date(logical_date) = ? "
                                "ORDER BY id DESC LIMIT 1", DAG_ID, day.isoformat())
        return rows[0][0] if rows else "no run"

    def _read_marts(self, result: DayResult) -> None:
        import psycopg

        day = result.day
        with psycopg.connect(self.config.postgres_dsn) as conn:
            run = conn.execute(
                "SELECT raw_lines, valid_events, rejected_lines, table_rows FROM mart.job_run "
                "WHERE event_date = %s AND status = 'SUCCEEDED' ORDER BY finished_at DESC LIMIT 1", (day,)).fetchone()
            if run is not None:
                result.raw_lines, result.valid_events, result.rejected_lines = run[0] or 0, run[1] or 0, run[2] or 0
                result.mart_rows = {table: int(rows) for table, rows in sorted((run[3] or {}).items())}
            for currency, gross, net in conn.execute(
                    "SELECT currency_code, sum(gross_revenue_amount_minor), sum(net_revenue_amount_minor) "
                    "FROM mart.daily_category_revenue WHERE event_date = %s GROUP BY currency_code "
                    "ORDER BY currency_code", (day,)):
                result.revenue[currency] = {"gross_minor": int(gross), "net_minor": int(net)}
            report = conn.execute("SELECT quality_report FROM mart.published_day WHERE event_date = %s",
                                  (day,)).fetchone()
            result.quality_report = report[0] if report else ""
