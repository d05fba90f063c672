"""Apache Airflow 3.3 for the commerce pipeline on one machine: `bazel run //deploy/airflow:standalone`.

Starts the scheduler, DAG processor, triggerer and API server (LocalExecutor, SQLite metadata
by default) on 127.0.0.1 with the DAG folder jobs/commerce/dags, waits until the API server
reports every component healthy, prints the URL and the admin login, and stops everything on
SIGTERM or Ctrl-C. `--check URL` probes a running instance instead (exit 0 when healthy).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import time
import urllib.parse
from typing import Optional, Sequence

from deploy.airflow import launcher
from deploy.common.process import env_int, stop_on_signals, tail

LOG = logging.getLogger("airflow_standalone")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="standalone",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples: bazel run //deploy/airflow:standalone ; "
               "bazel run //deploy/airflow:standalone -- --port 0 --unpaused ; "
               "bazel run //deploy/airflow:standalone -- --check http://127.0.0.1:8080. "
               "The DAG reads its services from Airflow Variables/Connections or DP_* variables: "
               "see jobs/commerce/dags/README.md.",
    )
    parser.add_argument("--state-dir", type=pathlib.Path, default=launcher.default_state_dir(),
                        help="AIRFLOW_HOME: metadata DB, logs, secrets [env DP_AIRFLOW_HOME, default "
                             "$XDG_STATE_HOME/data-pipelines/airflow or ~/.local/state/data-pipelines/airflow]")
    parser.add_argument("--port", type=int, default=env_int("DP_AIRFLOW_PORT", launcher.DEFAULT_API_PORT, "a port number"),
                        help="API server (UI and REST) port on 127.0.0.1; 0 picks a free one "
                             "[env DP_AIRFLOW_PORT, default %d]" % launcher.DEFAULT_API_PORT)
    parser.add_argument("--worker-log-port", type=int, default=env_int("DP_AIRFLOW_WORKER_LOG_PORT", 0, "a port number"),
                        help="[logging] worker_log_server_port; the log servers are not started (logs are read "
                             "from the local folder), 0 picks a free one [env DP_AIRFLOW_WORKER_LOG_PORT]")
    parser.add_argument("--trigger-log-port", type=int, default=env_int("DP_AIRFLOW_TRIGGER_LOG_PORT", 0, "a port number"),
                        help="[logging] trigger_log_server_port, as above [env DP_AIRFLOW_TRIGGER_LOG_PORT]")
    parser.add_argument("--database-url", default=env.get("DP_AIRFLOW_DB_URL"),
                        help="SQLAlchemy URL of the metadata database [env DP_AIRFLOW_DB_URL, default SQLite "
                             "<state-dir>/airflow.db]")
    parser.add_argument("--admin-password", default=env.get("DP_AIRFLOW_ADMIN_PASSWORD"),
                        help="password of user admin [env DP_AIRFLOW_ADMIN_PASSWORD, default: generated once and "
                             "kept in <state-dir>/simple_auth_manager_passwords.json]")
    parser.add_argument("--job", type=pathlib.Path, default=env.get("DP_COMMERCE_JOB"),
                        help="launcher of the commerce marts job [env DP_COMMERCE_JOB, default: the one built "
                             "with this target]")
    parser.add_argument("--unpaused", action="store_true", default=env.get("DP_AIRFLOW_UNPAUSED", "") in ("1", "true"),
                        help="new DAGs start unpaused, so commerce_daily catches up at once [env DP_AIRFLOW_UNPAUSED=1]")
    parser.add_argument("--start-timeout", type=float, default=240.0, help="seconds to wait for health [240]")
    parser.add_argument("--check", metavar="URL",
                        help="probe the Airflow at URL (http://127.0.0.1:8080) and exit 0 if every component is healthy")
    return parser


def check(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        print("--check %r: want http://HOST:PORT" % url, file=sys.stderr)
        return 2
    config = launcher.AirflowConfig(state_dir=pathlib.Path("."), host=parts.hostname, api_port=parts.port or 80)
    document = launcher.health(config)
    missing = launcher.unhealthy(document)
    print(json.dumps(document, sort_keys=True) if document else "no answer from %s" % url)
    if missing:
        print("not healthy: %s" % ", ".join(missing), file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    if args.check:
        return check(args.check)
    config = launcher.with_free_ports(launcher.AirflowConfig(
        state_dir=args.state_dir.absolute(),
        api_port=args.port,
        worker_log_port=args.worker_log_port,
        trigger_log_port=args.trigger_log_port,
        database_url=args.database_url,
        job_launcher=args.job,
        admin_password=args.admin_password,
        unpaused=args.unpaused,
        start_timeout=args.start_timeout,
    ))
    stop = stop_on_signals(LOG)

    env = launcher.airflow_env(config)
    if not env.get("DP_COMMERCE_JOB"):
        print("warning: no commerce job launcher (DP_COMMERCE_JOB); the DAG's submit task will fail until it is set",
              file=sys.stderr)
    print("starting airflow in %s (dags: %s) ..." % (config.state_dir, config.dags_folder), flush=True)
    stack = launcher.AirflowStack(config, env)
    try:
        stack.start(cancel=stop, progress=lambda line: print(line, flush=True))
    except launcher.AirflowError as err:
        print("airflow failed to start: %s" % err, file=sys.stderr)
        return 0 if stop.is_set() else 1
    print("airflow ready at %s (started in %.1f s)" % (config.base_url, stack.start_seconds))
    print("login: %s / %s   (set with DP_AIRFLOW_ADMIN_PASSWORD; kept in %s)"
          % (launcher.ADMIN_USER, env["DP_AIRFLOW_ADMIN_PASSWORD"], config.passwords_file))
    print("dag %s in %s (%s)" % (launcher.DAG_ID, config.dags_folder,
                                 "unpaused" if config.unpaused else "paused: airflow dags unpause %s" % launcher.DAG_ID))
    print("commerce job: %s" % env.get("DP_COMMERCE_JOB", "(unset)"))
    print("airflow cli: PATH=%s:$PATH AIRFLOW_HOME=%s airflow ...   or: bazel run //deploy/airflow:cli -- ..."
          % (config.bin_dir, config.state_dir))
    print("logs: %s   (Ctrl-C stops)" % config.log_dir, flush=True)
    code = 0
    while not stop.wait(1.0):
        dead = stack.exited()
        if dead:
            log = stack.log_path(dead)
            print("airflow %s exited by itself with %s; stopping. Last lines of %s:\n%s"
                  % (dead, stack.processes[dead].returncode, log, tail(log, 30)), file=sys.stderr)
            code = 1
            break
    started = time.monotonic()
    codes = stack.stop()
    print("airflow stopped in %.1f s (exits: %s)" % (time.monotonic() - started,
                                                      ", ".join("%s=%s" % kv for kv in sorted(codes.items()))), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
