"""Shop log generator: daily partitions of commerce events into HDFS (WebHDFS) or a local folder.

    bazel run //services/shop_simulator -- --help
    bazel run //services/shop_simulator -- --start-date 2026-01-01 --days 3   (after bazel run //deploy/hdfs:cluster)
"""

from __future__ import annotations

import itertools
import multiprocessing
import signal
import sys
import time
from typing import Iterator

from deploy.hdfs.webhdfs import WebHdfsClient, WebHdfsError
from services.shop_simulator import contract
from services.shop_simulator.config import ShopConfig, parse_args
from services.shop_simulator.model import BAD_KINDS, VALID, DayGenerator, ShopModel
from services.shop_simulator.writer import (
    EXTRA,
    DayPublisher,
    Interrupted,
    LocalStore,
    Part,
    WebHdfsStore,
    gzip_bytes,
    partition_path,
    render_part,
)

# The settings that decide the content, recorded in each partition's manifest.
CONTENT_SETTINGS = ("users", "products", "events_per_day", "seed", "bad_line_rate", "duplicate_rate",
                    "bot_event_share", "part_lines", "compress_level")


def _say(message: str) -> None:
    print(message, flush=True)


def make_store(config: ShopConfig):
    if config.output_dir is not None:
        return LocalStore(config.output_dir.absolute())
    return WebHdfsStore(WebHdfsClient(config.webhdfs_url, user=config.hdfs_user))


_WORKER_MODEL = None


def _start_worker(config: ShopConfig) -> None:
    global _WORKER_MODEL
    # The parent decides when to stop; Pool.terminate() ends workers with SIGTERM, which must not
    # reach the parent's handler that the fork copied.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER_MODEL = ShopModel(config)


def _render_in_worker(task):
    day, block, refunds, level = task
    return render_part(DayGenerator(_WORKER_MODEL, day), block, refunds, level)


def day_parts(model: ShopModel, day, pool=None, should_stop=lambda: False) -> Iterator[Part]:
    """The parts of one day, in order: rendered here, or by `pool` (multiprocessing) in parallel."""
    config = model.config
    generator = DayGenerator(model, day)
    refunds = generator.refunds_due()
    blocks = [(block, generator.refunds_of_block(refunds, block)) for block in range(model.parts_per_day)]
    if pool is None:
        for block, block_refunds in blocks:
            yield render_part(DayGenerator(model, day), block, block_refunds, config.compress_level, should_stop)
        return
    results = pool.imap(_render_in_worker, [(day, block, block_refunds, config.compress_level)
                                            for block, block_refunds in blocks])
    while True:
        try:
            part = results.next(timeout=1.0)
        except StopIteration:
            return
        except multiprocessing.TimeoutError:
            if should_stop():
                raise Interrupted("stopped while generating dt=%s; the partition was not published" % day) from None
            continue
        yield part


def extra_part(config: ShopConfig):
    """The --extra-part file as one more Part (its bytes unchanged, gzip'd), or None."""
    if config.extra_part is None:
        return None
    data = config.extra_part.read_bytes()
    lines = len(data.splitlines())
    return Part(gzip_bytes(data, config.compress_level), lines, {EXTRA: lines}, {})


def run(config: ShopConfig, should_stop=lambda: False) -> list:
    """Generate and publish every configured day; returns the manifests."""
    store = make_store(config)
    started = time.monotonic()
    model = ShopModel(config)
    settings = {name: getattr(config, name) for name in CONTENT_SETTINGS}
    _say("event=started days=%d start=%s users=%d products=%d events_per_day=%d sessions_per_day=%d "
         "parts_per_day=%d workers=%d seed=%d target=%s"
         % (config.days, config.start_date, config.users, config.products, config.events_per_day,
            model.sessions_per_day, model.parts_per_day, config.workers, config.seed, store.describe(config.root)))
    first_day = DayGenerator(model, config.start_date)
    sample = first_day.block_lines(0, first_day.refunds_of_block(first_day.refunds_due(), 0))
    checked = contract.check_sample(line.data for line in sample if line.kind == VALID)
    _say("event=contract_checked message=%s payloads=%s" % (contract.MESSAGE, ",".join(sorted(checked))))
    extra = extra_part(config)
    publisher = DayPublisher(store, config.root, progress=_say, should_stop=should_stop)
    pool = multiprocessing.Pool(config.workers, _start_worker, (config,)) if config.workers > 1 else None
    manifests = []
    try:
        for day in config.dates:
            parts = day_parts(model, day, pool, should_stop)
            if extra is not None:
                parts = itertools.chain(parts, [extra])
            manifest = publisher.publish(day, parts, dict(settings, date=day.isoformat()))
            bad = sum(manifest["bad_lines"][kind] for kind in BAD_KINDS)
            _say("event=day_published dt=%s lines=%d valid=%d duplicates=%d bad=%d orders=%d refunds=%d parts=%d "
                 "seconds=%.1f rate=%.0f/s path=%s"
                 % (day, manifest["lines"], manifest["valid_events"], manifest["duplicates"], bad,
                    manifest["event_types"].get("orderPlaced", 0), manifest["event_types"].get("refund", 0),
                    len(manifest["parts"]), manifest["seconds"], manifest["lines"] / max(manifest["seconds"], 1e-9),
                    store.describe(partition_path(config.root, day))))
            manifests.append(manifest)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    elapsed = time.monotonic() - started
    total = sum(manifest["lines"] for manifest in manifests)
    _say("event=finished days=%d lines=%d seconds=%.1f rate=%.0f/s" % (len(manifests), total, elapsed,
                                                                        total / max(elapsed, 1e-9)))
    return manifests


def main(argv=None) -> int:
    config = parse_args(argv)
    stop = False

    def request_stop(signum, _frame):
        nonlocal stop
        stop = True
        print("event=stopping signal=%s" % signal.Signals(signum).name, file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        run(config, should_stop=lambda: stop)
    except Interrupted as err:
        print("event=interrupted %s" % err, file=sys.stderr, flush=True)
        return 130
    except contract.ContractError as err:
        print("shop simulator: %s" % err, file=sys.stderr, flush=True)
        return 2
    except (WebHdfsError, OSError) as err:
        where = config.output_dir if config.output_dir is not None else config.webhdfs_url
        print("shop simulator could not write to %s: %s\n(is HDFS running? bazel run //deploy/hdfs:cluster, "
              "or pass --webhdfs-url / --output-dir)" % (where, err), file=sys.stderr, flush=True)
        return 1
    return 0



if __name__ == "__main__":
    sys.exit(main())
