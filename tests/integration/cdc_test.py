"""PostgreSQL → Debezium on Kafka Connect → iot.cdc.readings, all real, on loopback.

A real PostgreSQL 18 (migrated IoT schema), a real Kafka 4.4 broker and a real Kafka Connect 4.4
worker with the Debezium PostgreSQL connector (exactly-once source support on):
  1. rows written before the connector exists arrive as snapshot reads (op "r");
  2. inserts, an update and a delete written as dp_app arrive as "c", "u" (before + after) and
     "d" (before), keyed {"site_id": ...}, one partition per site, no tombstones;
  3. the worker stops cleanly, rows are written while it is down, a new worker of the same group
     resumes from the committed LSN: the new rows arrive and nothing is delivered twice;
  4. the worker is killed (SIGKILL) while rows are being written, a new one resumes: every row
     arrives, and with read_committed no duplicate is visible.
Timings (worker start, connector RUNNING, first streamed event) and the duplicate counts are printed.
"""

import collections
import datetime
import json
import threading
import time

import psycopg
from confluent_kafka import Consumer, TopicPartition

from datapipelines import kafka, topics
from deploy.connect import register
from tests.fixtures.connect_worker import connect_worker_factory  # noqa: F401 (a fixture)
from tests.fixtures.connect_worker import register_readings_connector
from tests.fixtures.kafka_broker import kafka_broker  # noqa: F401 (a fixture)
from tests.fixtures.postgres_server import postgres_server  # noqa: F401 (a fixture)

UTC = datetime.timezone.utc
BASE_TIME = datetime.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
SITES = ("site-a", "site-b", "site-c", "site-d")
DEVICES = {"dev-a1": "site-a", "dev-a2": "site-a", "dev-b1": "site-b", "dev-c1": "site-c", "dev-d1": "site-d"}
READING_COLUMNS = ("reading_id", "device_id", "site_id", "reading_time", "temperature_celsius", "humidity_percent",
                   "pressure_hpa", "battery_percent", "firmware_version")


class Report:
    """Prints past pytest's output capture, so a passing run's log still shows the figures."""

    def __init__(self, pytestconfig):
        self.capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def __call__(self, message: str) -> None:
        if self.capture is None:
            print(message, flush=True)
            return
        with self.capture.global_and_fixture_disabled():
            print(message, flush=True)

    def timing(self, label: str, seconds: float) -> None:
        self("TIMING %-42s %6.2f s" % (label, seconds))


class Topic:
    """Every record of one topic from the start, read_committed, collected as it arrives."""

    def __init__(self, bootstrap: str, topic: topics.Topic):
        self.name = topic.name
        self.consumer = Consumer(kafka.consumer_config(bootstrap, "cdc-test-%d" % time.time_ns()))
        self.consumer.assign([TopicPartition(topic.name, p, 0) for p in range(topic.partitions)])
        self.records = []

    def poll(self, seconds: float = 0.2) -> None:
        for record in self.consumer.consume(num_messages=1000, timeout=seconds):
            if record.error() is not None:
                raise AssertionError("consuming %s failed: %s" % (self.name, record.error()))
            self.records.append(record)

    def until(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not predicate(self.events()):
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %.0f s waiting for %s; got %d records"
                                     % (timeout, what, len(self.records)))
            self.poll()
        return self.events()

    def events(self):
        return [Event(record) for record in self.records]

    def close(self):
        self.consumer.close()


class Event:
    def __init__(self, record):
        self.record = record
        self.key = json.loads(record.key()) if record.key() is not None else None
        self.value = json.loads(record.value()) if record.value() is not None else None
        self.partition = record.partition()

    @property
    def op(self):
        return self.value["op"] if self.value else None

    @property
    def reading_id(self):
        row = self.value["after"] or self.value["before"]
        return row["reading_id"]

    @property
    def identity(self):
        """What makes a change event unique: the operation, the row and its WAL position."""
        source = self.value["source"]
        return (self.op, self.reading_id, source.get("lsn"), source.get("txId"))


def reading_row(reading_id_hint: int, device_id: str, offset_s: int) -> dict:
    return {
        "device_id": device_id,
        "site_id": DEVICES[device_id],
        "reading_time": BASE_TIME + datetime.timedelta(seconds=offset_s),
        "temperature_celsius": 20.0 + reading_id_hint / 4,
        "humidity_percent": 40.5 if reading_id_hint % 2 else None,  # a device without humidity sensor writes NULL
        "pressure_hpa": 1013.25,
        "battery_percent": 99.0 - reading_id_hint % 50,
        "firmware_version": "1.4.%d" % (reading_id_hint % 3),
    }


def insert_readings(conn, rows):
    """Inserts `rows` in one transaction; returns them with their reading_id."""
    out = []
    with conn.transaction():
        for row in rows:
            reading_id = conn.execute(
                "INSERT INTO readings (device_id, site_id, reading_time, temperature_celsius, humidity_percent,"
                " pressure_hpa, battery_percent, firmware_version) VALUES (%(device_id)s, %(site_id)s,"
                " %(reading_time)s, %(temperature_celsius)s, %(humidity_percent)s, %(pressure_hpa)s,"
                " %(battery_percent)s, %(firmware_version)s) RETURNING reading_id", row,
            ).fetchone()[0]
            out.append(dict(row, reading_id=reading_id))
    return out


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_row(image: dict, expected: dict) -> None:
    """A Debezium before/after image equals the row we wrote (every column we set)."""
    for column in READING_COLUMNS:
        got, want = image[column], expected[column]
        if column == "reading_time":
            assert isinstance(got, str) and got.endswith("Z"), "reading_time should be an ISO-8601 UTC string: %r" % got
            assert parse_time(got) == want, (got, want)
        else:
            assert got == want, "%s: got %r, want %r (reading %s)" % (column, got, want, expected["reading_id"])
    assert isinstance(image["inserted_at"], str) and parse_time(image["inserted_at"]).tzinfo is not None


def creates_by_id(events):
    return {e.reading_id: e for e in events if e.op in ("r", "c")}


def duplicates(events) -> int:
    counts = collections.Counter(e.identity for e in events if e.value is not None)
    return sum(n - 1 for n in counts.values() if n > 1)


def test_readings_change_events_end_to_end(kafka_broker, postgres_server, connect_worker_factory, tmp_path,
                                           pytestconfig):
    report = Report(pytestconfig)
    bootstrap = kafka_broker.bootstrap
    conn = psycopg.connect(postgres_server.app_dsn, autocommit=True)
    with conn.transaction():
        for site in SITES:
            conn.execute("INSERT INTO sites (site_id, display_name, country_code) VALUES (%s, %s, 'DE')",
                         (site, site.upper()))
        for device, site in DEVICES.items():
            conn.execute("INSERT INTO devices (device_id, site_id, model, firmware_version) VALUES (%s, %s, 'TH-2', '1.4.0')",
                         (device, site))
    devices = list(DEVICES)
    snapshot_rows = insert_readings(conn, [reading_row(n, devices[n % len(devices)], n) for n in range(6)])

    # -- worker and connector ------------------------------------------------------------------
    state = tmp_path / "state"
    began = time.monotonic()
    worker = connect_worker_factory(bootstrap, state_dir=state)
    report.timing("worker start (JVM to joined group)", time.monotonic() - began)
    began = time.monotonic()
    status = register_readings_connector(worker, postgres_server)
    report.timing("connector registered to RUNNING", time.monotonic() - began)
    assert status.running and status.task_states == ["RUNNING"]
    # Registering again with the same config is a no-op (PUT is idempotent).
    assert register_readings_connector(worker, postgres_server).running

    cdc = Topic(bootstrap, topics.IOT_CDC_READINGS)
    try:
        began = time.monotonic()
        events = cdc.until(lambda ev: len(creates_by_id(ev)) >= len(snapshot_rows), 120, "the snapshot")
        report.timing("snapshot of %d rows visible" % len(snapshot_rows), time.monotonic() - began)

        # -- streaming: first-event latency, then a batch, an update and a delete -----------------
        began = time.monotonic()
        first = insert_readings(conn, [reading_row(6, "dev-a1", 6)])
        cdc.until(lambda ev: first[0]["reading_id"] in creates_by_id(ev), 60, "the first streamed insert")
        report.timing("first streamed event (commit to consumer)", time.monotonic() - began)

        streamed_rows = first + insert_readings(conn, [reading_row(n, devices[n % len(devices)], n) for n in range(7, 19)])
        updated = streamed_rows[3]
        conn.execute("UPDATE readings SET temperature_celsius = %s, firmware_version = '1.5.0' WHERE reading_id = %s",
                     (-3.5, updated["reading_id"]))
        deleted = snapshot_rows[2]
        conn.execute("DELETE FROM readings WHERE reading_id = %s", (deleted["reading_id"],))

        began = time.monotonic()
        events = cdc.until(lambda ev: any(e.op == "d" for e in ev if e.value), 60, "the delete event")
        report.timing("batch + update + delete visible", time.monotonic() - began)

        # -- what consumers see ---------------------------------------------------------------------
        assert all(e.value is not None for e in events), "tombstones on %s (tombstones.on.delete=false)" % cdc.name
        creates = creates_by_id(events)
        for row in snapshot_rows:
            assert creates[row["reading_id"]].op == "r", "a row written before the connector is a snapshot read"
            assert creates[row["reading_id"]].value["before"] is None
            assert_row(creates[row["reading_id"]].value["after"], row)
        for row in streamed_rows:
            assert creates[row["reading_id"]].op == "c"
            assert creates[row["reading_id"]].value["before"] is None
            assert_row(creates[row["reading_id"]].value["after"], row)
            source = creates[row["reading_id"]].value["source"]
            assert (source["connector"], source["schema"], source["table"]) == ("postgresql", "public", "readings")
            assert isinstance(source["lsn"], int) and isinstance(source["txId"], int)

        updates = [e for e in events if e.op == "u"]
        assert len(updates) == 1
        assert_row(updates[0].value["before"], updated)  # REPLICA IDENTITY FULL: the whole old row
        assert_row(updates[0].value["after"], dict(updated, temperature_celsius=-3.5, firmware_version="1.5.0"))

        deletes = [e for e in events if e.op == "d"]
        assert len(deletes) == 1
        assert deletes[0].value["after"] is None
        assert_row(deletes[0].value["before"], deleted)

        partitions_by_site = collections.defaultdict(set)
        for e in events:
            row = e.value["after"] or e.value["before"]
            assert e.key == {"site_id": row["site_id"]}, e.key
            partitions_by_site[row["site_id"]].add(e.partition)
        assert all(len(p) == 1 for p in partitions_by_site.values()), dict(partitions_by_site)
        assert set(partitions_by_site) == set(SITES)
        assert duplicates(events) == 0
        report("EXAMPLE c event: key=%s value=%s" % (json.dumps(creates[streamed_rows[0]["reading_id"]].key),
                                                   json.dumps(creates[streamed_rows[0]["reading_id"]].value)))
        report("EXAMPLE u event: value=%s" % json.dumps(updates[0].value))
        report("EXAMPLE d event: value=%s" % json.dumps(deletes[0].value))
        report("EXAMPLE r event: value=%s" % json.dumps(creates[snapshot_rows[0]["reading_id"]].value))

        # -- clean stop, rows written while down, restart -------------------------------------------
        before_restart = len(events)
        code = worker.stop()
        assert code in (0, 143), "the worker should stop cleanly, exit %s" % code
        while_down = insert_readings(conn, [reading_row(n, devices[n % len(devices)], n) for n in range(19, 27)])
        began = time.monotonic()
        worker = connect_worker_factory(bootstrap, state_dir=state)
        status = register.wait_running(worker.rest_url, "iot-readings-cdc", 120)
        report.timing("restart: worker start to connector RUNNING", time.monotonic() - began)
        events = cdc.until(lambda ev: all(r["reading_id"] in creates_by_id(ev) for r in while_down), 120,
                           "the rows written while the worker was down")
        time.sleep(3)  # anything replayed would arrive right behind them
        cdc.poll(1.0)
        events = cdc.events()
        replayed = duplicates(events)
        report("DUPLICATES after a clean stop and restart: %d (of %d events)" % (replayed, len(events)))
        for row in while_down:
            assert creates_by_id(events)[row["reading_id"]].op == "c"
            assert_row(creates_by_id(events)[row["reading_id"]].value["after"], row)
        assert len(events) == before_restart + len(while_down) + replayed
        assert replayed == 0, "exactly-once source support is on: a clean restart must not replay events"

        # -- crash (SIGKILL) while rows are being written, restart ------------------------------------
        written, writer_errors = [], []
        stop_writing = threading.Event()

        def writer():
            try:
                with psycopg.connect(postgres_server.app_dsn, autocommit=True) as own:
                    n = 100
                    while not stop_writing.is_set():
                        written.extend(insert_readings(own, [reading_row(n, devices[n % len(devices)], n)]))
                        n += 1
                        time.sleep(0.02)
            except Exception as err:  # surfaced by the main thread below
                writer_errors.append(err)
                stop_writing.set()

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        cdc.until(lambda ev: len(written) > 20 and written[10]["reading_id"] in creates_by_id(ev), 60,
                  "events of the concurrent writer")
        worker.kill()
        time.sleep(1.0)
        began = time.monotonic()
        worker = connect_worker_factory(bootstrap, state_dir=state)
        register.wait_running(worker.rest_url, "iot-readings-cdc", 120)
        report.timing("after SIGKILL: worker start to RUNNING", time.monotonic() - began)
        time.sleep(2.0)
        stop_writing.set()
        thread.join(10)
        assert not writer_errors, writer_errors
        events = cdc.until(lambda ev: all(r["reading_id"] in creates_by_id(ev) for r in written), 120,
                           "every row of the concurrent writer")
        time.sleep(3)
        cdc.poll(1.0)
        events = cdc.events()
        crashed = duplicates(events) - replayed
        report("DUPLICATES after SIGKILL mid-stream and restart: %d (rows written around the crash: %d)"
              % (crashed, len(written)))
        for row in written:
            assert_row(creates_by_id(events)[row["reading_id"]].value["after"], row)
        assert crashed == 0, "exactly-once source support: aborted transactions stay invisible to read_committed"
    finally:
        cdc.close()
        conn.close()
