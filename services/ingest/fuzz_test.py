"""Over 10,000 generated malformed events, in batches alongside valid ones, through the real service.

Random payload bytes, wrong schema names, oversized fields and payloads, invalid UTF-8 inside
strings, unknown enum numbers, missing fields, absurd timestamps, foreign tenants: the service
must not fail a call, must reject each bad event with a reason (and dead-letter it), and must
deliver every valid event of the same batches to Kafka exactly once.
"""

import collections
import itertools
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datapipelines import topics
from datapipelines.behaviour.v1 import user_event_pb2 as ue
from datapipelines.ingest.v1 import envelope_pb2
from datapipelines.ingest.v1 import ingest_service_pb2 as pb
from services.ingest import client_lib, sample_events
from services.ingest.servicer import HEADER_EVENT_ID
from services.ingest.testing import KeyRing, ServiceThread, header, read_all, settings_for
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401  (pytest fixture)

TENANT = "fuzz"
PREFIX = "fz-%d" % int(time.time() * 1000)
EXAMPLES = 80
MIN_BATCH, MAX_BATCH = 180, 220
SCHEMA = sample_events.SCHEMA_NAME
NOW = time.time()
# Field numbers of UserEvent's top-level string fields (event_id, user_id, session_id, anonymous_id, user_agent).
STRING_FIELDS = (1, 2, 3, 4, 7)

_ids = itertools.count()
sent = collections.Counter()
valid_ids: list = []
malformed_ids: list = []


def next_id(kind: str) -> str:
    return "%s-%s-%d" % (PREFIX, kind, next(_ids))


def base_event(n: int, event_id: str) -> ue.UserEvent:
    event = sample_events.user_event(n, now=NOW)
    event.event_id = event_id
    return event


def env(event_id: str, payload: bytes, schema: str = SCHEMA, tenant: str = TENANT) -> envelope_pb2.Envelope:
    return envelope_pb2.Envelope(event_id=event_id, tenant_id=tenant, producer_id="fuzz", schema_name=schema,
                                 payload=payload)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


# Each strategy draws a recipe: (kind, build(event_id) -> Envelope, valid?)

valid_plain = st.integers(0, 10_000).map(lambda n: ("valid", lambda i: env(i, base_event(n, i).SerializeToString()), True))


@st.composite
def valid_unicode(draw):
    n = draw(st.integers(0, 10_000))
    agent = draw(st.text(max_size=200))
    attributes = draw(st.dictionaries(st.text(min_size=1, max_size=64), st.text(max_size=100), max_size=5))

    def build(event_id):
        event = base_event(n, event_id)
        event.user_agent = agent
        event.attributes.update(attributes)
        return env(event_id, event.SerializeToString())
    return ("valid-unicode", build, True)


random_payload = st.binary(min_size=1, max_size=300).map(lambda b: ("random-bytes", lambda i: env(i, b), False))

wrong_schema = st.one_of(
    st.text(min_size=1, max_size=300).filter(lambda s: s != SCHEMA),
    st.sampled_from(["datapipelines.behaviour.v1.SessionSummary", "datapipelines.iot.v1.DeviceReading",
                     SCHEMA + " ", SCHEMA.lower(), "." + SCHEMA]),
).map(lambda name: ("wrong-schema", lambda i: env(i, base_event(1, i).SerializeToString(), schema=name), False))


@st.composite
def huge_field(draw):
    field = draw(st.sampled_from(["user_agent", "session_id", "user_id", "page_url", "element_text", "attribute",
                                  "payload", "event_id"]))
    # Beyond every field limit (the longest is a URL: 8192); some payloads also beyond 64 KiB.
    size = draw(st.integers(8_200, 70_000)) if field != "payload" else draw(st.integers(64 * 1024 + 1, 70_000))

    def build(event_id):
        event = base_event(2, event_id)  # a click
        if field == "user_agent":
            event.user_agent = "u" * size
        elif field == "session_id":
            event.session_id = "s" * size
        elif field == "user_id":
            event.user_id = "u" * size
        elif field == "page_url":
            event.page.url = "https://x/" + "p" * size
        elif field == "element_text":
            event.click.element_text = "t" * size
        elif field == "attribute":
            event.attributes["k"] = "v" * size
        elif field == "event_id":
            return env("e" * size, event.SerializeToString())
        else:
            return env(event_id, event.SerializeToString() + b"\x3a" + _varint(size) + b"a" * size)
        return env(event_id, event.SerializeToString())
    return ("huge-" + field, build, False)


@st.composite
def invalid_utf8(draw):
    number = draw(st.sampled_from(STRING_FIELDS))
    junk = b"\xff" + draw(st.binary(max_size=30))  # 0xff never occurs in UTF-8

    def build(event_id):
        payload = base_event(3, event_id).SerializeToString()
        return env(event_id, payload + _varint(number << 3 | 2) + _varint(len(junk)) + junk)
    return ("invalid-utf8", build, False)


@st.composite
def unknown_enum(draw):
    where = draw(st.sampled_from(["event_type", "device_category"]))
    number = draw(st.one_of(st.integers(10, 2 ** 31 - 1), st.integers(-2 ** 31, -1)))

    def build(event_id):
        event = base_event(4, event_id)
        if where == "event_type":
            event.event_type = number
        else:
            event.device.category = number
        return env(event_id, event.SerializeToString())
    return ("unknown-enum", build, False)


missing = st.sampled_from(["env.event_id", "env.tenant_id", "env.schema_name", "env.payload", "session_id",
                           "client_time", "event_type", "user_and_anonymous_id", "properties", "payload_event_id"])


def _missing(what):
    def build(event_id):
        event = base_event(5, event_id)  # an add-to-cart
        envelope = env(event_id, b"")
        if what == "session_id":
            event.session_id = ""
        elif what == "client_time":
            event.ClearField("client_time")
        elif what == "event_type":
            event.event_type = ue.USER_EVENT_TYPE_UNSPECIFIED
        elif what == "user_and_anonymous_id":
            event.user_id, event.anonymous_id = "", ""
        elif what == "properties":
            event.ClearField(event.WhichOneof("properties"))
        elif what == "payload_event_id":
            event.event_id = ""
        envelope.payload = b"" if what == "env.payload" else event.SerializeToString()
        if what == "env.event_id":
            envelope.event_id = ""
        elif what == "env.tenant_id":
            envelope.tenant_id = ""
        elif what == "env.schema_name":
            envelope.schema_name = ""
        return envelope
    return ("missing-" + what, build, False)


missing_field = missing.map(_missing)


@st.composite
def bad_time(draw):
    seconds = draw(st.one_of(st.integers(int(NOW) + 3600, 253402300799), st.integers(-2 ** 40, int(NOW) - 8 * 86400),
                             st.integers(253402300800, 2 ** 62)))
    nanos = draw(st.one_of(st.just(0), st.integers(-2 ** 31, -1), st.integers(10 ** 9, 2 ** 31 - 1)))

    def build(event_id):
        event = base_event(6, event_id)
        event.client_time.seconds = seconds
        event.client_time.nanos = nanos
        return env(event_id, event.SerializeToString())
    return ("bad-time", build, False)


foreign_tenant = st.text(min_size=1, max_size=80).filter(lambda t: t != TENANT).map(
    lambda tenant: ("foreign-tenant", lambda i: env(i, base_event(7, i).SerializeToString(), tenant=tenant), False))

case = st.one_of(valid_plain, valid_unicode(), random_payload, wrong_schema, huge_field(), invalid_utf8(),
                 unknown_enum(), missing_field, bad_time(), foreign_tenant)


@pytest.fixture(scope="module")
def service(kafka_broker, tmp_path_factory):  # noqa: F811
    keys = KeyRing(tmp_path_factory.mktemp("keys") / "api_keys.jsonl")
    key = keys.add(TENANT)
    settings_ = settings_for(kafka_broker.bootstrap, keys.path, ["--max-request-bytes", str(64 * 1024 * 1024)])
    with ServiceThread(settings_) as running:
        with client_lib.IngestClient(running.target, key) as client:
            yield running, client


def test_malformed_events_are_rejected_with_reasons_and_valid_ones_delivered(service, kafka_broker):  # noqa: F811
    _, client = service

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                     HealthCheck.function_scoped_fixture])
    @given(st.lists(case, min_size=MIN_BATCH, max_size=MAX_BATCH))
    def one_batch(recipes):
        envelopes, expected = [], []
        for kind, build, valid in recipes:
            event_id = next_id("ok" if valid else "bad")
            envelopes.append(build(event_id))
            expected.append(valid)
            sent[kind] += 1
        ack = client.publish(sample_events.batch(envelopes, "fuzz-%d" % next(_ids)))
        rejected = {r.index: r for r in ack.rejections}
        assert ack.accepted_count == sum(expected)
        for index, (envelope, valid) in enumerate(zip(envelopes, expected)):
            if valid:
                assert index not in rejected, rejected.get(index)
                valid_ids.append(envelope.event_id)
            else:
                rejection = rejected.get(index)
                assert rejection is not None, "accepted a malformed %s" % recipes[index][0]
                assert rejection.reason not in (pb.REJECTION_REASON_UNSPECIFIED, pb.REJECTION_REASON_DUPLICATE)
                assert rejection.detail
                if envelope.event_id.startswith(PREFIX):
                    malformed_ids.append(envelope.event_id)

    one_batch()
    total_malformed = sum(n for kind, n in sent.items() if not kind.startswith("valid"))
    print("\nfuzz: sent %d events, %d malformed, by kind: %s" % (sum(sent.values()), total_malformed, dict(sent)))
    assert total_malformed >= 10_000

    bootstrap = kafka_broker.bootstrap
    delivered = collections.Counter(
        header(r, HEADER_EVENT_ID) for r in read_all(bootstrap, topics.BEHAVIOUR_EVENTS.name))
    assert all(delivered[i] == 1 for i in valid_ids), "a valid event is missing or doubled"
    assert not any(i in delivered for i in malformed_ids), "a malformed event reached the topic"
    dead = collections.Counter(header(r, HEADER_EVENT_ID) for r in read_all(bootstrap, topics.BEHAVIOUR_EVENTS.name + ".dlq"))
    assert all(dead[i] >= 1 for i in malformed_ids), "a rejected event is missing from the dead-letter topic"
    # Still serving.
    ids = PREFIX + "-after"
    assert client.publish(next(sample_events.batches(10, 10, TENANT, prefix=ids))).accepted_count == 10
