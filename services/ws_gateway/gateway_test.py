"""The gateway on real components: a real Kafka broker, the real ingestion service, real
WebSocket clients and the emulator; what arrives is read back from behaviour.events.v1
(read_committed)."""

import asyncio
import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from websockets.asyncio.client import connect

from datapipelines import topics
from datapipelines.behaviour.v1 import user_event_pb2 as ue
from services.ingest.testing import KeyRing, ServiceThread, header, read_all, settings_for
from services.ws_gateway import config, main, protocol
from services.ws_gateway.server import GatewayServer
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401 (a fixture)

TENANT = "t1"


@pytest.fixture(scope="module")
def ingest(kafka_broker, tmp_path_factory):  # noqa: F811
    keys = KeyRing(tmp_path_factory.mktemp("keys") / "keys.jsonl")
    key = keys.add(TENANT)
    key_file = keys.path.parent / "gateway-key"
    key_file.write_text(key + "\n")
    with ServiceThread(settings_for(kafka_broker.bootstrap, keys.path)) as service:
        service.key_file = key_file
        service.bootstrap = kafka_broker.bootstrap
        yield service


def gateway_settings(ingest, *extra):
    return config.load(["--port", "0", "--ingest-target", ingest.target, "--tenant", TENANT, "--users", "0",
                        "--api-key-file", str(ingest.key_file), "--producer-id", "gw-test", *extra], env={})


def events_in_kafka(ingest, prefix: str) -> list:
    out = []
    for record in read_all(ingest.bootstrap, topics.BEHAVIOUR_EVENTS.name):
        event_id = header(record, "dp.ingest.event-id") or ""
        if event_id.startswith(prefix):
            event = ue.UserEvent.FromString(record.value())
            out.append((record, event))
    return out


def client_event(n: int, prefix: str, **overrides):
    kinds = [("page_view", None), ("product_view", {"product_id": "sku-1", "category": "shoes"}),
             ("click", {"element_id": "buy"}), ("search", {"query": "shoes", "result_count": 4}),
             ("add_to_cart", {"product_id": "sku-1", "quantity": 1,
                              "unit_price": {"currency_code": "EUR", "amount_minor": 1999}})]
    name, properties = kinds[n % len(kinds)]
    m = {"type": "event", "event_id": "%s-%d" % (prefix, n), "event_type": name, "session_id": prefix + "-s",
         "anonymous_id": prefix + "-anon", "client_time": int(time.time() * 1000),
         "page": {"url": "https://shop.example/", "path": "/"}, "device": {"category": "desktop"}}
    if properties is not None:
        m["properties"] = properties
    m.update(overrides)
    return m


async def collect(ws, wanted: set, timeout: float = 30.0) -> dict:
    """Replies until every id in `wanted` has one: event_id -> reply."""
    replies = {}
    deadline = time.monotonic() + timeout
    while not wanted <= replies.keys():
        message = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
        if message.get("event_id"):
            replies[message["event_id"]] = message
    return replies


def http_get(port: int, path: str):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read()


async def wait_healthy(port: int, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = await asyncio.to_thread(http_get, port, "/healthz")
        if status == 200:
            return json.loads(body)
        if time.monotonic() > deadline:
            raise AssertionError("gateway not healthy: %s" % body)
        await asyncio.sleep(0.2)


def test_real_client_valid_events_acked_once_in_kafka_invalid_ones_answered(ingest):
    prefix = "ws-%s" % uuid.uuid4().hex[:8]
    valid = [client_event(n, prefix) for n in range(200)]
    stale = client_event(999, prefix, client_time=int((time.time() - 30 * 86400) * 1000))  # protocol ok, ingest says no
    invalid_texts = [
        ("not json at all", "message is not valid JSON"),
        (json.dumps(client_event(1000, prefix, event_type="hover")), 'event_type "hover" is not one of'),
        (json.dumps(client_event(1001, prefix, session_id="")), "session_id is missing"),
        (json.dumps(client_event(1002, prefix, event_type="click", properties={"element_text": "x"})),
         "properties.element_id is missing"),
        (json.dumps(client_event(1003, prefix, client_time="2025-01-01T00:00:00")), "has no time zone"),
    ]

    async def scenario():
        gateway = GatewayServer(gateway_settings(ingest))
        await gateway.start()
        try:
            await wait_healthy(gateway.port)
            async with connect("ws://127.0.0.1:%d/ws" % gateway.port, user_agent_header="pytest-ws/1") as ws:
                hello = json.loads(await ws.recv())
                assert hello["type"] == "hello" and hello["protocol"] == protocol.PROTOCOL
                for text, _ in invalid_texts[:1]:
                    await ws.send(text)
                    no_id = json.loads(await ws.recv())
                    assert no_id["type"] == "error" and "event_id" not in no_id
                    assert invalid_texts[0][1] in no_id["reason"]
                for m in valid[:100]:
                    await ws.send(json.dumps(m))
                for text, _ in invalid_texts[1:]:
                    await ws.send(text)
                await ws.send(json.dumps(stale))
                for m in valid[100:]:
                    await ws.send(json.dumps(m))
                ids = {m["event_id"] for m in valid} | {"%s-%d" % (prefix, n) for n in (999, 1000, 1001, 1002, 1003)}
                replies = await collect(ws, ids)
                # A resend (the same event id) is acknowledged as a duplicate, not written again.
                await ws.send(json.dumps(valid[7]))
                again = await collect(ws, {valid[7]["event_id"]})
                await ws.send('{"type":"ping"}')
                assert json.loads(await ws.recv()) == {"type": "pong"}
            status, _, metrics = await asyncio.to_thread(http_get, gateway.port, "/metrics")
        finally:
            await gateway.stop()
        return replies, again, metrics

    replies, again, metrics = asyncio.run(scenario())
    for m in valid:
        assert replies[m["event_id"]] == {"type": "ack", "event_id": m["event_id"], "duplicate": False}
    for text, expected in invalid_texts[1:]:
        reply = replies[json.loads(text)["event_id"]]
        assert reply["type"] == "error" and expected in reply["reason"] and reply["retry"] is False, reply
    rejected = replies[stale["event_id"]]
    assert rejected["type"] == "error" and "rejected by the ingestion service: VALIDATION_FAILED" in rejected["reason"]
    assert "client_time is" in rejected["reason"] and "old" in rejected["reason"]
    assert again[valid[7]["event_id"]] == {"type": "ack", "event_id": valid[7]["event_id"], "duplicate": True}
    assert b'dp_ws_events_total{outcome="accepted",source="client"} 200.0' in metrics
    assert b'dp_ws_messages_total{outcome="invalid"} 5.0' in metrics

    in_kafka = events_in_kafka(ingest, prefix)
    counts = collections.Counter(event.event_id for _, event in in_kafka)
    assert counts == collections.Counter(m["event_id"] for m in valid), "every valid event exactly once, nothing else"
    for record, event in in_kafka:
        assert header(record, "dp.ingest.tenant") == TENANT and header(record, "dp.ingest.producer") == "gw-test"
        assert record.key() == (prefix + "-s").encode()
        assert event.user_agent == "pytest-ws/1"
        assert event.HasField("server_time") and event.device.category == ue.DEVICE_CATEGORY_DESKTOP


def test_emulated_users_reach_kafka_with_sane_fields(ingest):
    users, rate, seconds = 20, 400.0, 5.0

    async def scenario():
        gateway = GatewayServer(gateway_settings(ingest, "--users", str(users), "--rate", str(rate), "--duration",
                                                 str(seconds), "--late-fraction", "0.05"))
        began = time.time()
        await gateway.start()
        try:
            await asyncio.wait_for(gateway.emulation_done.wait(), seconds + 60)
        finally:
            await gateway.stop()
        return gateway.emulator, began, time.time()

    emulator, began, ended = asyncio.run(scenario())
    stats = emulator.stats
    seconds_run = stats.stopped - stats.started
    print("emulator through the gateway: users=%d target_rate=%g %s" % (users, rate, stats.summary()))
    assert stats.produced > 0.5 * rate * seconds, stats.summary()
    assert stats.accepted == stats.produced and stats.rejected == 0 and stats.failed == 0, (stats.summary(),
                                                                                             stats.reasons)
    assert stats.produced <= rate * seconds_run + rate / 10 + users, "the token bucket holds the rate"

    in_kafka = events_in_kafka(ingest, "ev-%s-" % emulator.run_id)
    assert collections.Counter(e.event_id for _, e in in_kafka) == collections.Counter(
        {e.event_id: 1 for _, e in in_kafka}) and len(in_kafka) == stats.produced
    types = collections.Counter(ue.UserEventType.Name(e.event_type) for _, e in in_kafka)
    print("event types in Kafka: %s" % dict(types))
    assert types["USER_EVENT_TYPE_PAGE_VIEW"] > 0 and types["USER_EVENT_TYPE_PRODUCT_VIEW"] > 0
    sessions = collections.defaultdict(list)
    late = 0
    for record, event in in_kafka:
        assert record.key() == event.session_id.encode()
        assert event.session_id.startswith("s-%s-" % emulator.run_id) and event.anonymous_id
        client = event.client_time.ToMilliseconds() / 1000.0
        assert began - emulator.max_lateness_seconds - 1 <= client <= ended + 1
        late += client < began - 0.5
        assert event.server_time.ToMilliseconds() / 1000.0 >= began - 1
        sessions[event.session_id].append(event)
    assert len({e.anonymous_id for _, e in in_kafka}) >= users
    # Per session in event-id (production) order: a purchase comes after an add-to-cart and a checkout.
    for events in sessions.values():
        events.sort(key=lambda e: int(e.event_id.rsplit("-", 1)[1]))
        seen = set()
        for e in events:
            if e.event_type == ue.USER_EVENT_TYPE_PURCHASE:
                assert {ue.USER_EVENT_TYPE_ADD_TO_CART, ue.USER_EVENT_TYPE_CHECKOUT} <= seen
            seen.add(e.event_type)
    print("emulator late events (client_time before the run started): %d of %d" % (late, len(in_kafka)))


def test_page_health_metrics_and_unknown_paths(ingest):
    async def scenario():
        gateway = GatewayServer(gateway_settings(ingest))
        await gateway.start()
        try:
            health = await wait_healthy(gateway.port)
            results = {path: await asyncio.to_thread(http_get, gateway.port, path)
                       for path in ("/", "/metrics", "/nope", "/ws")}
        finally:
            await gateway.stop()
        return health, results

    health, results = asyncio.run(scenario())
    assert health["status"] == "ok" and health["ingest_connected"] is True
    status, content_type, page = results["/"]
    assert status == 200 and content_type.startswith("text/html")
    assert b"<script>" in page and b'"/ws"' in page and b"http://" not in page.replace(b"http://127", b"")
    assert b"src=" not in page, "no external scripts"
    status, content_type, body = results["/metrics"]
    assert status == 200 and b"dp_ws_connections" in body and content_type.startswith("text/plain")
    assert results["/nope"][0] == 404
    assert results["/ws"][0] == 426, "a plain GET of /ws is told to upgrade"


def test_stop_flushes_and_settles_every_event(ingest):
    """Events in flight when the gateway stops are acknowledged (and in Kafka) or answered retry=true."""
    prefix = "drain-%s" % uuid.uuid4().hex[:8]

    async def scenario():
        gateway = GatewayServer(gateway_settings(ingest, "--linger-ms", "200", "--batch-size", "50"))
        await gateway.start()
        await wait_healthy(gateway.port)
        replies = {}
        async with connect("ws://127.0.0.1:%d/ws" % gateway.port) as ws:
            await ws.recv()
            for n in range(300):
                await ws.send(json.dumps(client_event(n, prefix)))
            # Stop once part of them is read and queued or on the stream, the rest still unread.
            forwarded = {"outcome": "forwarded"}
            while (gateway.metrics.registry.get_sample_value("dp_ws_messages_total", forwarded) or 0) < 120:
                await asyncio.sleep(0.001)
            stopping = asyncio.ensure_future(gateway.stop(drain_seconds=20))
            try:
                async for text in ws:
                    message = json.loads(text)
                    replies[message["event_id"]] = message
            except Exception:
                pass
            await stopping
            code = ws.close_code
        return replies, code

    replies, code = asyncio.run(scenario())
    assert code == 1001
    acked = {i for i, r in replies.items() if r["type"] == "ack"}
    retry = {i for i, r in replies.items() if r["type"] == "error" and r["retry"]}
    assert len(acked | retry) == 300 and not acked & retry, "every event is settled one way"
    assert len(acked) >= 120, "what was read before the stop is flushed and acknowledged"
    assert {e.event_id for _, e in events_in_kafka(ingest, prefix)} >= acked, "nothing acknowledged is lost"


def test_help_and_sigterm_of_the_process(ingest, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main.main(["--help"])
    assert exit_.value.code == 0

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), DP_WS_API_KEY=ingest.key_file.read_text().strip())
    process = subprocess.Popen(
        [sys.executable, "-m", "services.ws_gateway.main", "--port", "0", "--ingest-target", ingest.target,
         "--tenant", TENANT, "--users", "5", "--rate", "100"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(pathlib.Path.cwd()))
    try:
        time.sleep(3.0)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "event=draining" in err and "event=stopped" in err
    summary = [line for line in out.splitlines() if line.startswith("ws_gateway: emulated")]
    assert summary and " failed=0 " in summary[0] and " rejected=0 " in summary[0], out


def test_resource_exhausted_is_retried_after_the_hint_without_loss_or_doubles(kafka_broker, tmp_path):  # noqa: F811
    """A tight ingestion service answers RESOURCE_EXHAUSTED + retry-after-ms; the forwarder waits,
    reopens the stream and resends: every event acknowledged, in Kafka exactly once."""
    keys = KeyRing(tmp_path / "keys.jsonl")
    key_file = tmp_path / "key"
    key_file.write_text(keys.add(TENANT))
    tight = settings_for(kafka_broker.bootstrap, keys.path, ["--max-in-flight-events", "300", "--max-batch-events", "300",
                                                             "--admission-wait-seconds", "0", "--retry-after-ms", "50"])
    prefix = "busy-%s" % uuid.uuid4().hex[:8]
    with ServiceThread(tight) as service:
        service.key_file = key_file
        service.bootstrap = kafka_broker.bootstrap

        async def scenario():
            gateway = GatewayServer(gateway_settings(service, "--batch-size", "200", "--max-unacked-batches", "8"))
            await gateway.start()
            try:
                await wait_healthy(gateway.port)
                async with connect("ws://127.0.0.1:%d/ws" % gateway.port) as ws:
                    await ws.recv()
                    for n in range(3000):
                        await ws.send(json.dumps(client_event(n, prefix)))
                    replies = await collect(ws, {"%s-%d" % (prefix, n) for n in range(3000)}, timeout=120)
                errors = gateway.metrics.registry.get_sample_value("dp_ws_stream_errors_total",
                                                                   {"code": "RESOURCE_EXHAUSTED"}) or 0
            finally:
                await gateway.stop()
            return replies, errors

        replies, errors = asyncio.run(scenario())
        in_kafka = events_in_kafka(service, prefix)
    print("RESOURCE_EXHAUSTED stream errors retried: %d" % errors)
    assert errors > 0, "the test should have pushed the service past its in-flight budget"
    assert all(r["type"] == "ack" for r in replies.values()), [r for r in replies.values() if r["type"] != "ack"][:3]
    counts = collections.Counter(e.event_id for _, e in in_kafka)
    assert len(counts) == 3000 and set(counts.values()) == {1}
