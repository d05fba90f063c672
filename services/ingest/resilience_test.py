"""Kafka goes away mid-stream and comes back: callers get retryable errors with a retry hint, a
client that retries delivers everything, and every event is in Kafka exactly once.

The broker is stopped and restarted on the same state directory and ports (kafka_broker_factory),
as an operator restarting it would.
"""

import collections
import threading
import time
import uuid


from datapipelines import topics
from services.ingest import client_lib, sample_events
from services.ingest.servicer import HEADER_EVENT_ID
from services.ingest.testing import KeyRing, ServiceThread, header, read_all, settings_for
from tests.fixtures.kafka_broker import kafka_broker_factory  # noqa: F401  (pytest fixture)

EVENTS = 40_000
BATCH = 200


def test_broker_stopped_and_restarted_mid_stream(kafka_broker_factory, tmp_path):  # noqa: F811
    state = tmp_path / "broker"
    broker = kafka_broker_factory(state_dir=state)
    ports = {"port": broker.config.port, "controller_port": broker.config.controller_port}
    keys = KeyRing(tmp_path / "keys.jsonl")
    key = keys.add("t1")
    settings = settings_for(broker.bootstrap, keys.path, [
        "--ack-timeout-seconds", "3", "--admission-wait-seconds", "0.5", "--retry-after-ms", "250",
        "--max-in-flight-events", "10000"])
    ids = "rs-" + uuid.uuid4().hex[:8]
    batches = list(sample_events.batches(EVENTS, BATCH, "t1", prefix=ids))
    outcome = {}
    acked_before_stop = []

    with ServiceThread(settings) as service:
        def deliver():
            with client_lib.IngestClient(service.target, key) as client:
                try:
                    outcome["result"] = client.deliver(batches, give_up_after=240, batches_per_second=20)
                except Exception as error:  # surfaced by the assertion below
                    outcome["error"] = error

        sender = threading.Thread(target=deliver)
        sender.start()
        # Let part of the stream through, then take Kafka away.
        deadline = time.monotonic() + 60
        while (service.server.metrics.registry.get_sample_value(
                "dp_ingest_events_accepted_total", {"schema": sample_events.SCHEMA_NAME}) or 0) < 5_000:
            assert time.monotonic() < deadline and sender.is_alive(), outcome
            time.sleep(0.1)
        acked_before_stop.append(time.monotonic())
        broker.stop()
        time.sleep(6)
        assert sender.is_alive(), "the client finished while Kafka was down: %r" % outcome
        assert not service.server.sink.available
        kafka_broker_factory(state_dir=state, **ports)
        sender.join(300)
        assert not sender.is_alive(), "client did not finish"
        assert "error" not in outcome, outcome.get("error")

    result = outcome["result"]
    print("\nbroker restart: calls=%d retries=%d errors=%s" % (
        result.calls, result.retries, dict(collections.Counter(code for code, _, _ in result.errors))))
    codes = collections.Counter(code for code, _, _ in result.errors)
    assert result.retries > 0 and set(codes) <= {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}, result.errors
    assert all(hint == 250 for _, _, hint in result.errors), result.errors
    # Every batch settled; events are accepted once or reported as already accepted.
    assert set(result.acks) == {b.batch_id for b in batches}
    rejected = [r for r in result.rejections() if r.reason != client_lib.pb.REJECTION_REASON_DUPLICATE]
    assert rejected == []

    found = collections.Counter()
    for record in read_all(broker.bootstrap, topics.BEHAVIOUR_EVENTS.name):
        event_id = header(record, HEADER_EVENT_ID) or ""
        if event_id.startswith(ids + "-"):
            found[event_id] += 1
    expected = {"%s-%d" % (ids, n) for n in range(EVENTS)}
    assert set(found) == expected, "missing: %d" % len(expected - set(found))
    doubled = {k: v for k, v in found.items() if v > 1}
    assert not doubled, "written more than once: %s" % list(doubled)[:10]
