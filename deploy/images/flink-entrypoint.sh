#!/usr/bin/env bash
# Entrypoint of the Flink job image (dp-behaviour-metrics), on the official Flink image's
# conventions: FLINK_HOME=/opt/flink, the same role words, and any other command executed as
# given (the Flink Kubernetes Operator starts `bash -c "$FLINK_HOME/bin/kubernetes-*.sh ..."`).
set -euo pipefail

FLINK_HOME="${FLINK_HOME:-/opt/flink}"

usage() {
  cat <<USAGE
usage: /docker-entrypoint.sh ROLE [ARGS...] | COMMAND [ARGS...]

The behaviour metrics job (jobs/behaviour/metrics, PyFlink) on Flink at ${FLINK_HOME}.
The job itself is ${FLINK_HOME}/usrlib/jobs/behaviour/metrics/main.py.

roles:
  jobmanager [ARGS]       a session JobManager in the foreground
  standalone-job [ARGS]   an application-mode JobManager in the foreground
  taskmanager [ARGS]      a TaskManager in the foreground
  flink [ARGS]            the Flink CLI (flink run -py ..., flink --version)
  help, --help            this text
Any other command runs as given (the operator's kubernetes-jobmanager.sh / -taskmanager.sh).

environment:
  FLINK_PROPERTIES   extra config.yaml lines appended to a copy of ${FLINK_HOME}/conf
  FLINK_CONF_DIR     configuration folder (default ${FLINK_HOME}/conf)
USAGE
}

# The image's conf/ is read-only: extra properties go into a private copy.
if [ -n "${FLINK_PROPERTIES:-}" ]; then
  conf="$(mktemp -d /tmp/flink-conf.XXXXXX)"
  cp -L "${FLINK_CONF_DIR:-$FLINK_HOME/conf}"/* "$conf"/
  printf '\n%s\n' "$FLINK_PROPERTIES" >> "$conf/config.yaml"
  export FLINK_CONF_DIR="$conf"
fi

case "${1:-help}" in
  help|--help|-h) usage ;;
  jobmanager) shift; exec "$FLINK_HOME/bin/jobmanager.sh" start-foreground "$@" ;;
  standalone-job) shift; exec "$FLINK_HOME/bin/standalone-job.sh" start-foreground "$@" ;;
  taskmanager) shift; exec "$FLINK_HOME/bin/taskmanager.sh" start-foreground "$@" ;;
  flink) shift; exec "$FLINK_HOME/bin/flink" "$@" ;;
  *) exec "$@" ;;
esac
