"""IoT device simulator: writes readings, corrections and deletions into PostgreSQL.

    bazel run //services/iot_simulator -- --help
    bazel run //services/iot_simulator -- --rate 500 --duration 60
"""

from __future__ import annotations

import datetime as dt
import signal
import sys
import time

from services.iot_simulator.config import parse_args
from services.iot_simulator.model import Fleet, TickCounts
from services.iot_simulator.writer import ReadingsWriter


def main(argv=None) -> int:
    config = parse_args(argv)
    stop = False

    def request_stop(signum, _frame):
        nonlocal stop
        stop = True
        print(f"event=stopping signal={signal.Signals(signum).name}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    writer = ReadingsWriter(config.dsn)
    fleet = Fleet(config, next_reading_id=writer.next_reading_id())
    writer.register_fleet(fleet)
    print(
        f"event=started sites={config.sites} devices={config.devices} rate={config.rate:g}/s "
        f"duration={config.duration:g}s first_reading_id={fleet.next_reading_id}",
        flush=True,
    )

    totals = TickCounts()
    started = last_progress = time.monotonic()
    interval = 1.0 / config.ticks_per_second
    next_tick = started
    try:
        while not stop and (config.duration == 0 or time.monotonic() - started < config.duration):
            changes, counts = fleet.tick(dt.datetime.now(dt.timezone.utc))
            writer.apply(changes)
            for name in ("inserts", "late", "updates", "deletes"):
                setattr(totals, name, getattr(totals, name) + getattr(counts, name))
            totals.silent_devices = counts.silent_devices
            now = time.monotonic()
            if now - last_progress >= config.progress_every_s:
                last_progress = now
                _progress(totals, now - started)
            next_tick += interval
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # behind by more than a second: PostgreSQL is the bottleneck
                next_tick = time.monotonic()
    finally:
        writer.close()
    _progress(totals, time.monotonic() - started, final=True)
    return 0


def _progress(totals: TickCounts, elapsed: float, final: bool = False) -> None:
    changes = totals.inserts + totals.updates + totals.deletes
    print(
        f"event={'finished' if final else 'progress'} elapsed_s={elapsed:.1f} inserts={totals.inserts} "
        f"late={totals.late} updates={totals.updates} deletes={totals.deletes} "
        f"silent_devices={totals.silent_devices} rate={changes / max(elapsed, 1e-9):.0f}/s",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
