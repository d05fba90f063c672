"""Applies simulator changes to PostgreSQL: one transaction per tick, inserts through COPY."""

from __future__ import annotations

import psycopg

from services.iot_simulator.model import Delete, Fleet, Insert, Update

INSERT_COLUMNS = (
    "reading_id", "device_id", "site_id", "reading_time", "temperature_celsius",
    "humidity_percent", "pressure_hpa", "battery_percent", "firmware_version",
)


class ReadingsWriter:
    """Owns one connection of the app role; `apply` writes a tick's changes atomically."""

    def __init__(self, dsn: str):
        try:
            self.conn = psycopg.connect(dsn, autocommit=False, application_name="iot_simulator")
        except psycopg.OperationalError as exc:
            raise SystemExit(
                f"cannot connect to PostgreSQL ({exc.__class__.__name__}: {str(exc).strip()}); "
                "start it with: bazel run //deploy/postgres:server"
            ) from None

    def close(self) -> None:
        self.conn.close()

    def next_reading_id(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(reading_id), 0) + 1 FROM readings")
            value = cur.fetchone()[0]
        self.conn.commit()
        return value

    def register_fleet(self, fleet: Fleet) -> None:
        """Upserts the simulated sites and devices (a restart keeps them)."""
        with self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO sites (site_id, display_name, latitude_degrees, longitude_degrees) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (site_id) DO NOTHING",
                [(s.site_id, s.display_name, s.latitude_degrees, s.longitude_degrees) for s in fleet.sites],
            )
            cur.executemany(
                "INSERT INTO devices (device_id, site_id, model, firmware_version) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (device_id) DO NOTHING",
                [(d.device_id, d.site_id, d.model, d.firmware_version) for d in fleet.devices],
            )
        self.conn.commit()

    def apply(self, changes: list[Insert | Update | Delete]) -> None:
        inserts = [c for c in changes if isinstance(c, Insert)]
        with self.conn.cursor() as cur:
            if inserts:
                with cur.copy(f"COPY readings ({', '.join(INSERT_COLUMNS)}) FROM STDIN") as copy:
                    for r in inserts:
                        copy.write_row(tuple(getattr(r, c) for c in INSERT_COLUMNS))
            # Corrections and deletions follow the inserts of the same tick, in order.
            for change in changes:
                if isinstance(change, Update):
                    cur.execute(
                        "UPDATE readings SET temperature_celsius = %s, humidity_percent = %s WHERE reading_id = %s",
                        (change.temperature_celsius, change.humidity_percent, change.reading_id),
                    )
                elif isinstance(change, Delete):
                    cur.execute("DELETE FROM readings WHERE reading_id = %s", (change.reading_id,))
        self.conn.commit()
