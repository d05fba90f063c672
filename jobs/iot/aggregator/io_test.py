"""The Kafka loop's pure parts: how a batch is cut, and the aggregate message it emits."""

import threading
import time
import types

from datapipelines.iot.v1 import reading_aggregate_pb2
from jobs.iot.aggregator import io, state


class FakeConsumer:
    """Hands out `arrivals` (lists of records) one consume call at a time; [] means nothing arrived."""

    def __init__(self, arrivals):
        self.arrivals = list(arrivals)
        self.calls = []

    def consume(self, num_messages, timeout):
        self.calls.append((num_messages, timeout))
        got = self.arrivals.pop(0) if self.arrivals else []
        assert len(got) <= num_messages
        if len(got) < num_messages:
            time.sleep(timeout)  # librdkafka waits the whole timeout for a batch it cannot fill
        return got


def job(consumer, batch_size=5, interval=0.5):
    config = types.SimpleNamespace(batch_size=batch_size, commit_interval_seconds=interval)
    return types.SimpleNamespace(config=config, consumer=consumer, stop=threading.Event())


def next_batch(fake):
    return io.AggregatorJob._next_batch(fake)


def test_a_full_batch_returns_at_once():
    consumer = FakeConsumer([[1, 2, 3, 4, 5], [6]])
    assert next_batch(job(consumer)) == [1, 2, 3, 4, 5]
    assert consumer.calls == [(5, io.DRAIN_WAIT_SECONDS)]


def test_a_partial_batch_is_committed_as_soon_as_records_stop_arriving():
    consumer = FakeConsumer([[], [], [1, 2], [3]])
    assert next_batch(job(consumer)) == [1, 2]
    assert len(consumer.calls) == 3
    assert all(n == 5 and 0 < timeout <= io.DRAIN_WAIT_SECONDS for n, timeout in consumer.calls)


def test_nothing_arrives_within_the_commit_interval():
    consumer = FakeConsumer([])
    began = time.monotonic()
    assert next_batch(job(consumer, interval=0.1)) == []
    assert time.monotonic() - began < 1.0
    assert 1 <= len(consumer.calls) <= 0.1 / io.DRAIN_WAIT_SECONDS + 1


def test_a_stop_request_ends_the_wait():
    fake = job(FakeConsumer([]), interval=60)
    fake.stop.set()
    began = time.monotonic()
    assert next_batch(fake) == []
    assert time.monotonic() - began < 1.0


def _reference(aggregate, emit_us):
    """The message built field by field, the way the contract reads."""
    (scope, key, site, kind, start, end, count, temperature, humidity, pressure, battery, late, version,
     closed) = aggregate

    def stats(values):
        n, low, high, total = values
        if not n:
            return reading_aggregate_pb2.MetricStats()
        return reading_aggregate_pb2.MetricStats(count=n, min=low, max=high, mean=total / n, sum=total)

    return reading_aggregate_pb2.ReadingAggregate(
        scope=scope, key_id=key, site_id=site, window_kind=kind, window_start_time=state.timestamp(start),
        window_end_time=state.timestamp(end), reading_count=count, temperature_celsius=stats(temperature),
        humidity_percent=stats(humidity), pressure_hpa=stats(pressure), battery_percent=stats(battery),
        late_reading_count=late, version=version, emit_time=state.timestamp(emit_us), window_closed=closed)


def test_aggregate_message_is_the_contract_message_byte_for_byte():
    start = 1_714_564_800_000_000
    aggregates = [
        (1, "dev-1", "site-a", 1, start, start + 60_000_000, 3, (3, 20.5, 22.0, 64.0), (0, 0.0, 0.0, 0.0),
         (2, 1000.0, 1013.25, 2013.25), (1, 90.0, 90.0, 90.0), 1, 42, False),
        (2, "site-a", "site-a", 2, start, start + 300_000_000, 0, (0, 0.0, 0.0, 0.0), (0, 0.0, 0.0, 0.0),
         (0, 0.0, 0.0, 0.0), (0, 0.0, 0.0, 0.0), 0, 43, True),
    ]
    emit_us = start + 123_456
    for aggregate in aggregates:
        want = _reference(aggregate, emit_us)
        for got in (io.aggregate_message(aggregate, emit_us),
                    io.aggregate_message(aggregate, emit_us, state.timestamp(emit_us))):
            assert got == want
            assert got.SerializeToString() == want.SerializeToString()
            assert got.HasField("humidity_percent")  # empty statistics stay present
