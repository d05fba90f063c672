"""Behaviour metrics job (PyFlink, Flink SQL): wiring only.

    bazel run //jobs/behaviour/metrics -- --help
    bazel run //jobs/behaviour/metrics                          (mini-cluster, 127.0.0.1:9092)
    bazel run //jobs/behaviour/metrics -- --jobmanager HOST:8081 (submit to a Flink cluster)
"""

import os
import sys

# The script's own folder is sys.path[0] when run as a file; it must not shadow the standard
# library (this package has an io.py) or be mistaken for a top-level package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import logging  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from jobs.behaviour.metrics import config as config_module  # noqa: E402
from jobs.behaviour.metrics import io, transform  # noqa: E402

log = logging.getLogger("behaviour_metrics")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        cfg = config_module.from_args(argv)
    except config_module.ConfigError as err:
        print(f"behaviour-metrics: {err}", file=sys.stderr)
        return 2
    contracts = io.Contracts.load()
    jars = io.jars()
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    # PyFlink writes the gateway JVM's log under FLINK_LOG_DIR (default: inside the installed
    # package, read-only under Bazel).
    os.environ.setdefault("FLINK_LOG_DIR", str(cfg.log_dir))

    from pyflink.table import EnvironmentSettings, TableEnvironment

    started = time.monotonic()
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    for key, value in io.flink_settings(cfg, jars).items():
        t_env.get_config().set(key, value)
    source = io.create_source(t_env, cfg, contracts)
    transform.register(t_env, source, cfg.windows)
    io.create_sinks(t_env, cfg, contracts)
    statements = t_env.create_statement_set()
    for statement in io.insert_statements(contracts):
        statements.add_insert_sql(statement)
    result = statements.execute()
    client = result.get_job_client()
    job_id = client.get_job_id() if client else None
    log.info(
        "event=job_submitted job_id=%s target=%s source=%s metrics=%s sessions=%s late=%s bounded=%s "
        "parallelism=%d checkpoints=%s setup_seconds=%.1f",
        job_id, cfg.jobmanager or "mini-cluster", contracts.events.topic, contracts.metrics.topic,
        contracts.sessions.topic, cfg.late_events_topic or contracts.late_events.topic, cfg.bounded, cfg.parallelism, cfg.checkpoint_dir,
        time.monotonic() - started,
    )
    if cfg.jobmanager:
        return 0  # detached: the cluster runs the job; cancel it with `flink cancel` or the web UI

    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        log.info("event=stopping signal=%s job_id=%s", signal.Signals(signum).name, job_id)
        try:
            if client:
                client.cancel().result()
        except Exception as err:  # noqa: BLE001
            # The gateway JVM (which runs the mini-cluster) shares this process group: a signal
            # sent to the group stops it too, and then there is nothing left to cancel.
            log.info("event=gateway_already_stopped job_id=%s error=%s", job_id, type(err).__name__)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        result.wait()
    except Exception:
        # The JVM may notice a group-wide SIGTERM before this interpreter runs its handler:
        # give a pending handler the chance to run (it exits 0) before calling this a failure.
        time.sleep(1.0)
        if stopping:
            sys.exit(0)
        raise
    log.info("event=job_finished job_id=%s seconds=%.1f", job_id, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
