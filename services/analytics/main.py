"""The analytics service process: wiring only (see README.md).

    bazel run //services/analytics -- --help

Start: settings → store (chdb path or server) → migrations → Kafka clients → sink thread and
HTTP server. SIGTERM/SIGINT: mark not ready, stop consuming, store and commit the last batch
(within --drain-seconds), close the Kafka clients, stop HTTP, close the store.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from typing import Optional, Sequence

from confluent_kafka import Consumer, Producer

from datapipelines import kafka
from services.analytics import config, http_api, migrations, sink, topic_counts
from services.analytics.metrics import Metrics
from services.analytics.store import ChdbStore, ClickHouseServerStore, Store, StoreError
from services.analytics.web import pages

LOG = logging.getLogger("analytics")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    logging.getLogger("clickhouse_connect").setLevel(logging.WARNING)


def open_store(settings: config.Settings) -> Store:
    if settings.clickhouse is not None:
        return ClickHouseServerStore(settings.clickhouse)
    return ChdbStore(settings.data_dir, settings.database)


def main(argv: Optional[Sequence[str]] = None) -> int:
    settings = config.load(argv)
    setup_logging(settings.log_level)
    LOG.info("event=starting %s", settings.describe())
    try:
        store = open_store(settings)
        applied = migrations.migrate(store)
    except (StoreError, migrations.MigrationError) as err:
        LOG.error("event=store_failed error=%r", str(err))
        return 2
    LOG.info("event=store_ready %s migrations_applied=%s", store.describe(), ",".join(applied) or "none")

    targets = sink.TARGETS
    wanted = [t.topic for t in targets] + [kafka.dead_letter_topic(t.topic) for t in targets]
    try:
        kafka.ensure_topics(settings.bootstrap, wanted, timeout=15)
    except Exception as err:
        LOG.error("event=kafka_unreachable bootstrap=%s error=%r hint=%r", settings.bootstrap, str(err),
                  "start a broker: bazel run //deploy/kafka:broker, or set --bootstrap")
        store.close()
        return 2

    metrics = Metrics()
    consumer = Consumer(kafka.consumer_config(
        settings.bootstrap, settings.group,
        **{"client.id": "analytics-sink", "group.instance.id": settings.instance_id, "max.poll.interval.ms": 300_000}))
    producer = Producer(kafka.producer_config(settings.bootstrap, **{"client.id": "analytics-dlq"}))
    the_sink = sink.Sink(store, consumer, producer, targets, settings.group, metrics,
                         batch_size=settings.batch_size, batch_max_seconds=settings.batch_max_ms / 1000,
                         crash_point=settings.crash_point)
    try:
        dashboard_pages = pages.Pages.load()
    except pages.PagesError as err:  # the API still works; the pages answer 404
        LOG.error("event=dashboards_unavailable error=%r", str(err))
        dashboard_pages = None
    counts = topic_counts.TopicCounts(settings.bootstrap)
    api = http_api.Api(store, metrics, lambda: the_sink.assigned, pages=dashboard_pages, topic_counts=counts)
    try:
        server = http_api.make_server(api, settings.host, settings.port)
    except OSError as err:
        LOG.error("event=http_bind_failed host=%s port=%d error=%r hint=%r", settings.host, settings.port, str(err),
                  "choose another --port / DP_ANALYTICS_PORT")
        consumer.close()
        store.close()
        return 2
    http_thread = http_api.serve_in_thread(server)
    LOG.info("event=http_listening host=%s port=%d dashboards=http://%s:%d/dashboards", settings.host,
             server.server_address[1], settings.host, server.server_address[1])

    stop = threading.Event()
    failure: list = []

    def on_signal(signum, _frame):
        LOG.info("event=signal signal=%s action=drain", signal.Signals(signum).name)
        api.draining.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def run_sink():
        try:
            the_sink.run(stop)
        except BaseException as err:  # noqa: BLE001 (reported, then the process exits non-zero)
            LOG.exception("event=sink_failed error=%r", str(err))
            failure.append(err)
            stop.set()

    sink_thread = threading.Thread(target=run_sink, name="sink", daemon=True)
    sink_thread.start()
    while not stop.wait(0.5):
        pass
    api.draining.set()
    began = time.monotonic()
    sink_thread.join(settings.drain_seconds)
    drained = not sink_thread.is_alive()
    if drained:
        consumer.close()
        producer.flush(5)
    else:
        LOG.error("event=drain_timeout seconds=%.1f note=%r", settings.drain_seconds,
                  "last batch not committed; it is replayed on restart and collapses by version")
    http_api.stop(server, http_thread)
    counts.close()
    if drained:
        store.close()
    LOG.info("event=stopped drained=%s drain_ms=%d failed=%s", drained, (time.monotonic() - began) * 1000,
             bool(failure))
    return 1 if failure or not drained else 0


if __name__ == "__main__":
    sys.exit(main())
