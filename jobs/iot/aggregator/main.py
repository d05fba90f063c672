"""IoT windowed aggregator: wiring only (config, logs, metrics and health, signals, the job loop).

    bazel run //jobs/iot/aggregator -- --help
"""

import os
import sys

# The script's own folder is sys.path[0] when run as a file; it must not shadow the standard
# library (this package has an io.py) or be mistaken for a top-level package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import logging  # noqa: E402
import signal  # noqa: E402

from jobs.iot.aggregator import config as config_module  # noqa: E402
from jobs.iot.aggregator import io, ops  # noqa: E402

log = logging.getLogger("iot_aggregator")


def main(argv=None) -> int:
    try:
        config = config_module.load(argv)
    except config_module.ConfigError as error:
        print(f"aggregator: {error}", file=sys.stderr)
        return 2
    ops.configure_logging(config.log_level)
    metrics, health = ops.Metrics(), ops.Health()
    server = ops.serve_http(config.http_host, config.http_port, metrics, health)
    log.info("event=http_listening address=%s:%d paths=/metrics,/healthz,/readyz", *server.server_address[:2])
    job = io.AggregatorJob(config, metrics, health)

    def request_stop(signum, _frame):
        log.info("event=signal signal=%s action=finish_batch_and_stop", signal.Signals(signum).name)
        health.ready = False
        health.detail = "shutting down"
        job.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        job.run()
    except io.FatalError as error:
        log.error("event=fatal error=%r", str(error))
        return 1
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
