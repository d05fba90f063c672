"""User-behaviour pipeline end to end, on real components only, with crashes mid-stream:

    WebSocket gateway (emulated users + a real WebSocket client) -> ingestion service (gRPC)
        -> Kafka -> Flink job (mini-cluster, checkpoints) -> Kafka -> analytics service (chdb)

One scenario runs once for the module (all tests share one set of services); the tests then
check what it left behind. Event time is the wall clock (the emulated users stamp their events
with it), so the scenario is built so that which events are late does not depend on timing:

- the gateway's emulated users send some events out of order, at most MODEL_LATENESS_S behind
  their clock; the job admits ALLOWED_LATENESS_S, so these are counted, never late (the
  watermark trails the newest event time it has seen by ALLOWED_LATENESS_S);
- the real client sends events far behind a watermark the test has seen pass: only after the
  analytics service serves a window that ends after the job's restart began (so the running
  job's watermark is past it) does it send events from the first window served. They must be in
  the late topic and nowhere else;
- at the end, with the emulation stopped, the real client sends "closing" events
  CLOSING_AHEAD_S ahead of the clock (the ingestion service's skew limit is raised for it): the
  watermark passes every window and session of the run, and closes none of their own.

Faults, mid-stream while users keep sending: SIGKILL of the Flink job (driver and mini-cluster)
and a restore from its newest retained checkpoint; SIGKILL of the ingestion service and a
restart, while the gateway retries its unacknowledged batches.

The expectation is recomputed here from the events read back from `behaviour.events.v1` (what
the ingestion service acknowledged), deduplicated by event id as the contract says, with the
standard-library reference of the job's documented semantics — never from the job's output.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from websockets.sync.client import connect

from datapipelines import kafka, records, topics
from datapipelines.behaviour.v1 import behaviour_metric_pb2, user_event_pb2
from datapipelines.common.v1 import window_pb2
from deploy.pipelines.behaviour import BehaviourPipeline, BehaviourPipelineConfig
from jobs.behaviour.metrics import reference
from jobs.behaviour.metrics.reference import RefEvent
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401 (a fixture)

ALLOWED_LATENESS_S = 20
MODEL_LATENESS_S = 5
SESSION_GAP_S = 120
# Past the last hopping window (5 min) and session gap of the run, plus the lateness.
CLOSING_AHEAD_S = 480
USERS, RATE = 16, 25.0
# Idleness is never what moves the watermark here: the emulated users keep every partition busy
# and the closing events land in every partition. A short idle timeout would let a partition whose
# backlog the restored job reads late (a slow catch-up on a loaded machine) fall behind the
# watermark the other partitions drive, and turn acknowledged on-time events into late ones.
IDLE_TIMEOUT_S = 600
CLOSING_SESSIONS = 30  # keyed by session: 30 keys over the topic's 3 partitions reach all of them
DIMENSIONS = {"all": "METRIC_DIMENSION_ALL", "event_type": "METRIC_DIMENSION_EVENT_TYPE",
              "page_path": "METRIC_DIMENSION_PAGE_PATH", "device_category": "METRIC_DIMENSION_DEVICE_CATEGORY"}
KINDS = {"tumbling": "WINDOW_KIND_TUMBLING", "hopping": "WINDOW_KIND_HOPPING"}
FUNNEL = ("visit", "product_view", "cart", "checkout", "purchase")
FUNNEL_RANK = {"FUNNEL_STAGE_" + name.upper(): rank for rank, name in enumerate(FUNNEL, 1)}


def now_ms() -> int:
    return int(time.time() * 1000)


def ms_of(iso: str) -> int:
    return int(round(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000))


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat()


class RealClient:
    """A real WebSocket client of the gateway speaking the documented JSON protocol."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.count = 0
        self.acked: dict[str, dict] = {}

    def event(self, client_ms: int, user: str, event_type: str = "page_view", properties=None,
              path: str = "/") -> dict:
        self.count += 1
        message = {"type": "event", "event_id": f"{self.prefix}-{self.count}", "event_type": event_type,
                   "session_id": f"{self.prefix}-{user}", "anonymous_id": f"{self.prefix}-anon-{user}",
                   "user_id": f"{self.prefix}-{user}", "client_time": client_ms,
                   "page": {"url": "https://shop.example" + path, "path": path}, "device": {"category": "desktop"}}
        if properties is not None:
            message["properties"] = properties
        return message

    def send(self, url: str, events: list[dict], timeout: float = 60.0) -> None:
        """Sends the events on one connection and waits for every acknowledgement."""
        with connect(url, user_agent_header="e2e-real-client/1") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "hello"
            for event in events:
                ws.send(json.dumps(event))
            wanted = {e["event_id"] for e in events}
            replies = {}
            deadline = time.monotonic() + timeout
            while not wanted <= replies.keys():
                reply = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if reply.get("event_id"):
                    replies[reply["event_id"]] = reply
        for event_id in wanted:
            assert replies[event_id]["type"] == "ack", replies[event_id]
            self.acked[event_id] = replies[event_id]


def shop_walk(client: RealClient, user: str, start_ms: int, step_ms: int = 700) -> list[dict]:
    """A small visit with a purchase, so the real client's sessions reach every funnel stage."""
    money = {"currency_code": "EUR", "amount_minor": 2599}
    steps = [
        ("page_view", None, "/"),
        ("product_view", {"product_id": "sku-e2e", "category": "shoes/running", "price": money}, "/p/sku-e2e"),
        ("add_to_cart", {"product_id": "sku-e2e", "quantity": 1, "unit_price": money}, "/p/sku-e2e"),
        ("checkout", {"checkout_id": f"co-{user}", "item_count": 1, "cart_total": money}, "/checkout"),
        ("purchase", {"order_id": f"o-{user}", "item_count": 1, "order_total": money}, "/order/" + user),
    ]
    return [client.event(start_ms + i * step_ms, user, kind, props, path) for i, (kind, props, path) in enumerate(steps)]


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list:
    """Every committed record of `topic`, from the beginning to its current end."""
    consumer = Consumer(kafka.consumer_config(bootstrap, f"e2e-reader-{uuid.uuid4().hex}"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out, deadline = [], time.monotonic() + timeout
        positions = {p: 0 for p in partitions}
        while any(positions[p] < ends[p] for p in partitions) and time.monotonic() < deadline:
            for record in consumer.consume(500, timeout=0.5):
                if record.error() is None:
                    out.append(record)
            for tp in consumer.position([TopicPartition(topic, p) for p in partitions]):
                positions[tp.partition] = tp.offset if tp.offset >= 0 else positions[tp.partition]
        return out
    finally:
        consumer.close()


def ref_event(message: user_event_pb2.UserEvent) -> RefEvent:
    return RefEvent(
        event_id=message.event_id, user_id=message.user_id, anonymous_id=message.anonymous_id,
        session_id=message.session_id, event_type=user_event_pb2.UserEventType.Name(message.event_type),
        path=message.page.path, device_category=user_event_pb2.DeviceCategory.Name(message.device.category),
        ms=message.client_time.ToMilliseconds(),
    )


def accepted_events(bootstrap: str) -> tuple[dict[str, RefEvent], collections.Counter]:
    """The events in behaviour.events.v1, first copy of each id, and how often each id is there."""
    events, copies = {}, collections.Counter()
    for record in read_topic(bootstrap, topics.BEHAVIOUR_EVENTS.name):
        message = records.decode(topics.BEHAVIOUR_EVENTS, record.value(), record.headers())
        copies[message.event_id] += 1
        events.setdefault(message.event_id, ref_event(message))
    return events, copies


@dataclasses.dataclass
class Expected:
    metrics: dict
    sessions: dict
    funnel: dict


def expectation(events: dict[str, RefEvent], late_ids: set, closing_ids: set) -> Expected:
    counted = [e for e in events.values() if e.event_id not in late_ids and e.event_id not in closing_ids]
    metrics = reference.metrics(counted)
    sessions = {s.session_id: s for s in reference.sessions(counted, gap_ms=SESSION_GAP_S * 1000)}
    funnel = {stage: sum(1 for s in sessions.values() if FUNNEL_RANK[s.funnel_stage] >= rank)
              for rank, stage in enumerate(FUNNEL, 1)}
    return Expected(metrics, sessions, funnel)


def served_metrics(pipeline: BehaviourPipeline, since_ms: int) -> dict:
    out = {}
    for dimension, dimension_name in DIMENSIONS.items():
        for kind, kind_name in KINDS.items():
            body = pipeline.query("/api/v1/behaviour/metrics", dimension=dimension, window_kind=kind,
                                  limit=10000, **{"from": iso(since_ms - 600_000), "to": iso(now_ms() + 3_600_000)})
            assert body["row_count"] < 10000, "paging needed"
            for row in body["rows"]:
                key = (kind_name, ms_of(row["window_start"]) // 1000, ms_of(row["window_end"]) // 1000,
                       dimension_name, row["dimension_value"])
                assert key not in out, f"window {key} served twice"
                assert (row["version"], row["window_closed"], row["late_event_count"]) == (1, True, 0), row
                out[key] = (row["event_count"], row["unique_user_count"], row["unique_session_count"])
    return out


def served_sessions(pipeline: BehaviourPipeline, since_ms: int) -> dict:
    body = pipeline.query("/api/v1/behaviour/sessions", limit=10000,
                          **{"from": iso(since_ms - 3_600_000), "to": iso(now_ms() + 3_600_000)})
    out = {}
    for row in body["rows"]:
        assert row["session_id"] not in out, f"session {row['session_id']} served twice"
        out[row["session_id"]] = reference.RefSession(
            row["session_id"], row["user_id"], row["anonymous_id"], ms_of(row["session_start"]),
            ms_of(row["session_end"]), row["event_count"], row["page_view_count"], row["unique_page_count"],
            row["landing_page_path"], row["exit_page_path"], "FUNNEL_STAGE_" + row["funnel_stage"].upper(),
            bool(row["converted"]))
    return out


def served_funnel(pipeline: BehaviourPipeline, since_ms: int) -> dict:
    body = pipeline.query("/api/v1/behaviour/funnel",
                          **{"from": iso(since_ms - 3_600_000), "to": iso(now_ms() + 3_600_000)})
    return {row["stage"]: row["sessions"] for row in body["rows"]}


def differences(expected: dict, served: dict, what: str, only_served: bool = False) -> list[str]:
    problems = []
    keys = set(served) if only_served else set(expected) | set(served)
    for key in sorted(keys, key=str):
        if key not in served:
            problems.append(f"{what} missing: {key} (recomputed {expected[key]})")
        elif key not in expected:
            problems.append(f"{what} unexpected: {key} = {served[key]}")
        elif served[key] != expected[key]:
            problems.append(f"{what} {key}: served {served[key]}, recomputed {expected[key]}")
    return problems


def wait_for(condition, timeout: float, what: str, pipeline: BehaviourPipeline, pause: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        if pipeline.flink_job and not pipeline.flink_job.running():
            pytest.fail(f"the flink job exited while waiting for {what}:\n"
                        + pipeline.flink_job.log_path.read_text(errors="replace")[-4000:])
        time.sleep(pause)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclasses.dataclass
class Run:
    pipeline: BehaviourPipeline
    started_ms: int
    events: dict
    copies: collections.Counter
    client: RealClient
    late_ids: set
    closing_ids: set
    expected: Expected
    metrics: dict
    sessions: dict
    funnel: dict
    metrics_before_faults: dict
    expected_before_faults: dict
    emulation: dict
    checkpoint_before_kill: str
    gateway_stream_errors: float
    log: list


@pytest.fixture(scope="module")
def run(kafka_broker, tmp_path_factory) -> Run:  # noqa: F811
    config = BehaviourPipelineConfig(
        state_dir=tmp_path_factory.mktemp("behaviour-e2e"), bootstrap=kafka_broker.bootstrap,
        users=USERS, rate=RATE, seed=11, late_fraction=0.05, max_lateness_seconds=MODEL_LATENESS_S,
        allowed_lateness_seconds=ALLOWED_LATENESS_S, idle_timeout_seconds=IDLE_TIMEOUT_S, session_gap_seconds=SESSION_GAP_S,
        checkpoint_interval_seconds=2, parallelism=1, max_clock_skew_seconds=CLOSING_AHEAD_S + 300)
    log = []

    def say(line: str) -> None:
        log.append(line)
        print(line, flush=True)

    pipeline = BehaviourPipeline(config, say=say)
    started_ms = now_ms()
    with pipeline:
        say("pipeline started: " + ", ".join(f"{k}={v:.1f}s" for k, v in pipeline.timings.items()))
        client = RealClient("rc-" + uuid.uuid4().hex[:6])
        # The real client's on-time visits, alongside the emulated users.
        client.send(pipeline.websocket_url, shop_walk(client, "alice", now_ms()) + shop_walk(client, "bob", now_ms()))

        # 1. Windows start to close: every served row already equals the recomputation.
        first = wait_for(lambda: [k for k in served_metrics(pipeline, started_ms) if k[0] == "WINDOW_KIND_TUMBLING"],
                         240, "the first closed windows", pipeline)
        first_window_start_s = min(key[1] for key in first)
        before = served_metrics(pipeline, started_ms)
        # Read after the windows were served: every event of a closed window is in the topic by now.
        events, _ = accepted_events(pipeline.bootstrap)
        expected_before = expectation(events, set(), set()).metrics
        say(f"first windows served: {len(before)} rows")

        # 2. SIGKILL the Flink job mid-stream, restore it from its newest retained checkpoint.
        checkpoint = wait_for(pipeline.latest_checkpoint, 60, "a completed checkpoint", pipeline)
        assert pipeline.kill_flink_job() == -9
        restore_began_ms = now_ms()
        say(f"flink job killed (SIGKILL); restoring from {checkpoint.name} and later")
        pipeline.restart_flink_job()
        client.send(pipeline.websocket_url, shop_walk(client, "carol", now_ms()))

        # 3. SIGKILL the ingestion service mid-stream; the gateway retries until it is back.
        time.sleep(3)
        assert pipeline.kill_ingest() == -9
        say("ingestion service killed (SIGKILL)")
        time.sleep(2)
        pipeline.start_ingest()
        say("ingestion service restarted")
        stream_errors = pipeline.gateway_metric("dp_ws_stream_errors_total")

        # 4. The restored job's watermark has passed a window that ends after the restore began:
        #    events from the first window are now late for sure.
        wait_for(lambda: any(key[2] * 1000 > restore_began_ms for key in served_metrics(pipeline, started_ms)),
                 240, "a window closed by the restored job", pipeline)
        late_ms = first_window_start_s * 1000 + 5_000
        late = [client.event(late_ms + i * 1000, f"late-{i % 3}", "page_view", None, f"/late/{i % 2}") for i in range(6)]
        late += [client.event(late_ms + 9_000, "alice", "product_view",
                              {"product_id": "sku-late", "price": {"currency_code": "EUR", "amount_minor": 1}},
                              "/p/sku-late")]
        client.send(pipeline.websocket_url, late)
        late_ids = {e["event_id"] for e in late}
        say(f"real client sent {len(late)} events from {iso(late_ms)}, behind the watermark")
        client.send(pipeline.websocket_url, shop_walk(client, "dave", now_ms()))
        time.sleep(3)

        # 5. Emulation ends (the gateway drains); then the closing events close every window.
        emulation = pipeline.stop_gateway()
        say(f"emulation: {emulation}")
        pipeline.start_gateway(users=0)
        closing = [client.event(now_ms() + CLOSING_AHEAD_S * 1000 + i * 100, f"closing-{i}")
                   for i in range(CLOSING_SESSIONS)]
        client.send(pipeline.websocket_url, closing)
        closing_ids = {e["event_id"] for e in closing}
        closing_partitions = {r.partition() for r in read_topic(pipeline.bootstrap, topics.BEHAVIOUR_EVENTS.name)
                              if records.decode(topics.BEHAVIOUR_EVENTS, r.value(), r.headers()).event_id in closing_ids}
        assert closing_partitions == set(range(topics.BEHAVIOUR_EVENTS.partitions)), (
            f"closing events reached partitions {sorted(closing_partitions)} only: the watermark cannot pass the run")

        # 6. Wait until the service serves exactly the recomputation (or time out and report).
        events, copies = accepted_events(pipeline.bootstrap)
        expected = expectation(events, late_ids, closing_ids)
        state = {}

        def settled():
            state["metrics"] = served_metrics(pipeline, started_ms)
            state["sessions"] = served_sessions(pipeline, started_ms)
            state["funnel"] = served_funnel(pipeline, started_ms)
            return (state["metrics"] == expected.metrics and state["sessions"] == expected.sessions
                    and state["funnel"] == expected.funnel)

        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and not settled():
            time.sleep(2)
        time.sleep(5)  # anything extra (a duplicate, a window of the closing events) would arrive now
        settled()
        return Run(pipeline, started_ms, events, copies, client, late_ids, closing_ids, expected,
                   state["metrics"], state["sessions"], state["funnel"], before, expected_before, emulation,
                   checkpoint.name, stream_errors, log)


def test_every_metric_row_equals_the_recomputation(run: Run):
    problems = differences(run.expected.metrics, run.metrics, "metric")
    assert not problems, f"{len(problems)} differences, e.g.:\n  " + "\n  ".join(problems[:20])
    kinds = collections.Counter(key[0] for key in run.metrics)
    print(f"{len(run.metrics)} metric rows equal the recomputation from {len(run.events)} accepted events "
          f"({dict(kinds)})")
    assert kinds["WINDOW_KIND_TUMBLING"] >= 3 and kinds["WINDOW_KIND_HOPPING"] >= 3
    event_types = {key[4] for key in run.metrics if key[3] == "METRIC_DIMENSION_EVENT_TYPE"}
    assert {"USER_EVENT_TYPE_PAGE_VIEW", "USER_EVENT_TYPE_PRODUCT_VIEW", "USER_EVENT_TYPE_PURCHASE"} <= event_types
    # Nothing of the closing events: their windows never closed.
    closing_ms = min(run.events[i].ms for i in run.closing_ids)
    assert all(key[2] * 1000 <= closing_ms for key in run.metrics)


def test_rows_served_before_the_faults_were_already_final(run: Run):
    assert run.metrics_before_faults, "no windows served before the faults"
    problems = differences(run.expected_before_faults, run.metrics_before_faults, "early metric", only_served=True)
    assert not problems, "\n  ".join(problems[:20])
    for key, value in run.metrics_before_faults.items():
        assert run.metrics[key] == value, f"{key} changed after the faults: {value} -> {run.metrics[key]}"


def test_every_session_and_funnel_row_equals_the_recomputation(run: Run):
    problems = differences(run.expected.sessions, run.sessions, "session")
    assert not problems, f"{len(problems)} differences, e.g.:\n  " + "\n  ".join(problems[:20])
    assert run.funnel == run.expected.funnel
    converted = sum(s.converted for s in run.sessions.values())
    print(f"{len(run.sessions)} sessions ({converted} converted) and the funnel {run.funnel} equal the recomputation")
    assert converted >= 4, "the real client's visits alone convert four times"
    assert run.funnel["visit"] > run.funnel["purchase"] > 0


def test_late_events_are_in_the_late_topic_and_nowhere_else(run: Run):
    late = [(r, records.decode(topics.BEHAVIOUR_LATE_EVENTS, r.value(), r.headers()))
            for r in read_topic(run.pipeline.bootstrap, topics.BEHAVIOUR_LATE_EVENTS.name)]
    assert sorted(m.event_id for _, m in late) == sorted(run.late_ids), "exactly the events sent behind the watermark"
    for record, message in late:
        headers = dict(record.headers())
        assert headers["dp.late.reason"] == b"behind-watermark"
        watermark_ms = int(headers["dp.late.watermark.ms"])
        assert watermark_ms > message.client_time.ToMilliseconds()
        assert int(headers["dp.late.lateness.ms"]) == watermark_ms - message.client_time.ToMilliseconds()
        assert record.key().decode() == message.session_id
    # Counted nowhere: the recomputation that matched the served rows leaves them out; with them
    # it would differ in their windows.
    with_late = expectation(run.events, set(), run.closing_ids).metrics
    assert with_late != run.expected.metrics


def test_out_of_order_emulated_events_were_counted(run: Run):
    # Per visitor, events whose client_time is behind an earlier event of the same visitor.
    by_visitor = collections.defaultdict(list)
    for event in run.events.values():
        if event.event_id.startswith("ev-"):
            by_visitor[event.anonymous_id].append(event)
    out_of_order = 0
    for visitor_events in by_visitor.values():
        visitor_events.sort(key=lambda e: int(e.event_id.rsplit("-", 1)[1]))
        newest = 0
        for event in visitor_events:
            out_of_order += event.ms < newest
            newest = max(newest, event.ms)
    print(f"{out_of_order} emulated events arrived out of order (within the allowed lateness) and were counted")
    assert out_of_order > 0


def test_nothing_acknowledged_lost_nothing_doubled(run: Run):
    for event_id in run.client.acked:
        assert event_id in run.events, f"acknowledged {event_id} is not in {topics.BEHAVIOUR_EVENTS.name}"
    emulated = sum(1 for i in run.events if i.startswith("ev-"))
    acked = run.emulation.get("accepted", 0) + run.emulation.get("duplicate", 0)
    assert emulated >= acked > 0, (emulated, run.emulation)
    assert run.gateway_stream_errors >= 1, "the gateway saw the ingestion service go away"
    doubled_in_topic = sum(n - 1 for n in run.copies.values())
    print(f"events topic: {len(run.events)} distinct events, {doubled_in_topic} second copies written by the "
          f"restarted ingestion service for batches it had not acknowledged; emulation {run.emulation}")
    # Output topics: every window and session published once across the Flink restore.
    metric_keys = collections.Counter()
    for record in read_topic(run.pipeline.bootstrap, topics.BEHAVIOUR_METRICS.name):
        m = records.decode(topics.BEHAVIOUR_METRICS, record.value(), record.headers())
        metric_keys[(window_pb2.WindowKind.Name(m.window_kind), m.window_start_time.seconds, m.window_end_time.seconds,
                     behaviour_metric_pb2.MetricDimension.Name(m.dimension), m.dimension_value)] += 1
    assert [k for k, n in metric_keys.items() if n > 1] == [], "a window published twice"
    assert set(metric_keys) == set(run.metrics)
    session_ids = collections.Counter(
        records.decode(topics.BEHAVIOUR_SESSIONS, r.value(), r.headers()).session_id
        for r in read_topic(run.pipeline.bootstrap, topics.BEHAVIOUR_SESSIONS.name))
    assert [k for k, n in session_ids.items() if n > 1] == [], "a session published twice"
    assert run.pipeline.flink_restarts == 1 and run.checkpoint_before_kill.startswith("chk-")
