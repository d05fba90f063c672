#!/usr/bin/env bash
# Entrypoint of the Spark job image (dp-commerce-marts), on Spark on Kubernetes' conventions:
# SPARK_HOME=/opt/spark; the driver and executor pods that spark-submit (and the Spark
# Operator's SparkApplication) create call it with the role word `driver` or `executor` and
# pass the rest through SPARK_* environment variables. Any other command runs as given.
set -euo pipefail

SPARK_HOME="${SPARK_HOME:-/opt/spark}"

usage() {
  cat <<USAGE
usage: /opt/entrypoint.sh driver SPARK-SUBMIT-ARGS... | executor | COMMAND [ARGS...]

The commerce marts job (jobs/commerce/marts, PySpark) on Spark at ${SPARK_HOME}.
The job itself is /app/jobs/commerce/marts/main.py (local:///app/jobs/commerce/marts/main.py).

roles:
  driver ARGS   spark-submit in client mode inside the driver pod (what Spark on Kubernetes runs)
  executor      an executor backend; needs SPARK_DRIVER_URL, SPARK_EXECUTOR_ID,
                SPARK_EXECUTOR_CORES, SPARK_APPLICATION_ID, SPARK_EXECUTOR_POD_IP
  help, --help  this text
USAGE
}

require() {
  local name
  for name in "$@"; do
    if [ -z "${!name:-}" ]; then
      echo "entrypoint: executor mode needs the environment variable $name (set by Spark on Kubernetes)" >&2
      exit 2
    fi
  done
}

case "${1:-help}" in
  help|--help|-h) usage ;;
  driver)
    shift
    exec "$SPARK_HOME/bin/spark-submit" \
      --deploy-mode client \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS:-0.0.0.0}" \
      "$@"
    ;;
  executor)
    shift
    require SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_APPLICATION_ID SPARK_EXECUTOR_POD_IP
    # JVM options Spark passes as SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ... in order.
    java_opts=()
    for i in $(seq 0 1000); do
      var="SPARK_JAVA_OPT_$i"
      [ -n "${!var+set}" ] || break
      java_opts+=("${!var}")
    done
    memory="${SPARK_EXECUTOR_MEMORY:-1g}"
    exec java "${java_opts[@]}" -Xms"$memory" -Xmx"$memory" \
      -cp "${SPARK_CLASSPATH:+$SPARK_CLASSPATH:}$SPARK_HOME/conf:$SPARK_HOME/jars/*" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "$SPARK_DRIVER_URL" \
      --executor-id "$SPARK_EXECUTOR_ID" \
      --cores "$SPARK_EXECUTOR_CORES" \
      --app-id "$SPARK_APPLICATION_ID" \
      --hostname "$SPARK_EXECUTOR_POD_IP" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" \
      ${SPARK_EXECUTOR_POD_NAME:+--podName "$SPARK_EXECUTOR_POD_NAME"}
    ;;
  *) exec "$@" ;;
esac
