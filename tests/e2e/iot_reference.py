"""What the IoT pipeline must serve, recomputed from the rows a test writes into PostgreSQL.

`Source` writes known readings (inserts, corrections, deletions, late readings) into the source
database and recomputes every window from its own copy of the rows, never from pipeline output;
`served` reads what the analytics service serves for the same devices and sites, and
`wait_until_equal` polls until the two agree. Used by the IoT end-to-end test
(tests/e2e/iot_cdc_test.py) and by the multi-node profile test (tests/cluster).
"""

from __future__ import annotations

import collections
import datetime as dt
import math
import time

import psycopg

SITES = ("site-e2e-1", "site-e2e-2", "site-e2e-3")
DEVICES = {site: (f"{site}-dev-a", f"{site}-dev-b") for site in SITES}
TUMBLING_S, HOP_SIZE_S, HOP_ADVANCE_S = 60, 300, 60
METRICS = ("temperature_celsius", "humidity_percent", "pressure_hpa", "battery_percent")
# Event time starts three hours back on a minute boundary: far from "now", so no reading is
# judged to come from the future, and windows are aligned.
T0 = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0) - dt.timedelta(hours=3)


class Source:
    """What the test wrote into PostgreSQL, and what it therefore expects downstream."""

    def __init__(self, dsn: str):
        self.conn = psycopg.connect(dsn, autocommit=False)
        self.rows: dict[int, dict] = {}  # reading_id -> current row
        self.late_ids: set[int] = set()
        self.next_id = 1
        with self.conn.cursor() as cur:
            for i, site in enumerate(SITES):
                cur.execute("INSERT INTO sites (site_id, display_name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                            (site, f"E2E site {i}"))
                for device in DEVICES[site]:
                    cur.execute("INSERT INTO devices (device_id, site_id, model, firmware_version) "
                                "VALUES (%s, %s, 'th-200', '1.0.0') ON CONFLICT DO NOTHING", (device, site))
        self.conn.commit()

    def insert_minute(self, minute: int, late: bool = False) -> None:
        """Three readings per device at seconds 0, 20, 40 of `minute` (+ a per-device offset), one transaction."""
        with self.conn.cursor() as cur:
            for s_index, site in enumerate(SITES):
                for d_index, device in enumerate(DEVICES[site]):
                    for second in (0, 20, 40):
                        rid = self.next_id
                        self.next_id += 1
                        when = T0 + dt.timedelta(minutes=minute, seconds=second + d_index + s_index / 10)
                        row = {
                            "device_id": device, "site_id": site, "reading_time": when,
                            "temperature_celsius": round(20 + s_index + d_index * 0.5 + math.sin(rid) * 2, 3),
                            "humidity_percent": None if rid % 17 == 0 else round(40 + (rid % 13), 2),
                            "pressure_hpa": round(1000 + (rid % 7) * 1.5, 2),
                            "battery_percent": round(100 - rid * 0.01, 2),
                        }
                        cur.execute(
                            "INSERT INTO readings (reading_id, device_id, site_id, reading_time, temperature_celsius,"
                            " humidity_percent, pressure_hpa, battery_percent, firmware_version)"
                            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, '1.0.0')",
                            (rid, row["device_id"], row["site_id"], when, row["temperature_celsius"],
                             row["humidity_percent"], row["pressure_hpa"], row["battery_percent"]),
                        )
                        self.rows[rid] = row
                        if late:
                            self.late_ids.add(rid)
        self.conn.commit()

    def in_minute(self, minute: int) -> list[int]:
        start = T0 + dt.timedelta(minutes=minute)
        return sorted(r for r, row in self.rows.items() if start <= row["reading_time"] < start + dt.timedelta(minutes=1))

    def correct(self, reading_id: int, temperature: float) -> None:
        self.conn.execute("UPDATE readings SET temperature_celsius = %s WHERE reading_id = %s", (temperature, reading_id))
        self.conn.commit()
        self.rows[reading_id]["temperature_celsius"] = temperature

    def delete(self, reading_id: int) -> None:
        self.conn.execute("DELETE FROM readings WHERE reading_id = %s", (reading_id,))
        self.conn.commit()
        del self.rows[reading_id]

    def expected(self) -> dict:
        """(scope, key, kind, window start) -> stats, recomputed from the rows (late ones excluded)."""
        windows: dict[tuple, list[dict]] = collections.defaultdict(list)
        for rid, row in self.rows.items():
            if rid in self.late_ids:
                continue
            t = int(row["reading_time"].timestamp())
            starts = {"tumbling": [t - t % TUMBLING_S]}
            last = t - t % HOP_ADVANCE_S
            starts["hopping"] = [s for s in range(last - HOP_SIZE_S + HOP_ADVANCE_S, last + 1, HOP_ADVANCE_S)
                                 if s <= t < s + HOP_SIZE_S]
            for kind, kind_starts in starts.items():
                for start in kind_starts:
                    windows[("device", row["device_id"], kind, start)].append(row)
                    windows[("site", row["site_id"], kind, start)].append(row)
        out = {}
        for key, rows in windows.items():
            stats = {"reading_count": len(rows)}
            for metric in METRICS:
                values = [r[metric] for r in rows if r[metric] is not None]
                stats[f"{metric}_count"] = len(values)
                if values:
                    stats[f"{metric}_min"] = min(values)
                    stats[f"{metric}_max"] = max(values)
                    stats[f"{metric}_mean"] = sum(values) / len(values)
            out[key] = stats
        return out


def served(pipeline) -> dict:
    """Everything the analytics service serves for the test's devices and sites."""
    out = {}
    start = T0 - dt.timedelta(minutes=10)
    end = T0 + dt.timedelta(hours=1)
    for site in SITES:
        for scope, key in [("site", site)] + [("device", d) for d in DEVICES[site]]:
            for kind in ("tumbling", "hopping"):
                body = pipeline.query("/api/v1/iot/aggregates", scope=scope, key_id=key, window_kind=kind,
                                      **{"from": start.isoformat(), "to": end.isoformat(), "limit": 10000})
                for row in body["rows"]:
                    started = dt.datetime.fromisoformat(row["window_start"].replace("Z", "+00:00"))
                    window = (scope, key, kind, int(started.timestamp()))
                    assert window not in out, f"window {window} served twice"
                    out[window] = row
    return out


def differences(expected: dict, actual: dict) -> list[str]:
    problems = []
    # A window whose readings were all deleted is served with count 0.
    actual = {k: v for k, v in actual.items() if v["reading_count"] > 0}
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            problems.append(f"missing {key}")
            continue
        if key not in expected:
            problems.append(f"unexpected {key}: {actual[key]['reading_count']} readings")
            continue
        for field, want in expected[key].items():
            got = actual[key][field]
            if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
                problems.append(f"{key} {field}: served {got}, recomputed {want}")
    return problems


def wait_until_equal(pipeline, source: Source, timeout: float = 180.0) -> int:
    expected = source.expected()
    deadline = time.monotonic() + timeout
    problems = ["not queried yet"]
    while time.monotonic() < deadline:
        problems = differences(expected, served(pipeline))
        if not problems:
            return len(expected)
        time.sleep(1.0)
    raise AssertionError(f"{len(problems)} differences after {timeout:.0f} s, e.g.:\n  " + "\n  ".join(problems[:15]))
