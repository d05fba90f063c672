"""The simulated fleet: sites, devices and the changes they make, free of any I/O.

Each tick `Fleet.tick(now)` returns the changes to apply: inserts of new readings (some with a
reading time behind `now`, i.e. late and out of order), corrections of recent readings and
deletions of recent readings. Values follow a per-site climate with a daily cycle, a slow random
drift per device and noise; batteries drain and are replaced; devices go silent for a while.
The same seed gives the same stream of values.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field

from services.iot_simulator.config import SimulatorConfig

MODELS = ("th-200", "th-300", "env-pro-2")
FIRMWARE = ("1.4.2", "1.5.0", "2.0.1")
RECENT_KEPT = 5000  # readings that corrections and deletions choose from


@dataclass(frozen=True)
class Site:
    site_id: str
    display_name: str
    latitude_degrees: float
    longitude_degrees: float
    base_temperature: float
    base_pressure: float


@dataclass
class Device:
    device_id: str
    site_id: str
    model: str
    firmware_version: str
    drift: float = 0.0
    battery: float = 100.0
    silent_until: dt.datetime | None = None


@dataclass(frozen=True)
class Insert:
    reading_id: int
    device_id: str
    site_id: str
    reading_time: dt.datetime
    temperature_celsius: float | None
    humidity_percent: float | None
    pressure_hpa: float | None
    battery_percent: float | None
    firmware_version: str


@dataclass(frozen=True)
class Update:
    reading_id: int
    temperature_celsius: float
    humidity_percent: float


@dataclass(frozen=True)
class Delete:
    reading_id: int


@dataclass
class TickCounts:
    inserts: int = 0
    late: int = 0
    updates: int = 0
    deletes: int = 0
    silent_devices: int = 0


@dataclass
class Fleet:
    config: SimulatorConfig
    next_reading_id: int = 1
    rng: random.Random = field(init=False)
    sites: list[Site] = field(init=False)
    devices: list[Device] = field(init=False)
    recent: list[int] = field(init=False)
    _carry: float = 0.0

    def __post_init__(self):
        self.rng = random.Random(self.config.seed)
        self.sites = [
            Site(
                site_id=f"site-{i + 1:02d}",
                display_name=f"Site {i + 1}",
                latitude_degrees=round(self.rng.uniform(35, 60), 4),
                longitude_degrees=round(self.rng.uniform(-10, 25), 4),
                base_temperature=self.rng.uniform(16, 24),
                base_pressure=self.rng.uniform(1000, 1025),
            )
            for i in range(self.config.sites)
        ]
        self.devices = [
            Device(
                device_id=f"dev-{i + 1:04d}",
                site_id=self.sites[i % len(self.sites)].site_id,
                model=self.rng.choice(MODELS),
                firmware_version=self.rng.choice(FIRMWARE),
                battery=self.rng.uniform(40, 100),
            )
            for i in range(self.config.devices)
        ]
        self.recent = []  # ids of recent readings still present, oldest first

    def _site(self, site_id: str) -> Site:
        return self.sites[int(site_id.split("-")[1]) - 1]

    def _reading(self, device: Device, when: dt.datetime) -> Insert:
        site = self._site(device.site_id)
        hours = when.hour + when.minute / 60
        daily = 3.0 * math.sin((hours - 9) / 24 * 2 * math.pi)
        device.drift += self.rng.gauss(0, 0.02)
        device.drift = max(-3.0, min(3.0, device.drift))
        temperature = site.base_temperature + daily + device.drift + self.rng.gauss(0, 0.3)
        humidity = max(0.0, min(100.0, 55 - 1.5 * (temperature - site.base_temperature) + self.rng.gauss(0, 2)))
        device.battery -= self.rng.uniform(0, 0.01)
        if device.battery < 5:
            device.battery = 100.0  # replaced
        reading_id = self.next_reading_id
        self.next_reading_id += 1
        sensor_fault = self.rng.random() < 0.002  # a missing humidity value now and then
        return Insert(
            reading_id=reading_id,
            device_id=device.device_id,
            site_id=device.site_id,
            reading_time=when,
            temperature_celsius=round(temperature, 3),
            humidity_percent=None if sensor_fault else round(humidity, 2),
            pressure_hpa=round(site.base_pressure + self.rng.gauss(0, 0.8), 2),
            battery_percent=round(device.battery, 2),
            firmware_version=device.firmware_version,
        )

    def tick(self, now: dt.datetime) -> tuple[list[Insert | Update | Delete], TickCounts]:
        """The changes of one tick at wall-clock time `now` (timezone-aware UTC)."""
        cfg = self.config
        wanted = cfg.rate / cfg.ticks_per_second + self._carry
        count = int(wanted)
        self._carry = wanted - count
        counts = TickCounts()
        changes: list[Insert | Update | Delete] = []

        for device in self.devices:
            if device.silent_until and device.silent_until <= now:
                device.silent_until = None
            elif not device.silent_until and self.rng.random() < cfg.outage_probability:
                device.silent_until = now + dt.timedelta(seconds=self.rng.uniform(5, 120))
        online = [d for d in self.devices if d.silent_until is None]
        counts.silent_devices = len(self.devices) - len(online)

        for _ in range(count):
            roll = self.rng.random()
            if roll < cfg.delete_fraction and self.recent:
                reading_id = self.recent.pop(self._recent_index())
                changes.append(Delete(reading_id))
                counts.deletes += 1
            elif roll < cfg.delete_fraction + cfg.update_fraction and self.recent:
                reading_id = self.recent[self._recent_index()]
                changes.append(Update(reading_id, round(self.rng.uniform(15, 25), 3), round(self.rng.uniform(40, 60), 2)))
                counts.updates += 1
            elif online:
                device = self.rng.choice(online)
                when = now
                if self.rng.random() < cfg.late_fraction / max(1e-9, 1 - cfg.delete_fraction - cfg.update_fraction):
                    when = now - dt.timedelta(seconds=self.rng.uniform(1, cfg.max_lateness_s))
                    counts.late += 1
                reading = self._reading(device, when)
                changes.append(reading)
                self.recent.append(reading.reading_id)
                if len(self.recent) > 2 * RECENT_KEPT:
                    del self.recent[:RECENT_KEPT]
                counts.inserts += 1
        return changes, counts

    def _recent_index(self) -> int:
        # Mostly the newest readings, like corrections that follow soon after a bad value.
        back = int(abs(self.rng.gauss(0, 20)))
        return max(0, len(self.recent) - 1 - back)
