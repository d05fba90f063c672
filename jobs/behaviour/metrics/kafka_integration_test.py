"""The behaviour job against a real Kafka broker, end to end, compared with a recomputation.

The job runs as a child process of its own py_binary (PyFlink, the flink Python set); this test
runs in the core set and talks to Kafka with confluent-kafka, reading with read_committed so it
only sees what the job's Kafka transactions committed.

Event time is driven in three phases so that which events are late does not depend on timing:
  A  on-time events over ten minutes (at most 2 s out of order, allowed lateness 5 s), produced
     before the job starts; the test waits until a window near their end is published, so the
     watermark has passed it;
  B  events ten minutes behind that watermark: all late, they must reach the late-events topic
     and nothing else;
  C  events 50 minutes later from other users: they move the watermark past every window and
     session of A, and close none of their own.
Then every A window and session must be published exactly once, equal to the reference.
"""

from __future__ import annotations

import collections
import os
import pathlib
import random
import signal
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from datapipelines import kafka, records, topics
from datapipelines.behaviour.v1 import behaviour_metric_pb2, user_event_pb2
from datapipelines.common.v1 import funnel_pb2, window_pb2
from deploy.common import process
from jobs.behaviour.metrics import reference
from jobs.behaviour.metrics.reference import RefEvent
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401 (a fixture)

JOB = pathlib.Path("jobs/behaviour/metrics/metrics")
LATE_TOPIC = topics.BEHAVIOUR_LATE_EVENTS.name
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LATENESS_S = 5
# Long enough that a partition still being caught up on after start-up (slow CI, JIT warm-up) is
# not taken for idle, which would let the watermark run ahead of it; phase C needs the partitions
# without C events to go idle before the watermark passes phase A.
IDLE_TIMEOUT_S = 10
TYPES = ["USER_EVENT_TYPE_PAGE_VIEW"] * 4 + [
    "USER_EVENT_TYPE_PRODUCT_VIEW", "USER_EVENT_TYPE_PRODUCT_VIEW", "USER_EVENT_TYPE_CLICK",
    "USER_EVENT_TYPE_ADD_TO_CART", "USER_EVENT_TYPE_CHECKOUT", "USER_EVENT_TYPE_PURCHASE",
]
PATHS = ["/home", "/p/1", "/p/2", "/cart", "/checkout"]
DEVICES = ["DEVICE_CATEGORY_DESKTOP"] * 5 + ["DEVICE_CATEGORY_MOBILE"] * 3 + ["DEVICE_CATEGORY_TABLET", "DEVICE_CATEGORY_BOT"]


def _event(rng, n, ms, users) -> RefEvent:
    user = rng.choice(users)
    anonymous = f"anon-{rng.randint(1, 5)}" if not user else f"cookie-{user}"
    return RefEvent(f"ev-{n}", user, anonymous, f"sess-{user or anonymous}-{ms // 900_000}", rng.choice(TYPES),
                    rng.choice(PATHS), rng.choice(DEVICES), ms)


def _message(event: RefEvent) -> user_event_pb2.UserEvent:
    message = user_event_pb2.UserEvent(
        event_id=event.event_id, user_id=event.user_id, anonymous_id=event.anonymous_id,
        session_id=event.session_id, event_type=user_event_pb2.UserEventType.Value(event.event_type),
        user_agent="integration-test",
    )
    message.page.path = event.path
    message.page.url = "https://shop.example" + event.path
    message.device.category = user_event_pb2.DeviceCategory.Value(event.device_category)
    message.client_time.FromMilliseconds(event.ms)
    message.server_time.FromMilliseconds(event.ms + 40)
    message.attributes["ab.variant"] = "B"
    if event.event_type == "USER_EVENT_TYPE_PURCHASE":
        message.purchase.order_id = "o-" + event.event_id
        message.purchase.order_total.currency_code = "EUR"
        message.purchase.order_total.amount_minor = 1999
    return message


def _phases(seed=11):
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(12)] + ["", "", ""]
    a, clock = [], 0
    for n in range(600):
        clock += rng.randint(0, 1_950)
        a.append(_event(rng, n, BASE_MS + max(0, clock - rng.randint(0, 2_000)), users))
    b = [_event(rng, 1000 + n, BASE_MS + rng.randint(30_000, 200_000), users) for n in range(20)]
    c = [_event(rng, 2000 + n, BASE_MS + 3_000_000 + n * 2_000, [f"late-shift-{i}" for i in range(4)]) for n in range(30)]
    return a, b, c


class Outputs:
    """Everything committed to the three output topics, decoded with the record codec."""

    def __init__(self, bootstrap: str):
        self.consumer = Consumer(kafka.consumer_config(bootstrap, "it-" + uuid.uuid4().hex))
        self.consumer.subscribe([topics.BEHAVIOUR_METRICS.name, topics.BEHAVIOUR_SESSIONS.name, LATE_TOPIC])
        self.by_topic = collections.defaultdict(list)

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            record = self.consumer.poll(0.2)
            if record is None or record.error():
                continue
            if record.topic() == LATE_TOPIC:
                message = records.decode(topics.BEHAVIOUR_EVENTS, record.value(), record.headers())
            else:
                message = records.decode(topics.get(record.topic()), record.value(), record.headers())
            self.by_topic[record.topic()].append((record.key(), dict(record.headers()), message))

    def metrics(self):
        return self.by_topic[topics.BEHAVIOUR_METRICS.name]

    def sessions(self):
        return self.by_topic[topics.BEHAVIOUR_SESSIONS.name]

    def late(self):
        return self.by_topic[LATE_TOPIC]


def _metric_key(message):
    return (
        window_pb2.WindowKind.Name(message.window_kind),
        message.window_start_time.seconds,
        message.window_end_time.seconds,
        behaviour_metric_pb2.MetricDimension.Name(message.dimension),
        message.dimension_value,
    )


def _received_sessions(outputs) -> dict:
    """{session id: reference.RefSession} of the published session summaries."""
    return {
        m.session_id: reference.RefSession(
            m.session_id, m.user_id, m.anonymous_id, m.session_start_time.ToMilliseconds(),
            m.session_end_time.ToMilliseconds(), m.event_count, m.page_view_count, m.unique_page_count,
            m.landing_page_path, m.exit_page_path, funnel_pb2.FunnelStage.Name(m.funnel_stage), m.converted,
        )
        for _, _, m in outputs.sessions()
    }


def _diagnosis(outputs: Outputs, log: pathlib.Path) -> str:
    flink_logs = sorted((log.parent / "state" / "log").glob("*.log"))
    problems = []
    for flink_log in flink_logs:
        lines = flink_log.read_text(errors="replace").splitlines()
        problems += [line[:400] for line in lines if " WARN " in line or " ERROR " in line][-25:]
    late = sorted(
        (m.event_id, m.client_time.ToMilliseconds() - BASE_MS, int(h["dp.late.watermark.ms"]) - BASE_MS)
        for _, h, m in outputs.late()
    )
    return (
        f"received {len(outputs.metrics())} metric rows, {len(outputs.sessions())} sessions, "
        f"{len(outputs.late())} late events (id, event ms, watermark ms from the start): {late}\njob output:\n{process.tail(log, 30)}\n"
        f"Flink warnings and errors:\n" + "\n".join(problems)
    )


def _wait(outputs: Outputs, done, timeout: float, job: subprocess.Popen, what: str, log: pathlib.Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outputs.poll(1.0)
        if done():
            return
        if job.poll() is not None:
            pytest.fail(f"the job exited with {job.returncode} while waiting for {what}: {_diagnosis(outputs, log)}")
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}: {_diagnosis(outputs, log)}")


@pytest.fixture
def job_runner(tmp_path):
    started = []

    def start(bootstrap: str) -> tuple[subprocess.Popen, pathlib.Path]:
        log = tmp_path / "job.log"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the job's own set only
        suffix = uuid.uuid4().hex[:8]
        command = [
            str(JOB), "--bootstrap", bootstrap, "--startup-mode", "earliest-offset",
            "--state-dir", str(tmp_path / "state"), "--checkpoint-interval-seconds", "1",
            "--allowed-lateness-seconds", str(LATENESS_S), "--idle-timeout-seconds", str(IDLE_TIMEOUT_S),
            "--parallelism", "2", "--group-id", "it-" + suffix, "--transactional-id-prefix", "it-" + suffix,
        ]
        handle = open(log, "wb")
        job = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True, preexec_fn=process.die_with_parent())
        started.append((job, handle))
        return job, log

    yield start
    for job, handle in started:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)
            try:
                job.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(10)
        handle.close()


def test_kafka_to_flink_to_kafka_exactly_once_with_contract_headers(kafka_broker, job_runner):  # noqa: F811
    bootstrap = kafka_broker.bootstrap
    kafka.ensure_topics(bootstrap, [topics.BEHAVIOUR_EVENTS, topics.BEHAVIOUR_METRICS, topics.BEHAVIOUR_SESSIONS])
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept referenced until the future resolves
    admin.create_topics([NewTopic(LATE_TOPIC, 1, 1)])[LATE_TOPIC].result(30)
    a, b, c = _phases()
    producer = Producer(kafka.producer_config(bootstrap))

    def produce(events):
        for event in events:
            kafka.produce(producer, topics.BEHAVIOUR_EVENTS, _message(event))
        assert producer.flush(30) == 0

    produce(a)
    outputs = Outputs(bootstrap)
    started = time.monotonic()
    job, log = job_runner(bootstrap)

    # Phase A is published up to the watermark: wait for the tumbling minute [8, 9) min.
    probe = ("WINDOW_KIND_TUMBLING", BASE_MS // 1000 + 480, BASE_MS // 1000 + 540, "METRIC_DIMENSION_ALL", "")
    _wait(outputs, lambda: any(_metric_key(m) == probe for _, _, m in outputs.metrics()), 300, job,
          "the first windows", log)
    first_output_seconds = time.monotonic() - started

    produce(b)
    produce(c)
    late_expected = [e for e in b if not e.is_bot]  # bots are dropped before anything else
    expected_metrics = reference.metrics(a)
    expected_sessions = {s.session_id: s for s in reference.sessions(a)}
    _wait(
        outputs,
        lambda: len(outputs.late()) >= len(late_expected)
        and len(outputs.sessions()) >= len(expected_sessions)
        and len(outputs.metrics()) >= len(expected_metrics),
        180, job, "every window and session of phase A and the late events", log,
    )
    outputs.poll(3.0)  # anything extra (duplicates, windows of C) would arrive now
    print(f"job: first output after {first_output_seconds:.1f}s (start-up included); "
          f"{len(outputs.metrics())} metric rows, {len(outputs.sessions())} sessions, {len(outputs.late())} late events")

    # Contract headers on every record, with the registry's fingerprints.
    for topic, rows in outputs.by_topic.items():
        for _, headers, message in rows:
            assert headers[records.SCHEMA_HEADER].decode() == message.DESCRIPTOR.full_name
            assert headers[records.FINGERPRINT_HEADER].decode() == records.fingerprint(message.DESCRIPTOR), topic

    # Late events: exactly phase B, unchanged, with the watermark they missed.
    late = {message.event_id: (key, headers, message) for key, headers, message in outputs.late()}
    assert sorted(late) == sorted(e.event_id for e in late_expected)
    assert len(outputs.late()) == len(late_expected)
    for event in late_expected:
        key, headers, message = late[event.event_id]
        assert message == _message(event)
        assert key.decode() == event.session_id
        assert headers["dp.late.reason"] == b"behind-watermark"
        watermark_ms = int(headers["dp.late.watermark.ms"])
        assert watermark_ms >= BASE_MS + 480_000 and int(headers["dp.late.lateness.ms"]) == watermark_ms - event.ms

    # Metrics: every window of A exactly once, equal to the reference; nothing of B or C.
    observed = collections.Counter(_metric_key(m) for _, _, m in outputs.metrics())
    assert [k for k, n in observed.items() if n > 1] == []
    got = {_metric_key(m): (m.event_count, m.unique_user_count, m.unique_session_count)
           for _, _, m in outputs.metrics()}
    assert got == expected_metrics
    for key, _, message in outputs.metrics():
        assert (message.version, message.window_closed, message.late_event_count) == (1, True, 0)
        assert key.decode() == f"{message.dimension}:{message.dimension_value}"

    # Sessions: every session of A exactly once, equal to the reference.
    sessions = collections.Counter(m.session_id for _, _, m in outputs.sessions())
    assert [k for k, n in sessions.items() if n > 1] == []
    got_sessions = _received_sessions(outputs)
    assert got_sessions == expected_sessions
    assert any(s.converted for s in expected_sessions.values()), "the data should contain a conversion"

    os.killpg(job.pid, signal.SIGTERM)
    assert job.wait(60) == 0, process.tail(log, 40)
