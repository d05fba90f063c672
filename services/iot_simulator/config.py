"""Settings of the device simulator: flags over environment over defaults, checked at start."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

DEFAULT_DSN = "postgresql://dp_app:dp-app-local@127.0.0.1:5432/datapipelines"


@dataclass(frozen=True)
class SimulatorConfig:
    dsn: str = DEFAULT_DSN
    sites: int = 5
    devices: int = 50
    rate: float = 200.0  # changes per second, all kinds together
    duration: float = 60.0  # seconds; 0 runs until stopped
    ticks_per_second: float = 10.0
    late_fraction: float = 0.02  # inserts whose reading time is behind now
    max_lateness_s: float = 300.0
    update_fraction: float = 0.02  # corrections of a recent reading
    delete_fraction: float = 0.01  # deletions of a recent reading
    outage_probability: float = 0.001  # per device and tick
    seed: int = 7
    progress_every_s: float = 5.0

    def __post_init__(self):
        problems = []
        if self.sites < 1 or self.devices < self.sites:
            problems.append(f"need 1 <= sites <= devices (sites={self.sites}, devices={self.devices})")
        if self.rate <= 0 or self.ticks_per_second <= 0:
            problems.append("rate and ticks-per-second must be positive")
        for name in ("late_fraction", "update_fraction", "delete_fraction", "outage_probability"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                problems.append(f"{name.replace('_', '-')} must be within 0..1, got {value}")
        if self.late_fraction + self.update_fraction + self.delete_fraction > 1:
            problems.append("late + update + delete fractions must not exceed 1")
        if self.duration < 0:
            problems.append("duration must be >= 0")
        if problems:
            raise ValueError("invalid simulator settings: " + "; ".join(problems))


def _env(name: str, default, cast):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise SystemExit(f"environment variable {name}={raw!r} is not a valid {cast.__name__}") from None


def parse_args(argv=None) -> SimulatorConfig:
    d = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog="iot_simulator",
        description=(
            "Simulates IoT devices writing readings into PostgreSQL (table public.readings) at a target "
            "rate, with drift, noise, outages, late and out-of-order readings, corrections (UPDATE) and "
            "deletions (DELETE): the source of the IoT CDC pipeline."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dsn", default=_env("DP_IOT_SIMULATOR_DSN", d.dsn, str),
                        help="PostgreSQL DSN of the app role (env DP_IOT_SIMULATOR_DSN)")
    parser.add_argument("--sites", type=int, default=_env("DP_IOT_SITES", d.sites, int), help="sites (env DP_IOT_SITES)")
    parser.add_argument("--devices", type=int, default=_env("DP_IOT_DEVICES", d.devices, int),
                        help="devices, spread over the sites (env DP_IOT_DEVICES)")
    parser.add_argument("--rate", type=float, default=_env("DP_IOT_RATE", d.rate, float),
                        help="changes per second, inserts + updates + deletes (env DP_IOT_RATE)")
    parser.add_argument("--duration", type=float, default=_env("DP_IOT_DURATION", d.duration, float),
                        help="seconds to run; 0 = until Ctrl-C (env DP_IOT_DURATION)")
    parser.add_argument("--late-fraction", type=float, default=d.late_fraction,
                        help="share of inserts whose reading time lags behind (out of order)")
    parser.add_argument("--max-lateness", type=float, default=d.max_lateness_s, dest="max_lateness_s",
                        help="largest lag of a late reading, seconds")
    parser.add_argument("--update-fraction", type=float, default=d.update_fraction,
                        help="share of changes that correct a recent reading")
    parser.add_argument("--delete-fraction", type=float, default=d.delete_fraction,
                        help="share of changes that delete a recent reading")
    parser.add_argument("--outage-probability", type=float, default=d.outage_probability,
                        help="chance per device and tick that it goes silent for a while")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same stream of values)")
    parser.add_argument("--progress-every", type=float, default=d.progress_every_s, dest="progress_every_s",
                        help="seconds between progress lines")
    args = parser.parse_args(argv)
    try:
        return SimulatorConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))
