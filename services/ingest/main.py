"""The ingestion service process: wiring only (see README.md).

    bazel run //services/ingest -- --help

Start: settings → API key store (the local stack's default store is created with a development
key, and every start says so) → topics checked → producer → gRPC server SERVING. SIGTERM or
SIGINT: NOT_SERVING, refuse new batches, drain those in progress, flush the producer, stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Optional, Sequence

from services.ingest import api_keys, config
from services.ingest.server import IngestServer, StartError

LOG = logging.getLogger("ingest")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )


def prepare_key_file(settings: config.Settings) -> None:
    """A given store must exist; the default one is created with a development key, loudly."""
    path = settings.api_keys_file
    if not settings.api_keys_file_is_default:
        if not path.is_file():
            raise StartError("API key store %s does not exist; create a key with: bazel run //services/ingest:api_keys "
                             "-- --file %s add --tenant <tenant>" % (path, path))
        return
    dev_key = path.parent / api_keys.DEV_KEY_FILE_NAME
    if not path.exists():
        dev_key = api_keys.create_dev_key(path)
        LOG.warning("event=dev_api_key_created store=%s key_file=%s tenant=%s note=%r", path, dev_key,
                    api_keys.DEV_TENANT, "for the local stack only; pass --api-keys-file elsewhere")
    LOG.warning("event=using_default_api_key_store store=%s dev_key_file=%s note=%r", path,
                dev_key if dev_key.exists() else "-",
                "local development store; production passes --api-keys-file / DP_INGEST_API_KEYS_FILE")


async def serve(settings: config.Settings) -> int:
    server = IngestServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ingest: serving on %s:%d (Ctrl-C or SIGTERM stops)" % (settings.host, server.port), file=sys.stderr,
          flush=True)
    await stop.wait()
    LOG.info("event=stopping reason=signal drain_seconds=%g", settings.drain_seconds)
    await server.stop()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    settings = config.load(argv)
    setup_logging(settings.log_level)
    LOG.info("event=starting %s", settings.describe())
    try:
        prepare_key_file(settings)
        return asyncio.run(serve(settings))
    except StartError as err:
        LOG.error("event=start_failed error=%r", str(err))
        return 2


if __name__ == "__main__":
    sys.exit(main())
