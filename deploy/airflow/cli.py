"""The Airflow CLI of the deployment //deploy/airflow:standalone runs: `bazel run //deploy/airflow:cli -- ARGS`.

Same state directory (DP_AIRFLOW_HOME, default as standalone), same DAG folder, same commerce
job launcher, so `dags test`, `dags trigger`, `variables set`, `connections add` act on that
deployment (or on a fresh one: a missing SQLite database is created first). Examples:

    bazel run //deploy/airflow:cli -- dags list
    bazel run //deploy/airflow:cli -- dags test commerce_daily 2026-01-05
    bazel run //deploy/airflow:cli -- variables set commerce_superset_url http://127.0.0.1:8088
"""

import os
import pathlib
import sys

from deploy.airflow import launcher
from deploy.common.process import env_int


def main() -> int:
    if sys.argv[1:] in ([], ["-h"], ["--help"]):
        print(__doc__)
        print("Everything after `--` goes to the airflow command; `... -- --help` of a subcommand explains it.")
        return 0 if sys.argv[1:] else 2
    config = launcher.AirflowConfig(
        state_dir=launcher.default_state_dir().absolute(),
        database_url=os.environ.get("DP_AIRFLOW_DB_URL"),
        admin_password=os.environ.get("DP_AIRFLOW_ADMIN_PASSWORD"),
        api_port=env_int("DP_AIRFLOW_PORT", launcher.DEFAULT_API_PORT, "a port number"),
    )
    env = launcher.airflow_env(config)
    if not config.database_url and not (config.state_dir / "airflow.db").exists():
        print("creating the metadata database in %s ..." % config.state_dir, file=sys.stderr)
        launcher.migrate(config, env)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "airflow"] + sys.argv[1:], env)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
