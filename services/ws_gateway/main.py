"""The WebSocket gateway process: wiring only (see README.md).

    bazel run //services/ws_gateway -- --help

Start: settings (the ingestion API key is read here, or the start fails saying where to get
one) → stream to the ingestion service → WebSocket/HTTP server → emulated users. SIGTERM or
SIGINT: stop accepting, stop emulating, flush and collect acks, close the stream.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Optional, Sequence

from services.ws_gateway import config
from services.ws_gateway.server import GatewayServer, StartError

LOG = logging.getLogger("ws_gateway")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per handshake is noise


async def serve(settings: config.Settings) -> int:
    gateway = GatewayServer(settings)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ws_gateway: page http://%s:%d/ , WebSocket ws://%s:%d/ws (Ctrl-C or SIGTERM stops)"
          % (settings.host, gateway.port, settings.host, gateway.port), file=sys.stderr, flush=True)
    waits = [asyncio.ensure_future(stop.wait())]
    if settings.exit_after_emulation:
        waits.append(asyncio.ensure_future(gateway.emulation_done.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in waits:
        task.cancel()
    LOG.info("event=stopping reason=%s drain_seconds=%g", "signal" if stop.is_set() else "emulation_done",
             settings.drain_seconds)
    await gateway.stop()
    if gateway.emulator is not None:
        print("ws_gateway: emulated %s" % gateway.emulator.stats.summary(), flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    settings = config.load(argv)
    setup_logging(settings.log_level)
    LOG.info("event=starting %s", settings.describe())
    try:
        return asyncio.run(serve(settings))
    except StartError as err:
        LOG.error("event=start_failed error=%r", str(err))
        return 2


if __name__ == "__main__":
    sys.exit(main())
