"""Synthetic Debezium change events of public.readings, shaped like the connector's output (tests, benchmark).

`envelope(...)` builds the bare JSON envelope (value.converter.schemas.enable=false) for one
row change, with the source block a Debezium 3 PostgreSQL connector writes; `key(site_id)`
the record key under message.key.columns=site_id.
"""

from __future__ import annotations

import datetime
import json
import random

from jobs.iot.aggregator import envelope as decoder

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, a minute boundary
SECOND = 1_000_000
MINUTE = 60 * SECOND


def iso(micros: int) -> str:
    """Microseconds since the epoch as Debezium's ZonedTimestamp string (UTC, trailing zeros dropped)."""
    moment = EPOCH + datetime.timedelta(microseconds=micros)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += ("." + f"{moment.microsecond:06d}").rstrip("0")
    return text + "Z"


def row(reading_id: int, device_id: str, site_id: str, time_us: int, temperature=None, humidity=None,
        pressure=None, battery=None, firmware: str = "2.4.1") -> dict:
    return {
        "reading_id": reading_id,
        "device_id": device_id,
        "site_id": site_id,
        "reading_time": iso(time_us),
        "temperature_celsius": temperature,
        "humidity_percent": humidity,
        "pressure_hpa": pressure,
        "battery_percent": battery,
        "firmware_version": firmware,
        "inserted_at": iso(time_us + 150_000),
    }


def envelope(op: str, lsn: int, after: dict | None = None, before: dict | None = None, capture_ms: int | None = None,
             tx_id: int = 1000, snapshot: str = "false") -> dict:
    """One change event; `capture_ms` defaults to the row's reading time + 200 ms."""
    reference = after or before or {}
    if capture_ms is None:
        capture_ms = 1_767_225_600_000
        if reference.get("reading_time"):
            moment = datetime.datetime.fromisoformat(reference["reading_time"])
            capture_ms = int((moment - EPOCH).total_seconds() * 1000) + 200
    return {
        "before": before,
        "after": after,
        "source": {
            "version": "3.1.2.Final",
            "connector": "postgresql",
            "name": "iot",
            "ts_ms": capture_ms - 50,
            "snapshot": snapshot,
            "db": "datapipelines",
            "sequence": json.dumps([str(max(lsn - 8, 0)), str(lsn)]),
            "ts_us": (capture_ms - 50) * 1000,
            "ts_ns": (capture_ms - 50) * 1_000_000,
            "schema": "public",
            "table": "readings",
            "txId": tx_id,
            "lsn": lsn,
            "xmin": None,
        },
        "transaction": None,
        "op": op,
        "ts_ms": capture_ms,
        "ts_us": capture_ms * 1000,
        "ts_ns": capture_ms * 1_000_000,
    }


def encode(value: dict | None) -> bytes | None:
    return None if value is None else json.dumps(value, separators=(",", ":")).encode()


def key(site_id: str) -> bytes:
    return json.dumps({"site_id": site_id}, separators=(",", ":")).encode()


def change(op, rid, t, device="dev-1", site="site-1", temperature=20.0, lsn=None, before_t=None, capture_ms=None,
           humidity=None) -> tuple:
    """One decoded change (the tuple the aggregator works on), built through a real envelope."""
    row_ = row(rid, device, site, t, temperature=temperature, humidity=humidity)
    before = row(rid, device, site, before_t if before_t is not None else t) if op in "ud" else None
    value = envelope(op, lsn if lsn is not None else 1000 + rid, after=None if op == "d" else row_,
                     before=before if op == "u" else (row_ if op == "d" else None), capture_ms=capture_ms)
    return decoder.decode(encode(value))


def random_workload(seed, count=3000, late_fraction=0.0):
    """Inserts in roughly increasing time over 4 sites x 5 devices, with updates, deletes and replays."""
    rng = random.Random(seed)
    changes, rows, lsn = [], {}, 1000
    t = T0
    for i in range(count):
        lsn += rng.randint(1, 5)
        roll = rng.random()
        if rows and roll < 0.08:
            rid = rng.choice(sorted(rows))
            old = rows[rid]
            new_t = old[2] + rng.randint(-90, 90) * SECOND if rng.random() < 0.5 else old[2]
            new = (old[0], old[1], max(T0, new_t), round(rng.uniform(-10, 40), 2))
            changes.append(change("u", rid, new[2], new[0], new[1], new[3], lsn=lsn, before_t=old[2]))
            rows[rid] = new
        elif rows and roll < 0.12:
            rid = rng.choice(sorted(rows))
            old = rows.pop(rid)
            changes.append(change("d", rid, old[2], old[0], old[1], old[3], lsn=lsn))
        elif changes and roll < 0.15:
            changes.append(rng.choice(changes))  # at-least-once replay of an earlier change
        else:
            t += rng.randint(0, 400_000)
            event = t - (rng.randint(0, 20 * MINUTE) if rng.random() < late_fraction else rng.randint(0, 5 * SECOND))
            rid = 10_000 + i
            site = rng.randrange(4)
            row = (f"dev-{site}-{rng.randrange(5)}", f"site-{site}", event, round(rng.uniform(-10, 40), 2))
            rows[rid] = row
            changes.append(change("c", rid, row[2], row[0], row[1], row[3], lsn=lsn))
    return changes, rows
