"""The real service, real gRPC clients, a real Kafka broker.

Accepted events are in behaviour.events.v1 exactly once with their contract headers; rejected
ones come back with reasons and are in the dead-letter topic; keys, tenants and event types are
enforced; health, reflection, metrics, TLS/mTLS and a SIGTERM drain of the real binary work.
"""

import collections
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from datapipelines import records, topics
from datapipelines.behaviour.v1 import user_event_pb2 as ue
from datapipelines.ingest.v1 import envelope_pb2
from datapipelines.ingest.v1 import ingest_service_pb2 as pb
from services.ingest import client_lib, sample_events
from services.ingest.servicer import HEADER_EVENT_ID, HEADER_TENANT, SERVICE_NAME
from services.ingest.testing import KeyRing, ServiceThread, header, read_all, settings_for
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401  (pytest fixture)

EVENTS = topics.BEHAVIOUR_EVENTS.name
DLQ = EVENTS + ".dlq"
CLICK = "USER_EVENT_TYPE_CLICK"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    ring = KeyRing(tmp_path_factory.mktemp("keys") / "api_keys.jsonl")
    return {
        "ring": ring,
        "t1": ring.add("t1", [sample_events.SCHEMA_NAME]),
        "clicks": ring.add("clicks", [sample_events.SCHEMA_NAME], [CLICK]),
    }


@pytest.fixture(scope="module")
def service(kafka_broker, keys):  # noqa: F811
    with ServiceThread(settings_for(kafka_broker.bootstrap, keys["ring"].path)) as running:
        yield running


@pytest.fixture
def client(service, keys):
    with client_lib.IngestClient(service.target, keys["t1"]) as c:
        yield c


def prefix() -> str:
    return "ev-" + uuid.uuid4().hex[:10]


def by_event_id(bootstrap, topic, id_prefix):
    found = collections.defaultdict(list)
    for record in read_all(bootstrap, topic):
        event_id = header(record, HEADER_EVENT_ID) or ""
        if event_id.startswith(id_prefix):
            found[event_id].append(record)
    return found


def codes(error_info) -> grpc.StatusCode:
    return error_info.value.code()


def test_health_and_reflection(service):
    channel = grpc.insecure_channel(service.target)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE_NAME):
        assert health.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    # The service's descriptor is served too, so grpcurl can call it without .proto files.
    files = list(reflection.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)])))
    assert files[0].file_descriptor_response.file_descriptor_proto
    channel.close()


def test_stream_of_10000_events_lands_in_kafka_exactly_once(service, client, kafka_broker):  # noqa: F811
    ids = prefix()
    batches = list(sample_events.batches(10_000, 500, "t1", prefix=ids))
    outcome = client.deliver(batches)
    assert outcome.retries == 0 and outcome.rejections() == []
    assert outcome.accepted() == 10_000
    assert {a.batch_id for a in outcome.acks.values()} == {b.batch_id for b in batches}

    found = by_event_id(kafka_broker.bootstrap, EVENTS, ids)
    assert len(found) == 10_000 and all(len(v) == 1 for v in found.values())
    assert set(found) == {"%s-%d" % (ids, n) for n in range(10_000)}
    record = found["%s-7" % ids][0]
    event = records.decode(topics.BEHAVIOUR_EVENTS, record.value(), record.headers())
    assert record.key() == event.session_id.encode()
    assert header(record, HEADER_TENANT) == "t1"
    assert header(record, records.FINGERPRINT_HEADER).startswith("sha256:")
    assert event.server_time.seconds >= int(time.time()) - 120
    sent = sample_events.user_event(7, ids)
    event.ClearField("server_time")
    assert event.event_id == sent.event_id and event.event_type == sent.event_type


def mixed_batch(ids: str, tenant: str = "t1") -> pb.PublishBatch:
    good = [sample_events.envelope(sample_events.user_event(n, ids), tenant) for n in range(4)]
    no_type = sample_events.user_event(10, ids)
    no_type.event_type = ue.USER_EVENT_TYPE_UNSPECIFIED
    future = sample_events.user_event(11, ids)
    future.client_time.seconds = int(time.time()) + 3600
    bad = [
        sample_events.envelope(no_type, tenant),                                         # 4
        sample_events.envelope(future, tenant),                                          # 5
        envelope_pb2.Envelope(event_id=ids + "-12", tenant_id=tenant, schema_name=sample_events.SCHEMA_NAME,
                    payload=b"\xff\xfe garbage"),                                         # 6
        envelope_pb2.Envelope(event_id=ids + "-13", tenant_id=tenant, schema_name="x.v1.Unknown", payload=b"\x08\x01"),  # 7
        envelope_pb2.Envelope(event_id="", tenant_id=tenant, schema_name=sample_events.SCHEMA_NAME, payload=b"\x08\x01"),  # 8
        envelope_pb2.Envelope(event_id=ids + "-14", tenant_id=tenant, schema_name=sample_events.SCHEMA_NAME,
                    payload=b"\x00" * (64 * 1024 + 1)),                                  # 9
    ]
    return sample_events.batch(good + bad, ids + "-batch")


def test_unary_publish_rejects_per_event_and_dead_letters(service, client, kafka_broker):  # noqa: F811
    ids = prefix()
    batch = mixed_batch(ids)
    ack = client.publish(batch)
    assert ack.batch_id == batch.batch_id and ack.accepted_count == 4
    reasons = {r.index: pb.RejectionReason.Name(r.reason) for r in ack.rejections}
    assert reasons == {
        4: "REJECTION_REASON_VALIDATION_FAILED",
        5: "REJECTION_REASON_VALIDATION_FAILED",
        6: "REJECTION_REASON_MALFORMED_PAYLOAD",
        7: "REJECTION_REASON_UNKNOWN_SCHEMA",
        8: "REJECTION_REASON_MISSING_ENVELOPE_FIELD",
        9: "REJECTION_REASON_TOO_LARGE",
    }
    details = {r.index: r.detail for r in ack.rejections}
    assert "UNSPECIFIED" in details[4] and "ahead" in details[5]
    assert [r.index for r in ack.rejections] == sorted(reasons)

    # The same batch again (a retry): the good events are DUPLICATE, nothing new is written.
    again = client.publish(batch)
    assert again.accepted_count == 0
    assert {r.index for r in again.rejections if r.reason == pb.REJECTION_REASON_DUPLICATE} == {0, 1, 2, 3}

    accepted = by_event_id(kafka_broker.bootstrap, EVENTS, ids)
    assert sorted(accepted) == ["%s-%d" % (ids, n) for n in range(4)]
    assert all(len(v) == 1 for v in accepted.values())
    dead = by_event_id(kafka_broker.bootstrap, DLQ, ids)
    first = {k: v[0] for k, v in dead.items()}
    assert header(first[ids + "-10"], records.DLQ_REASON) == "validation-failed"
    assert header(first[ids + "-11"], records.DLQ_REASON) == "validation-failed"
    assert header(first[ids + "-12"], records.DLQ_REASON) == "malformed-payload"
    assert first[ids + "-12"].value() == b"\xff\xfe garbage"
    assert header(first[ids + "-13"], records.DLQ_REASON) == "unknown-schema"
    assert header(first[ids + "-13"], "dp.ingest.schema-name") == "x.v1.Unknown"
    assert header(first[ids + "-14"], records.DLQ_REASON) == "too-large"
    assert len(first[ids + "-14"].value()) == 64 * 1024
    for record in first.values():
        assert header(record, records.DLQ_STAGE) == "ingest"
        assert header(record, records.DLQ_TOPIC) == EVENTS
        assert header(record, HEADER_TENANT) == "t1"


def test_missing_or_wrong_key_is_unauthenticated(service, keys):
    batch = sample_events.batch([sample_events.envelope(sample_events.user_event(1, prefix()), "t1")], "b")
    channel = grpc.insecure_channel(service.target)
    stub = client_lib.pb_grpc.IngestServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Publish(pb.PublishRequest(batch=batch))
    assert codes(info) == grpc.StatusCode.UNAUTHENTICATED and "no API key" in info.value.details()
    wrong = keys["t1"][:-2] + ("xx" if not keys["t1"].endswith("xx") else "yy")
    with pytest.raises(grpc.RpcError) as info:
        stub.Publish(pb.PublishRequest(batch=batch), metadata=(("x-api-key", wrong),))
    assert codes(info) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        list(stub.PublishStream(iter([pb.PublishStreamRequest(batch=batch)]),
                                metadata=(("authorization", "Bearer nope"),)))
    assert codes(info) == grpc.StatusCode.UNAUTHENTICATED
    channel.close()
    # The same key as a bearer token is fine.
    with client_lib.IngestClient(service.target, keys["t1"], bearer=True) as bearer:
        assert bearer.publish(batch).accepted_count == 1


def test_forbidden_event_types_and_tenants_are_unauthorized_per_event(service, keys, kafka_broker):  # noqa: F811
    ids = prefix()
    click_n = sample_events.EVENT_TYPES.index(ue.USER_EVENT_TYPE_CLICK)
    envelopes = [
        sample_events.envelope(sample_events.user_event(click_n, ids), "clicks"),       # allowed
        sample_events.envelope(sample_events.user_event(0, ids), "clicks"),             # a page view: not allowed
        sample_events.envelope(sample_events.user_event(click_n + 9, ids), "t1"),       # another tenant's id
    ]
    with client_lib.IngestClient(service.target, keys["clicks"]) as clicks:
        ack = clicks.publish(sample_events.batch(envelopes, "b"))
    assert ack.accepted_count == 1
    assert [(r.index, r.reason) for r in ack.rejections] == [
        (1, pb.REJECTION_REASON_UNAUTHORIZED), (2, pb.REJECTION_REASON_UNAUTHORIZED)]
    assert "USER_EVENT_TYPE_PAGE_VIEW" in ack.rejections[0].detail
    assert "tenant" in ack.rejections[1].detail
    dead = by_event_id(kafka_broker.bootstrap, DLQ, ids)
    assert {header(v[0], records.DLQ_REASON) for v in dead.values()} == {"unauthorized"}
    assert len(dead) == 2


def test_whole_call_problems(service, client, keys):
    with pytest.raises(grpc.RpcError) as info:
        client.publish(pb.PublishBatch(batch_id="empty"))
    assert codes(info) == grpc.StatusCode.INVALID_ARGUMENT and "no envelopes" in info.value.details()
    ids = prefix()
    too_many = next(sample_events.batches(1001, 1001, "t1", prefix=ids))
    with pytest.raises(grpc.RpcError) as info:
        client.publish(too_many)
    assert codes(info) == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000" in info.value.details()
    # Bytes that are no PublishRequest (invalid UTF-8 in batch_id): INVALID_ARGUMENT, not INTERNAL.
    channel = grpc.insecure_channel(service.target)
    raw = channel.unary_unary("/%s/Publish" % SERVICE_NAME)
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\x04\x0a\x02\xc3\x28", metadata=(("x-api-key", keys["t1"]),))
    assert codes(info) == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    # The service is still fine.
    assert client.publish(next(sample_events.batches(3, 3, "t1", prefix=prefix()))).accepted_count == 3


def test_stream_acknowledges_every_batch_with_rejections(service, client):
    ids = prefix()
    batches = list(sample_events.batches(1000, 100, "t1", prefix=ids)) + [mixed_batch(ids + "-mixed")]
    acks = {ack.batch_id: ack for ack in client.stream(batches)}
    assert set(acks) == {b.batch_id for b in batches}
    assert sum(a.accepted_count for a in acks.values()) == 1004
    assert len(acks[ids + "-mixed-batch"].rejections) == 6


def test_metrics_endpoint(service, client):
    client.publish(next(sample_events.batches(5, 5, "t1", prefix=prefix())))
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % service.server.metrics_port, timeout=10).read().decode()
    for name in ("dp_ingest_events_accepted_total", "dp_ingest_events_rejected_total", "dp_ingest_batch_size_events",
                 "dp_ingest_ack_latency_seconds_bucket", "dp_ingest_in_flight_events", "dp_ingest_kafka_available 1.0"):
        assert name in text, name


def test_keys_added_while_running_work_without_a_restart(service, keys):
    new_key = keys["ring"].add("late-tenant")
    deadline = time.monotonic() + 15
    batch = next(sample_events.batches(2, 2, "late-tenant", prefix=prefix()))
    with client_lib.IngestClient(service.target, new_key) as late:
        while True:
            try:
                assert late.publish(batch).accepted_count == 2
                break
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() < deadline, "new key not picked up"
                time.sleep(0.5)


# --- TLS --------------------------------------------------------------------------------

def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("TLS tests need the openssl CLI (the cryptography package is not in @py_core)")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    for name, extension in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                            ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % name, "-keyout", name + ".key",
                "-out", name + ".csr", cwd=d)
        (d / (name + ".ext")).write_text(extension + "\n")
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", name + ".ext", "-out", name + ".pem", cwd=d)
    return d


def test_tls_and_mtls(kafka_broker, keys, certificates):  # noqa: F811
    d = certificates
    ca = (d / "ca.pem").read_bytes()
    batch = next(sample_events.batches(3, 3, "t1", prefix=prefix()))
    tls = ["--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server.key")]
    with ServiceThread(settings_for(kafka_broker.bootstrap, keys["ring"].path, tls)) as secure:
        with client_lib.IngestClient(secure.target, keys["t1"], root_certificates=ca) as tls_client:
            assert tls_client.publish(batch).accepted_count == 3
        with client_lib.IngestClient(secure.target, keys["t1"]) as plaintext:
            with pytest.raises(grpc.RpcError) as info:
                plaintext.publish(batch, timeout=5)
            assert codes(info) == grpc.StatusCode.UNAVAILABLE

    mtls = tls + ["--tls-client-ca", str(d / "ca.pem")]
    batch = next(sample_events.batches(3, 3, "t1", prefix=prefix()))
    with ServiceThread(settings_for(kafka_broker.bootstrap, keys["ring"].path, mtls)) as secure:
        with client_lib.IngestClient(secure.target, keys["t1"], root_certificates=ca) as no_cert:
            with pytest.raises(grpc.RpcError) as info:
                no_cert.publish(batch, timeout=5)
            assert codes(info) == grpc.StatusCode.UNAVAILABLE
        with client_lib.IngestClient(secure.target, keys["t1"], root_certificates=ca,
                                     private_key=(d / "client.key").read_bytes(),
                                     certificate_chain=(d / "client.pem").read_bytes()) as with_cert:
            assert with_cert.publish(batch).accepted_count == 3


# --- the real binary ----------------------------------------------------------------------

def binary_command(*args):
    """The ingest py_binary's main under this test's interpreter and import path."""
    return [sys.executable, "-c", "import sys; from services.ingest import main; sys.exit(main.main(sys.argv[1:]))",
            *args]


def binary_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def test_help_names_flags_and_environment():
    result = subprocess.run(binary_command("--help"), env=binary_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for text in ("--api-keys-file", "DP_INGEST_PORT", "DP_KAFKA_BOOTSTRAP", "--tls-client-ca", "--metrics-port",
                 "--drain-seconds"):
        assert text in result.stdout


def test_sigterm_drains_in_flight_batches(kafka_broker, keys, tmp_path):  # noqa: F811
    log = tmp_path / "ingest.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            binary_command("--bootstrap", kafka_broker.bootstrap, "--port", "0", "--metrics-port", "-1",
                           "--api-keys-file", str(keys["ring"].path), "--drain-seconds", "20"),
            env=binary_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        port = None
        while port is None:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            for line in log.read_text().splitlines():
                if line.startswith("ingest: serving on "):
                    port = int(line.split()[3].rsplit(":", 1)[1])
            time.sleep(0.1)

        ids = prefix()
        batches = list(sample_events.batches(20_000, 500, "t1", prefix=ids))
        acked = []
        errors = []

        def send():
            with client_lib.IngestClient("127.0.0.1:%d" % port, keys["t1"]) as c:
                try:
                    for ack in c.stream(batches):
                        acked.append(ack)
                except grpc.RpcError as error:
                    errors.append(error)

        sender = threading.Thread(target=send)
        sender.start()
        while len(acked) < 5 and sender.is_alive():
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        sender.join(60)
        assert process.wait(60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    print("\nsigterm: %d of %d batches acknowledged before the stream was closed; errors: %s"
          % (len(acked), len(batches), [(e.code().name, e.details()) for e in errors]))
    assert "event=stopped drained=True" in text, text
    # Either everything was acknowledged before the drain, or the stream was told to go elsewhere.
    if len(acked) < len(batches):
        assert errors and errors[0].code() == grpc.StatusCode.UNAVAILABLE, errors
        assert "shutting down" in errors[0].details()
    found = by_event_id(kafka_broker.bootstrap, EVENTS, ids)
    acked_ids = {"%s-%d" % (ids, n) for a in acked for n in range(int(a.batch_id.rsplit("-b", 1)[1]),
                                                                  int(a.batch_id.rsplit("-b", 1)[1]) + 500)}
    assert acked_ids <= set(found), "an acknowledged event is missing"
    assert all(len(v) == 1 for v in found.values())
